// `s0 tokenize --tokenizer FILE|DIR [INPUT]`: prints the token ids of INPUT's text (stdin when no
// file) as a JSON array on one line. With --decode, INPUT holds a JSON array of ids and the text
// they decode to is printed exactly, with nothing added. No special tokens are added; special
// tokens written in the text are matched as single tokens. Errors go to stderr with exit status 1.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "daemon/commands.h"
#include "worker/tokenizer.h"

namespace s0::cli {
namespace {

struct TokenizeArgs {
  std::string tokenizer;
  std::string input;  // empty: stdin
  bool decode = false;
};

Result<std::string> ReadAll(const std::string& path) {
  FILE* f = path.empty() ? stdin : std::fopen(path.c_str(), "rb");
  if (f == nullptr) return Status::NotFound(path + ": cannot open");
  std::string data;
  char buf[1 << 16];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) data.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  if (f != stdin) std::fclose(f);
  if (failed) return Status::IOError((path.empty() ? std::string("stdin") : path) + ": read failed");
  return data;
}

Result<std::vector<int32_t>> ParseIds(const std::string& text, const std::string& source) {
  const nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_array()) {
    return Status::InvalidArgument(source + ": expected a JSON array of token ids");
  }
  std::vector<int32_t> ids;
  ids.reserve(doc.size());
  for (size_t i = 0; i < doc.size(); ++i) {
    const nlohmann::json& v = doc[i];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
      return Status::InvalidArgument(source + ": element " + std::to_string(i) + " (" + v.dump() +
                                     ") is not a token id");
    }
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return ids;
}

Result<std::string> Tokenize(const TokenizeArgs& args) {
  S0_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::Load(args.tokenizer));
  S0_ASSIGN_OR_RETURN(std::string input, ReadAll(args.input));
  if (args.decode) {
    S0_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIds(input, args.input.empty() ? "stdin" : args.input));
    return tok.Decode(ids);
  }
  const std::vector<int32_t> ids = tok.Encode(input);
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(ids[i]);
  }
  out += "]\n";
  return out;
}

int RunTokenize(const TokenizeArgs& args) {
  Result<std::string> out = Tokenize(args);
  if (!out.ok()) {
    std::fprintf(stderr, "s0 tokenize: %s\n", out.status().ToString().c_str());
    return 1;
  }
  if (std::fwrite(out->data(), 1, out->size(), stdout) != out->size() || std::fflush(stdout) != 0) {
    std::fprintf(stderr, "s0 tokenize: writing to stdout failed\n");
    return 1;
  }
  return 0;
}

}  // namespace

Runner AddTokenizeCommand(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize",
      "print the token ids of a text as a JSON array (--decode: print the text of a JSON array of ids)");
  cmd->add_option("--tokenizer", args->tokenizer, "tokenizer.json, or a model directory holding one")
      ->required();
  cmd->add_option("input", args->input,
                  "text file (with --decode: file holding a JSON array of ids); stdin if absent");
  cmd->add_flag("--decode", args->decode, "decode ids to text instead of encoding text");
  return [args] { return RunTokenize(*args); };
}

}  // namespace s0::cli
