// Qwen3.5 chat formatting with thinking disabled: the text that the official chat template
// (../shared/data/tokenizers/chat_templates/Qwen3.5-4B.jinja) renders for plain system / user /
// assistant turns with enable_thinking=false, byte for byte. Encode the result with the model's
// Tokenizer (which matches <|im_start|>, <think>, ... atomically).
//
// What the template does, and so what this does:
//   * every message's content is trimmed of leading and trailing whitespace (Python str.strip);
//   * an optional system message, only as the first message, renders first;
//   * a user turn renders as "<|im_start|>user\n{content}<|im_end|>\n";
//   * an assistant turn after the last user query renders with a think block,
//     "<|im_start|>assistant\n<think>\n{reasoning}\n</think>\n\n{answer}<|im_end|>\n", where a
//     content holding "</think>" is split into reasoning and answer; an assistant turn before it
//     renders as "<|im_start|>assistant\n{answer}<|im_end|>\n" with any reasoning dropped;
//   * the generation prompt is "<|im_start|>assistant\n<think>\n\n</think>\n\n".
// The "last user query" is the last user message whose trimmed content is not wholly a
// "<tool_response>...</tool_response>" block; a conversation without one is an error, as in
// the template.
//
// Not supported, and rejected with InvalidArgument instead of rendered approximately: tool
// definitions, tool calls and "tool" messages, non-string content (images, videos, content parts),
// reasoning_content fields, and any role other than system/user/assistant.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <span>
#include <string>
#include <vector>

#include "kernels/status.h"

namespace s0 {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// The rendered conversation; add_generation_prompt appends the empty-thinking assistant header.
Result<std::string> FormatQwen35Chat(std::span<const ChatMessage> messages, bool add_generation_prompt);

// Messages from the JSON form of the training data and OpenAI-style requests:
// [{"role": "user", "content": "..."}, ...]. Any other field or a non-string content is an error.
Result<std::vector<ChatMessage>> ChatMessagesFromJson(const nlohmann::json& messages);

}  // namespace s0
