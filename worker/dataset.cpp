#include "worker/dataset.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "worker/chat.h"

namespace s0 {
namespace {

using nlohmann::json;

// ids and prompt length of a text example, the prompt's tokens being a prefix of the whole.
Result<TokenExample> FromText(const Tokenizer& tok, const std::string& prompt,
                              const std::string& whole) {
  TokenExample ex;
  ex.ids = tok.Encode(whole);
  std::vector<int32_t> p = tok.Encode(prompt);
  ex.prompt_len = int64_t(p.size());
  // A merge across the prompt/completion boundary would make the mask ambiguous.
  if (p.size() > ex.ids.size() || !std::equal(p.begin(), p.end(), ex.ids.begin())) {
    return Status::InvalidArgument(
        "the prompt's tokens are not a prefix of the example's tokens (a token spans the "
        "prompt/completion boundary); end the prompt with whitespace or a newline");
  }
  return ex;
}

Result<TokenExample> ParseLine(const json& j, const Tokenizer* tok) {
  if (!j.is_object()) return Status::InvalidArgument("a line must be a JSON object");
  if (j.contains("input_ids")) {
    TokenExample ex;
    const json& ids = j["input_ids"];
    if (!ids.is_array()) return Status::InvalidArgument("'input_ids' must be a list of integers");
    for (const json& x : ids) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX)
        return Status::InvalidArgument("'input_ids' must hold non-negative integers");
      ex.ids.push_back(x.get<int32_t>());
    }
    if (!j.contains("prompt_len") || !j["prompt_len"].is_number_integer() ||
        j["prompt_len"].get<int64_t>() < 0)
      return Status::InvalidArgument("'prompt_len' must be a non-negative integer");
    ex.prompt_len = j["prompt_len"].get<int64_t>();
    return ex;
  }
  if (!tok) return Status::InvalidArgument("a text example needs a tokenizer (tokenizer.json)");
  if (j.contains("messages")) {
    S0_ASSIGN_OR_RETURN(std::vector<ChatMessage> msgs, ChatMessagesFromJson(j["messages"]));
    if (msgs.empty() || msgs.back().role != "assistant")
      return Status::InvalidArgument("'messages' must end with an assistant turn to train on");
    S0_ASSIGN_OR_RETURN(std::string prompt,
                        FormatQwen35Chat(std::span(msgs).first(msgs.size() - 1), true));
    S0_ASSIGN_OR_RETURN(std::string whole, FormatQwen35Chat(msgs, false));
    if (whole.compare(0, prompt.size(), prompt) != 0)
      return Status::InvalidArgument("the rendered chat does not extend its generation prompt");
    return FromText(*tok, prompt, whole);
  }
  if (j.contains("prompt") && j.contains("completion")) {
    if (!j["prompt"].is_string() || !j["completion"].is_string())
      return Status::InvalidArgument("'prompt' and 'completion' must be strings");
    const std::string prompt = j["prompt"].get<std::string>();
    return FromText(*tok, prompt, prompt + j["completion"].get<std::string>());
  }
  return Status::InvalidArgument(
      "expected {\"prompt\", \"completion\"}, {\"messages\"} or {\"input_ids\", \"prompt_len\"}");
}

}  // namespace

Result<std::vector<TokenExample>> LoadJsonlExamples(const std::string& path,
                                                    const Tokenizer* tokenizer,
                                                    const DatasetOptions& options) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::NotFound(path + ": cannot open the data file");
  std::vector<TokenExample> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    const std::string where = path + ":" + std::to_string(lineno);
    if (line.size() > options.max_line_bytes)
      return Status::InvalidArgument(where + ": line longer than " +
                                     std::to_string(options.max_line_bytes) + " bytes");
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return Status::InvalidArgument(where + ": not valid JSON");
    Result<TokenExample> ex = ParseLine(j, tokenizer);
    if (!ex.ok()) return ex.status().Context(where);
    TokenExample& e = ex.value();
    if (int64_t(e.ids.size()) > options.max_length) e.ids.resize(size_t(options.max_length));
    if (e.ids.size() < 2 || e.prompt_len >= int64_t(e.ids.size()))
      return Status::InvalidArgument(where + ": no completion token to learn from (" +
                                     std::to_string(e.ids.size()) + " tokens, prompt " +
                                     std::to_string(e.prompt_len) + ")");
    if (options.vocab_size > 0) {
      for (int32_t id : e.ids) {
        if (id >= options.vocab_size)
          return Status::InvalidArgument(where + ": token id " + std::to_string(id) +
                                         " is outside the model's vocabulary of " +
                                         std::to_string(options.vocab_size));
      }
    }
    out.push_back(std::move(e));
  }
  if (f.bad()) return Status::IOError(path + ": read error");
  if (out.empty()) return Status::InvalidArgument(path + ": no examples");
  return out;
}

}  // namespace s0
