// Tokenizer: llama.cpp's Qwen2 / Qwen3.5 vectors, round trips over HumanEval and GSM8K, added-token
// rules on a small synthetic tokenizer.json, malformed files, and (when generated) HF's own ids.
#include "worker/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/test_paths.h"

namespace s0 {
namespace {

using json = nlohmann::json;

// The Qwen3.5 pre-tokenizer pattern (Qwen2's with \p{M} joined to letters), from
// ../shared/data/SOURCES.md.
constexpr const char* kQwen35Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string Qwen3Path() { return test::SharedPath("data/tokenizers/qwen3/tokenizer.json"); }

const Tokenizer& Qwen3() {
  static const Tokenizer* tok = [] {
    auto r = Tokenizer::Load(Qwen3Path());
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? new Tokenizer(std::move(r).value()) : nullptr;
  }();
  if (tok == nullptr) throw std::runtime_error("Qwen3 tokenizer failed to load");
  return *tok;
}

const Tokenizer& Qwen35Variant() {
  static const Tokenizer* tok = [] {
    TokenizerOptions opts;
    opts.split_regex = kQwen35Regex;
    opts.normalizer = TokenizerOptions::Normalizer::kNone;
    auto r = Tokenizer::Load(Qwen3Path(), opts);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? new Tokenizer(std::move(r).value()) : nullptr;
  }();
  if (tok == nullptr) throw std::runtime_error("Qwen3.5-variant tokenizer failed to load");
  return *tok;
}

std::vector<json> ReadJsonLines(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::vector<json> rows;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) rows.push_back(json::parse(line));
  }
  return rows;
}

// HumanEval ships gzipped; gzip is on every machine we run on, zlib is not a dependency.
std::vector<json> ReadGzipJsonLines(const std::string& path) {
  std::vector<json> rows;
  FILE* pipe = popen(("gzip -dc '" + path + "'").c_str(), "r");
  EXPECT_NE(pipe, nullptr) << "cannot run gzip on " << path;
  if (pipe == nullptr) return rows;
  std::string text;
  char buf[65536];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) text.append(buf, n);
  EXPECT_EQ(pclose(pipe), 0) << "gzip -dc " << path << " failed";
  size_t start = 0;
  for (size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
    if (nl > start) rows.push_back(json::parse(text.substr(start, nl - start)));
  }
  if (start < text.size()) rows.push_back(json::parse(text.substr(start)));
  return rows;
}

std::vector<int32_t> Ids(const json& arr) { return arr.get<std::vector<int32_t>>(); }

void ExpectVectors(const Tokenizer& tok, const std::string& file, size_t expected_count) {
  const std::vector<json> rows = ReadJsonLines(test::SharedPath(file));
  ASSERT_EQ(rows.size(), expected_count) << file;
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::string text = rows[i]["text"].get<std::string>();
    EXPECT_EQ(tok.Encode(text), Ids(rows[i]["ids"])) << file << " vector " << i << ": " << json(text).dump();
  }
}

void ExpectRoundTrip(const Tokenizer& tok, const std::string& text, const std::string& what) {
  const std::vector<int32_t> ids = tok.Encode(text);
  auto back = tok.Decode(ids);
  ASSERT_TRUE(back.ok()) << what << ": " << back.status().ToString();
  EXPECT_EQ(*back, text) << what;
}

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

TEST(TokenizerTest, Qwen2VectorsFromLlamaCpp) {
  ExpectVectors(Qwen3(), "data/tokenizer_tests/llama.cpp/qwen2_vectors.jsonl", 46);
}

TEST(TokenizerTest, Qwen35VectorsWithQwen35RegexAndNoNfc) {
  ExpectVectors(Qwen35Variant(), "data/tokenizer_tests/llama.cpp/qwen35_vectors.jsonl", 50);
}

