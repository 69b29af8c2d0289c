#include "worker/chat.h"

#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

namespace s0 {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";

// Length of the Python-whitespace code point that starts at s[pos], or 0. Python's str.isspace
// set: U+0009..000D, U+001C..001F, U+0020, U+0085, U+00A0, U+1680, U+2000..200A, U+2028, U+2029,
// U+202F, U+205F, U+3000 (Jinja's trim is str.strip()).
size_t SpaceAt(std::string_view s, size_t pos) {
  const auto b = [&](size_t k) { return pos + k < s.size() ? static_cast<unsigned char>(s[pos + k]) : 0u; };
  const unsigned c = b(0);
  if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20)) return 1;
  if (c == 0xC2 && (b(1) == 0x85 || b(1) == 0xA0)) return 2;
  if (c == 0xE1 && b(1) == 0x9A && b(2) == 0x80) return 3;  // U+1680
  if (c == 0xE2 && b(1) == 0x80 && (b(2) <= 0x8A || b(2) == 0xA8 || b(2) == 0xA9 || b(2) == 0xAF)) return 3;
  if (c == 0xE2 && b(1) == 0x81 && b(2) == 0x9F) return 3;  // U+205F
  if (c == 0xE3 && b(1) == 0x80 && b(2) == 0x80) return 3;  // U+3000
  return 0;
}

// Start of the Python-whitespace code point that ends at s[end), or end when there is none.
size_t SpaceBefore(std::string_view s, size_t end) {
  for (size_t len = 1; len <= 3 && len <= end; ++len) {
    if (SpaceAt(s, end - len) == len) return end - len;
  }
  return end;
}

std::string_view Trim(std::string_view s) {
  size_t begin = 0, end = s.size();
  for (size_t n; begin < end && (n = SpaceAt(s, begin)) > 0;) begin += n;
  for (size_t p; end > begin && (p = SpaceBefore(s, end)) < end;) end = p;
  return s.substr(begin, end - begin);
}

std::string_view StripNewlines(std::string_view s, bool left) {
  if (left) {
    while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  } else {
    while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  }
  return s;
}

bool IsToolResponse(std::string_view content) {
  return content.starts_with("<tool_response>") && content.ends_with("</tool_response>");
}

// An assistant turn. Reasoning written inline ("<think>r</think>answer") is split off as the
// template does: reasoning = text before the first </think>, after its last <think>; answer =
// text after the last </think>.
void AppendAssistant(std::string_view content, bool with_think_block, std::string* out) {
  std::string_view reasoning;
  if (const size_t first_close = content.find(kThinkClose); first_close != std::string_view::npos) {
    std::string_view before = StripNewlines(content.substr(0, first_close), false);
    if (const size_t open = before.rfind(kThinkOpen); open != std::string_view::npos) {
      before = before.substr(open + kThinkOpen.size());
    }
    reasoning = Trim(StripNewlines(before, true));
    content = StripNewlines(content.substr(content.rfind(kThinkClose) + kThinkClose.size()), true);
  }
  *out += "<|im_start|>assistant\n";
  if (with_think_block) {
    *out += "<think>\n";
    *out += reasoning;
    *out += "\n</think>\n\n";
  }
  *out += content;
  *out += "<|im_end|>\n";
}

}  // namespace

Result<std::string> FormatQwen35Chat(std::span<const ChatMessage> messages, bool add_generation_prompt) {
  if (messages.empty()) return Status::InvalidArgument("chat: no messages");
  std::optional<size_t> last_query;
  for (size_t i = messages.size(); i-- > 0;) {
    const ChatMessage& m = messages[i];
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      return Status::InvalidArgument("chat: messages[" + std::to_string(i) + "]: role \"" + m.role +
                                     "\" is not supported (system, user, assistant)");
    }
    if (m.role == "system" && i != 0) {
      return Status::InvalidArgument("chat: messages[" + std::to_string(i) +
                                     "]: a system message must be the first message");
    }
    if (!last_query && m.role == "user" && !IsToolResponse(Trim(m.content))) last_query = i;
  }
  if (!last_query) return Status::InvalidArgument("chat: no user query among the messages");

  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string_view content = Trim(messages[i].content);
    if (messages[i].role == "system") {
      out += "<|im_start|>system\n";
      out += content;
      out += "<|im_end|>\n";
    } else if (messages[i].role == "user") {
      out += "<|im_start|>user\n";
      out += content;
      out += "<|im_end|>\n";
    } else {
      AppendAssistant(content, i > *last_query, &out);
    }
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n<think>\n\n</think>\n\n";
  return out;
}

Result<std::vector<ChatMessage>> ChatMessagesFromJson(const nlohmann::json& messages) {
  if (!messages.is_array()) return Status::InvalidArgument("chat: messages must be a JSON array");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const nlohmann::json& m = messages[i];
    const std::string where = "chat: messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return Status::InvalidArgument(where + ": expected an object");
    ChatMessage msg;
    for (const auto& [key, value] : m.items()) {
      if (key == "role" && value.is_string()) {
        msg.role = value.get<std::string>();
      } else if (key == "content" && value.is_string()) {
        msg.content = value.get<std::string>();
      } else if (key == "content" && !value.is_null()) {
        return Status::InvalidArgument(where +
                                       ": content must be a string (images, videos and content "
                                       "parts are not supported)");
      } else if (key != "content") {
        return Status::InvalidArgument(where + ": field \"" + key + "\" is not supported" +
                                       (key == "role" ? " unless it is a string" : ""));
      }
    }
    if (msg.role.empty()) return Status::InvalidArgument(where + ": missing role");
    out.push_back(std::move(msg));
  }
  return out;
}

}  // namespace s0
