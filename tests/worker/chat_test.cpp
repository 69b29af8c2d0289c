// Qwen3.5 chat formatting. The expected strings are derived by hand from
// ../shared/data/tokenizers/chat_templates/Qwen3.5-4B.jinja with enable_thinking=false.
#include "worker/chat.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/common/test_paths.h"
#include "worker/tokenizer.h"

namespace s0 {
namespace {

using json = nlohmann::json;

std::string Format(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  auto r = FormatQwen35Chat(messages, add_generation_prompt);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : std::string("<error>");
}

void ExpectRejected(const std::vector<ChatMessage>& messages, const std::string& fragment) {
  auto r = FormatQwen35Chat(messages, true);
  ASSERT_FALSE(r.ok()) << "rendered: " << *r;
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find(fragment), std::string::npos) << r.status().ToString();
}

TEST(ChatTest, SingleUserTurnWithGenerationPrompt) {
  EXPECT_EQ(Format({{"user", "Hello"}}, true),
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_EQ(Format({{"user", "Hello"}}, false), "<|im_start|>user\nHello<|im_end|>\n");
}

TEST(ChatTest, SystemMessageAndTrimming) {
  EXPECT_EQ(Format({{"system", "  You are a helpful assistant.\n"}, {"user", "\n What is 2+2? \t"}}, true),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n");
  // An empty system message still renders its (empty) block.
  EXPECT_EQ(Format({{"system", " \n"}, {"user", "Hi"}}, false),
            "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
  // str.strip() removes Unicode whitespace (U+3000, U+00A0, U+2028) but not U+200B.
  EXPECT_EQ(Format({{"user", "\xe3\x80\x80Hi\xc2\xa0\xe2\x80\xa8"}}, false),
            "<|im_start|>user\nHi<|im_end|>\n");
  EXPECT_EQ(Format({{"user", "\xe2\x80\x8bHi"}}, false), "<|im_start|>user\n\xe2\x80\x8bHi<|im_end|>\n");
  // Inner whitespace is kept.
  EXPECT_EQ(Format({{"user", "  a\n\n  b  "}}, false), "<|im_start|>user\na\n\n  b<|im_end|>\n");
}

TEST(ChatTest, EarlierAssistantTurnsHaveNoThinkBlock) {
  EXPECT_EQ(Format({{"system", "S"},
                    {"user", "Hi"},
                    {"assistant", "Hello! How can I help?\n"},
                    {"user", "Add 2 and 3."}},
                   true),
            "<|im_start|>system\nS<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
            "<|im_start|>user\nAdd 2 and 3.<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

TEST(ChatTest, FinalAssistantTurnIsGenerationPromptPlusCompletion) {
  // A training example: the completion follows exactly what the generation prompt renders.
  const std::string prompt = Format({{"user", "Q"}}, true);
  const std::string full = Format({{"user", "Q"}, {"assistant", "A"}}, false);
  EXPECT_EQ(full,
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n");
  EXPECT_EQ(full, prompt + "A<|im_end|>\n");
}

TEST(ChatTest, InlineReasoningIsSplitOrDropped) {
  EXPECT_EQ(Format({{"user", "Q1"},
                    {"assistant", "<think>\nr1\n</think>\n\nA1"},
                    {"user", "Q2"},
                    {"assistant", "<think>\n\n  r2 \n\n</think>\n\n\nA2 "}},
                   false),
            "<|im_start|>user\nQ1<|im_end|>\n"
            "<|im_start|>assistant\nA1<|im_end|>\n"
            "<|im_start|>user\nQ2<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nr2\n</think>\n\nA2<|im_end|>\n");
  // Without an opening <think>, everything before </think> is reasoning; only newlines are
  // stripped from the start of the answer.
  EXPECT_EQ(
      Format({{"user", "Q"}, {"assistant", "why</think>\n  A"}}, false),
      "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nwhy\n</think>\n\n  A<|im_end|>\n");
}

TEST(ChatTest, ToolResponseUserTurnIsNotTheLastQuery) {
  EXPECT_EQ(
      Format({{"user", "Q"}, {"assistant", "A"}, {"user", " <tool_response>x</tool_response>\n"}}, false),
      "<|im_start|>user\nQ<|im_end|>\n"
      "<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n"
      "<|im_start|>user\n<tool_response>x</tool_response><|im_end|>\n");
}

TEST(ChatTest, UnsupportedConversationsAreRejected) {
  ExpectRejected({}, "no messages");
  ExpectRejected({{"user", "Q"}, {"tool", "42"}}, "role \"tool\"");
  ExpectRejected({{"developer", "x"}, {"user", "Q"}}, "role \"developer\"");
  ExpectRejected({{"user", "Q"}, {"system", "S"}}, "must be the first message");
  ExpectRejected({{"system", "S"}, {"assistant", "A"}}, "no user query");
  ExpectRejected({{"user", "<tool_response>r</tool_response>"}}, "no user query");
}

TEST(ChatTest, MessagesFromJson) {
  auto ok =
      ChatMessagesFromJson(json::parse(R"([{"role":"system","content":"S"},{"role":"user","content":"Q"},
                                                 {"role":"assistant","content":null}])"));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  ASSERT_EQ(ok->size(), 3u);
  EXPECT_EQ((*ok)[1].role, "user");
  EXPECT_EQ((*ok)[1].content, "Q");
  EXPECT_EQ((*ok)[2].content, "");

  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"role":"user"})", "must be a JSON array"},
      {R"([{"role":"user","content":[{"type":"image","image":"x.png"}]}])", "content must be a string"},
      {R"([{"role":"assistant","content":"","tool_calls":[]}])", "field \"tool_calls\""},
      {R"([{"role":"assistant","content":"A","reasoning_content":"r"}])", "field \"reasoning_content\""},
      {R"([{"content":"Q"}])", "missing role"},
      {R"([{"role":7,"content":"Q"}])", "field \"role\""},
      {R"(["Q"])", "expected an object"}};
  for (const auto& [text, fragment] : bad) {
    auto r = ChatMessagesFromJson(json::parse(text));
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_NE(r.status().message().find(fragment), std::string::npos)
        << text << " -> " << r.status().ToString();
  }
}

// spec/qwen3_5.md section 5 gives the token structure of one user turn plus the generation
// prompt: im_start "user" "\n" X im_end "\n" im_start "assistant" "\n" <think> "\n\n" </think>
// "\n\n". Its regular ids (846 "user", 74455 "assistant") are Qwen3.5's; in the Qwen3 vocab used
// here those ids are other tokens ("user" is 872), so the ids are looked up by spelling.
TEST(ChatTest, TokenizesWithTheStructureTheSpecGives) {
  auto tok = Tokenizer::Load(test::SharedPath("data/tokenizers/qwen3/tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  auto id = [&](const char* token) { return tok->TokenToId(token).value_or(-1); };
  const int32_t nl = id("\xc4\x8a"), nlnl = id("\xc4\x8a\xc4\x8a");  // byte-level "\n", "\n\n"
  std::vector<int32_t> expected = {id("<|im_start|>"), id("user"), nl};
  for (int32_t x : tok->Encode("What is 7 times 6?")) expected.push_back(x);
  for (int32_t x : {id("<|im_end|>"), nl, id("<|im_start|>"), id("assistant"), nl, id("<think>"), nlnl,
                    id("</think>"), nlnl}) {
    expected.push_back(x);
  }
  EXPECT_EQ(tok->Encode(Format({{"user", " What is 7 times 6?\n"}}, true)), expected);
}

}  // namespace
}  // namespace s0