TEST(TokenizerTest, VocabSizeAndTokenLookup) {
  const Tokenizer& tok = Qwen3();
  EXPECT_EQ(tok.vocab_size(), 151669);
  EXPECT_EQ(tok.TokenToId("<|endoftext|>"), 151643);
  EXPECT_EQ(tok.TokenToId("</think>"), 151668);
  EXPECT_EQ(tok.TokenToId("\xc4\xa0"), tok.Encode(" ").at(0));  // "Ġ" is the space byte
  EXPECT_EQ(tok.TokenToId("no such token at all"), std::nullopt);
}

TEST(TokenizerTest, HumanEvalRoundTrips) {
  const std::vector<json> rows = ReadGzipJsonLines(test::SharedPath("data/humaneval/HumanEval.jsonl.gz"));
  ASSERT_EQ(rows.size(), 164u);
  for (const json& r : rows) {
    ExpectRoundTrip(Qwen3(), r["prompt"].get<std::string>(), r["task_id"].get<std::string>() + " prompt");
    ExpectRoundTrip(Qwen3(), r["canonical_solution"].get<std::string>(),
                    r["task_id"].get<std::string>() + " solution");
  }
}

TEST(TokenizerTest, Gsm8kRoundTrips) {
  const std::vector<json> rows = ReadJsonLines(test::SharedPath("data/gsm8k/test.jsonl"));
  ASSERT_EQ(rows.size(), 1319u);
  for (size_t i = 0; i < rows.size(); ++i) {
    ExpectRoundTrip(Qwen3(), rows[i]["question"].get<std::string>(), "gsm8k question " + std::to_string(i));
    ExpectRoundTrip(Qwen3(), rows[i]["answer"].get<std::string>(), "gsm8k answer " + std::to_string(i));
  }
}

TEST(TokenizerTest, SpecialTokensInTextAreAtomic) {
  const Tokenizer& tok = Qwen3();
  const int32_t im_start = *tok.TokenToId("<|im_start|>"), im_end = *tok.TokenToId("<|im_end|>");
  const int32_t think = *tok.TokenToId("<think>"), end_think = *tok.TokenToId("</think>");
  EXPECT_EQ(tok.Encode("<|im_start|>user\nHi there<|im_end|>\n"),
            Concat({{im_start}, tok.Encode("user\nHi there"), {im_end}, tok.Encode("\n")}));
  EXPECT_EQ(tok.Encode("a<think>\n\n</think>\n\nb"),
            Concat({tok.Encode("a"), {think}, tok.Encode("\n\n"), {end_think}, tok.Encode("\n\nb")}));
  EXPECT_EQ(tok.Encode("<|im_end|><|im_end|>"), (std::vector<int32_t>{im_end, im_end}));
  // Not an added token: an unterminated one is ordinary text.
  for (int32_t id : tok.Encode("<|im_start|")) EXPECT_LT(id, 151643);
  // Added tokens decode to their content.
  auto text = tok.Decode(std::vector<int32_t>{im_start, think, im_end});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<|im_start|><think><|im_end|>");
}

TEST(TokenizerTest, NfcFromFileAndItsOverride) {
  // "e" + U+0301 COMBINING ACUTE composes to U+00E9 under the file's NFC; the variant keeps it.
  EXPECT_EQ(Qwen3().Encode("caf\x65\xcc\x81"), Qwen3().Encode("caf\xc3\xa9"));
  EXPECT_NE(Qwen35Variant().Encode("caf\x65\xcc\x81"), Qwen35Variant().Encode("caf\xc3\xa9"));
  ExpectRoundTrip(Qwen35Variant(), "caf\x65\xcc\x81", "decomposed accent without NFC");
}

TEST(TokenizerTest, IllFormedUtf8IsEncodedAsBytes) {
  const std::vector<std::string> texts = {std::string("\xff\xfe abc \xc3", 9),
                                          "abc\x80\x80\x80 def",
                                          std::string("\xed\xa0\x80 surrogate", 13),
                                          "\xf4\x90\x80\x80 beyond",
                                          "caf\xc3",
                                          "tab\t\xe2\x82 \xe2\x82\xac",
                                          std::string("nul\0byte", 8)};
  for (size_t i = 0; i < texts.size(); ++i) {
    ExpectRoundTrip(Qwen3(), texts[i], "ill-formed text " + std::to_string(i));
    ExpectRoundTrip(Qwen35Variant(), texts[i], "ill-formed text " + std::to_string(i) + " (variant)");
  }
}

