// `s0 tokenize`, run as the built binary: encode from a file and from stdin, decode exactly,
// and exit status 1 with a message on errors.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/common/test_paths.h"
#include "worker/tokenizer.h"

namespace s0 {
namespace {

struct CliRun {
  int status = -1;
  std::string out, err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary) << content;
}

class TokenizeCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    binary_ = std::string(S0_BINARY_DIR) + "/daemon/s0";
    ASSERT_TRUE(std::filesystem::exists(binary_)) << binary_ << " is missing: build the s0 target first";
    dir_ = test::TempDir("tokenize_cli");
    tokenizer_ = test::SharedPath("data/tokenizers/qwen3/tokenizer.json");
  }

  // Runs `s0 <args>` through the shell (args may redirect stdin) and captures its output.
  CliRun S0(const std::string& args) const {
    CliRun r;
    const std::string out = dir_ + "/stdout", err = dir_ + "/stderr";
    const int rc = std::system(("'" + binary_ + "' " + args + " >'" + out + "' 2>'" + err + "'").c_str());
    r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    r.out = ReadFile(out);
    r.err = ReadFile(err);
    return r;
  }

  std::string Quoted(const std::string& path) const { return "'" + path + "'"; }

  std::string binary_, dir_, tokenizer_;
};

TEST_F(TokenizeCliTest, EncodesFileAndStdin) {
  const std::string text = "Hello world<|im_end|>\n\xe4\xbd\xa0\xe5\xa5\xbd  \t<think>x";
  WriteFile(dir_ + "/in.txt", text);
  auto tok = Tokenizer::Load(tokenizer_);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  const std::vector<int32_t> expected = tok->Encode(text);
  ASSERT_EQ(std::vector<int32_t>(expected.begin(), expected.begin() + 3),
            (std::vector<int32_t>{9707, 1879, *tok->TokenToId("<|im_end|>")}));

  const CliRun file = S0("tokenize --tokenizer " + Quoted(tokenizer_) + " " + Quoted(dir_ + "/in.txt"));
  ASSERT_EQ(file.status, 0) << file.err;
  ASSERT_FALSE(file.out.empty());
  EXPECT_EQ(file.out.back(), '\n');
  EXPECT_EQ(file.out.find('\n'), file.out.size() - 1) << "not one line: " << file.out;
  EXPECT_EQ(nlohmann::json::parse(file.out).get<std::vector<int32_t>>(), expected);

  // A model directory works as --tokenizer, and stdin as input.
  const std::string model_dir = std::filesystem::path(tokenizer_).parent_path().string();
  const CliRun in = S0("tokenize --tokenizer " + Quoted(model_dir) + " < " + Quoted(dir_ + "/in.txt"));
  ASSERT_EQ(in.status, 0) << in.err;
  EXPECT_EQ(in.out, file.out);

  const CliRun empty = S0("tokenize --tokenizer " + Quoted(tokenizer_) + " < /dev/null");
  ASSERT_EQ(empty.status, 0) << empty.err;
  EXPECT_EQ(empty.out, "[]\n");
}

TEST_F(TokenizeCliTest, DecodesExactly) {
  const std::string text = "def f(x):\n    return x  # \xc3\xa9\t<|endoftext|>\n\n";
  WriteFile(dir_ + "/in.txt", text);
  const CliRun enc = S0("tokenize --tokenizer " + Quoted(tokenizer_) + " " + Quoted(dir_ + "/in.txt"));
  ASSERT_EQ(enc.status, 0) << enc.err;
  WriteFile(dir_ + "/ids.json", enc.out);
  const CliRun dec =
      S0("tokenize --decode --tokenizer " + Quoted(tokenizer_) + " " + Quoted(dir_ + "/ids.json"));
  ASSERT_EQ(dec.status, 0) << dec.err;
  EXPECT_EQ(dec.out, text);
  const CliRun dec_stdin =
      S0("tokenize --tokenizer " + Quoted(tokenizer_) + " --decode < " + Quoted(dir_ + "/ids.json"));
  ASSERT_EQ(dec_stdin.status, 0) << dec_stdin.err;
  EXPECT_EQ(dec_stdin.out, text);
}

TEST_F(TokenizeCliTest, ErrorsExitWithStatusOne) {
  WriteFile(dir_ + "/bad_ids.json", "[9707, \"x\"]");
  WriteFile(dir_ + "/range.json", "[9707, 999999999]");
  WriteFile(dir_ + "/not_json.txt", "9707 1879");
  WriteFile(dir_ + "/bad_tokenizer.json", "{\"model\": ");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"tokenize --tokenizer " + Quoted(dir_ + "/missing.json") + " < /dev/null", "cannot open"},
      {"tokenize --tokenizer " + Quoted(dir_ + "/bad_tokenizer.json") + " < /dev/null", "bad_tokenizer.json"},
      {"tokenize --tokenizer " + Quoted(tokenizer_) + " " + Quoted(dir_ + "/missing.txt"), "missing.txt"},
      {"tokenize --decode --tokenizer " + Quoted(tokenizer_) + " " + Quoted(dir_ + "/bad_ids.json"),
       "element 1"},
      {"tokenize --decode --tokenizer " + Quoted(tokenizer_) + " " + Quoted(dir_ + "/range.json"),
       "999999999"},
      {"tokenize --decode --tokenizer " + Quoted(tokenizer_) + " " + Quoted(dir_ + "/not_json.txt"),
       "JSON array"}};
  for (const auto& [args, fragment] : cases) {
    const CliRun r = S0(args);
    EXPECT_EQ(r.status, 1) << args;
    EXPECT_TRUE(r.out.empty()) << args << " printed " << r.out;
    EXPECT_NE(r.err.find(fragment), std::string::npos) << args << " -> " << r.err;
  }
}

}  // namespace
}  // namespace s0