TEST(TokenizerTest, DecodeRejectsIdsWithoutToken) {
  const Tokenizer& tok = Qwen3();
  for (int32_t bad : {-1, tok.vocab_size(), 1 << 30}) {
    auto r = tok.Decode(std::vector<int32_t>{9707, bad});
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find("position 1"), std::string::npos) << r.status().message();
  }
  auto empty = tok.Decode({});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "");
}

TEST(TokenizerTest, ConcurrentEncodeMatchesSerial) {
  std::vector<std::string> texts;
  for (const json& r : ReadJsonLines(test::SharedPath("data/gsm8k/test.jsonl"))) {
    texts.push_back(r["question"].get<std::string>());
  }
  TokenizerOptions opts;
  opts.cache_capacity = 64;  // tiny: shards are emptied while other threads read them
  auto fresh = Tokenizer::Load(Qwen3Path(), opts);
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  std::vector<std::vector<int32_t>> serial;
  for (const std::string& t : texts) serial.push_back(Qwen3().Encode(t));
  constexpr int kThreads = 4;
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < texts.size(); ++i) {
        const size_t k = (i * (t + 1)) % texts.size();  // different orders per thread
        if (fresh->Encode(texts[k]) != serial[k]) ++mismatches[static_cast<size_t>(t)];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(mismatches[static_cast<size_t>(t)], 0) << "thread " << t;
}

TEST(TokenizerTest, CacheDoesNotChangeIds) {
  TokenizerOptions opts;
  opts.cache_capacity = 0;
  auto uncached = Tokenizer::Load(Qwen3Path(), opts);
  ASSERT_TRUE(uncached.ok()) << uncached.status().ToString();
  for (const json& r : ReadJsonLines(test::SharedPath("data/gsm8k/test.jsonl"))) {
    const std::string a = r["answer"].get<std::string>();
    EXPECT_EQ(uncached->Encode(a), Qwen3().Encode(a));
  }
  Qwen3().ClearCache();
  EXPECT_EQ(uncached->Encode("Hello world"), Qwen3().Encode("Hello world"));
}

TEST(TokenizerTest, LoadsFromDirectory) {
  auto dir = Tokenizer::Load(test::SharedPath("data/tokenizers/qwen3"));
  ASSERT_TRUE(dir.ok()) << dir.status().ToString();
  EXPECT_EQ(dir->Encode(" Hello World!"), Qwen3().Encode(" Hello World!"));
}

// ---- A small synthetic tokenizer.json: the 256 byte symbols, a few merges, chosen added tokens.

// GPT-2's byte-to-symbol map, written here independently of the tokenizer's own.
std::string ByteSymbol(int b) {
  const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
  int cp = b;
  if (!printable) {
    cp = 256;
    for (int c = 0; c < b; ++c) {
      if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) ++cp;
    }
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

json SyntheticTokenizer(bool legacy_merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteSymbol(b)] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "i"}, {"y", "o"}, {"\xc4\xa0", "hi"}, {"a", "a"}, {"aa", "a"}};
  json merge_list = json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    vocab[a + b] = next++;
    merge_list.push_back(legacy_merges ? json(a + " " + b) : json::array({a, b}));
  }
  auto added = [](int id, const char* content, bool normalized, bool lstrip, bool rstrip, bool single_word) {
    return json{
        {"id", id},         {"content", content},       {"single_word", single_word}, {"lstrip", lstrip},
        {"rstrip", rstrip}, {"normalized", normalized}, {"special", !normalized}};
  };
  return json{
      {"version", "1.0"},
      {"added_tokens",
       json::array(
           {added(261, "[MASK]", false, true, true, false), added(262, "<w>", false, false, false, true),
            added(263, "<s>", false, false, false, false), added(264, "<s><s>", false, false, false, false),
            added(265, "\xc5\x9b", true, false, false, false)})},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Split"},
                       {"pattern", {{"Regex", R"( ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"}}},
                       {"behavior", "Isolated"},
                       {"invert", false}},
                      {{"type", "ByteLevel"},
                       {"add_prefix_space", false},
                       {"trim_offsets", false},
                       {"use_regex", false}}})}}},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merge_list}}}};
}

std::string WriteFile(const std::string& dir, const std::string& name, const std::string& content) {
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

Result<Tokenizer> LoadJson(const std::string& name, const std::string& content) {
  return Tokenizer::Load(WriteFile(test::TempDir("tokenizer_" + name), "tokenizer.json", content));
}

TEST(TokenizerTest, SyntheticMergesInBothFormats) {
  auto pairs = LoadJson("pairs", SyntheticTokenizer(false).dump());
  auto legacy = LoadJson("legacy", SyntheticTokenizer(true).dump());
  ASSERT_TRUE(pairs.ok()) << pairs.status().ToString();
  ASSERT_TRUE(legacy.ok()) << legacy.status().ToString();
  // " hi": h+i (rank 0), then Ġ+hi (rank 2). " aaaa": a+a at the left, then a+a on the right
  // (rank 3 beats aa+a, rank 4). " aaa": a+a at the left first, then aa+a.
  const std::vector<int32_t> expected = {258, 32, 257, 32, 259, 259, 32, 260};
  EXPECT_EQ(pairs->Encode(" hi yo aaaa aaa"), expected);
  EXPECT_EQ(legacy->Encode(" hi yo aaaa aaa"), expected);
}

TEST(TokenizerTest, AddedTokenOptions) {
  auto tok = LoadJson("options", SyntheticTokenizer(false).dump());
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  // lstrip + rstrip: the token swallows the whitespace around it.
  EXPECT_EQ(tok->Encode("hi  [MASK] \tyo"), Concat({tok->Encode("hi"), {261}, tok->Encode("yo")}));
  // single_word: matched only where no word character touches it.
  EXPECT_EQ(tok->Encode("a <w> b"), Concat({tok->Encode("a "), {262}, tok->Encode(" b")}));
  EXPECT_EQ(tok->Encode("<w>."), Concat({{262}, tok->Encode(".")}));
  for (int32_t id : tok->Encode("a<w> x<w>y <w>b")) EXPECT_NE(id, 262);
  // Longest match first at the leftmost position.
  EXPECT_EQ(tok->Encode("<s><s><s>"), (std::vector<int32_t>{264, 263}));
  // normalized=true: matched in the NFC text, so a decomposed U+015B (s + U+0301) finds it too.
  EXPECT_EQ(tok->Encode("xs\xcc\x81y"), Concat({tok->Encode("x"), {265}, tok->Encode("y")}));
  EXPECT_EQ(tok->Encode("x\xc5\x9by"), Concat({tok->Encode("x"), {265}, tok->Encode("y")}));
  auto text = tok->Decode(std::vector<int32_t>{258, 261, 265});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, " hi[MASK]\xc5\x9b");
}

// ---- Malformed files.

void ExpectLoadError(const std::string& name, const std::string& content, Code code,
                     const std::string& fragment) {
  auto r = LoadJson(name, content);
  ASSERT_FALSE(r.ok()) << name << " loaded";
  EXPECT_EQ(r.status().code(), code) << r.status().ToString();
  EXPECT_NE(r.status().message().find("tokenizer.json"), std::string::npos) << r.status().ToString();
  EXPECT_NE(r.status().message().find(fragment), std::string::npos) << r.status().ToString();
}

TEST(TokenizerTest, MalformedFilesGiveErrors) {
  ExpectLoadError("bad_json", "{\"model\": {", Code::kCorruption, "parse error");
  json doc = SyntheticTokenizer(false);
  doc.erase("model");
  ExpectLoadError("no_model", doc.dump(), Code::kCorruption, "model: missing");

  doc = SyntheticTokenizer(false);
  doc["model"]["merges"].push_back(json::array({"q", "zz"}));
  ExpectLoadError("merge_not_in_vocab", doc.dump(), Code::kCorruption,
                  "model.merges[5]: \"zz\" is not in the vocab");
  doc = SyntheticTokenizer(false);
  doc["model"]["merges"].push_back(json::array({"q", "q"}));
  ExpectLoadError("merged_not_in_vocab", doc.dump(), Code::kCorruption, "merged token \"qq\"");
  doc = SyntheticTokenizer(true);
  doc["model"]["merges"].push_back("a b c");
  ExpectLoadError("merge_three_parts", doc.dump(), Code::kCorruption, "model.merges[5]");
  doc = SyntheticTokenizer(false);
  doc["model"]["merges"].push_back(17);
  ExpectLoadError("merge_number", doc.dump(), Code::kCorruption, "model.merges[5]");

  doc = SyntheticTokenizer(false);
  doc["model"]["vocab"]["hi"] = -3;
  ExpectLoadError("negative_id", doc.dump(), Code::kCorruption, "model.vocab[\"hi\"]");
  doc = SyntheticTokenizer(false);
  doc["model"]["vocab"]["zz"] = 5;
  ExpectLoadError("duplicate_id", doc.dump(), Code::kCorruption, "id 5 is given to both");
  doc = SyntheticTokenizer(false);
  doc["model"]["vocab"].erase("A");
  ExpectLoadError("missing_byte", doc.dump(), Code::kCorruption, "byte 0x41");
  doc = SyntheticTokenizer(false);
  doc["added_tokens"][1]["id"] = 261;  // what HF assigns ignores the file's ids: refuse to differ
  ExpectLoadError("added_dup_id", doc.dump(), Code::kCorruption,
                  "added_tokens[1]: id 261 where Hugging Face");
  doc = SyntheticTokenizer(false);
  doc["added_tokens"][4]["id"] = 400;
  ExpectLoadError("added_gap", doc.dump(), Code::kCorruption, "added_tokens[4]: id 400 where Hugging Face");
  doc = SyntheticTokenizer(false);
  doc["added_tokens"][0]["content"] = "hi";
  ExpectLoadError("added_vs_vocab", doc.dump(), Code::kCorruption, "added_tokens[0]: \"hi\" has id 261");

  doc = SyntheticTokenizer(false);
  doc["normalizer"] = {{"type", "Lowercase"}};
  ExpectLoadError("normalizer", doc.dump(), Code::kInvalidArgument, "normalizer: type \"Lowercase\"");
  doc = SyntheticTokenizer(false);
  doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  ExpectLoadError("regex", doc.dump(), Code::kInvalidArgument, "split pattern");
  doc = SyntheticTokenizer(false);
  doc["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = true;
  ExpectLoadError("byte_level_regex", doc.dump(), Code::kInvalidArgument, "use_regex");
  doc = SyntheticTokenizer(false);
  doc["model"]["type"] = "WordPiece";
  ExpectLoadError("model_type", doc.dump(), Code::kInvalidArgument, "model.type");
  doc = SyntheticTokenizer(false);
  doc["decoder"] = nullptr;
  ExpectLoadError("decoder", doc.dump(), Code::kInvalidArgument, "decoder");

  auto missing = Tokenizer::Load(test::TempDir("tokenizer_missing") + "/nope.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
}

// ---- Hugging Face's own ids (tests/fixtures/gen_tokenizer_reference.py on a machine with
// the `tokenizers` package).

TEST(TokenizerTest, MatchesHuggingFaceReference) {
  const std::string path = test::SourcePath("tests/fixtures/tokenizer/hf_qwen3_reference.jsonl");
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " does not exist yet: run tests/fixtures/gen_tokenizer_reference.py "
                 << "where the Python `tokenizers` package is installed";
  }
  const std::vector<json> rows = ReadJsonLines(path);
  ASSERT_FALSE(rows.empty()) << path;
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::string text = rows[i]["text"].get<std::string>();
    EXPECT_EQ(Qwen3().Encode(text), Ids(rows[i]["ids"]))
        << path << " line " << i + 1 << ": " << json(text).dump();
  }
}

}  // namespace
}  // namespace s0
