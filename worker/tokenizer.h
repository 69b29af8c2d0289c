// Byte-level BPE tokenizer for the Qwen family, loaded from a Hugging Face tokenizer.json.
//
// Supported file shape (anything else is rejected at load with a Status naming the file and field):
//   normalizer     null or {"type":"NFC"}
//   pre_tokenizer  Sequence[ Split(pattern {"Regex":P} or {"String":S}, behavior "Isolated",
//                  invert false), ByteLevel(add_prefix_space false, use_regex false) ]
//   model          BPE: vocab {token: id}, merges as "a b" strings or ["a","b"] pairs, no dropout,
//                  no byte fallback, no subword prefix/suffix, optional ignore_merges; every one of
//                  the 256 byte-level symbols must be in the vocab
//   decoder        ByteLevel
//   added_tokens   [{id, content, single_word, lstrip, rstrip, normalized, special}]
//   post_processor ignored: Encode never adds special tokens.
//
// Encode follows Hugging Face `tokenizers` with add_special_tokens=false:
//   1. added tokens with normalized=false are cut out of the raw text, leftmost-longest match
//      first, honouring single_word / lstrip / rstrip;
//   2. each remaining span is normalised (NFC), then added tokens with normalized=true are cut out
//      of it the same way;
//   3. each remaining span is split by the pattern P (PCRE2, UTF + UCP; matches and the gaps
//      between them both become pre-tokens), and each pre-token's bytes are BPE-merged by rank.
// Input need not be valid UTF-8: invalid bytes are never normalised, match no regex class and
// are tokenised as the bytes they are. The regex and the normaliser can be overridden (the Qwen3.5
// variant: its own pattern and no NFC).
//
// Decode maps ids back to bytes: an added token gives its content, a vocab token the bytes its
// byte-level symbols stand for (a token with a non-byte-level symbol gives its own UTF-8, as HF's
// ByteLevel decoder does). Unlike HF, the result is the raw bytes, never repaired with U+FFFD, so
// Decode(Encode(x)) == x for every byte string x and partial UTF-8 survives token-by-token output.
//
// Thread safety: a loaded Tokenizer is immutable except for its pre-token cache, which is guarded
// by internal locks; Encode, Decode and TokenToId may be called concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/status.h"

namespace s0 {

struct TokenizerOptions {
  enum class Normalizer { kFromFile, kNone, kNfc };
  // Replaces the Split pre-tokenizer's pattern from the file (PCRE2 syntax).
  std::optional<std::string> split_regex;
  // kFromFile uses the file's normalizer; kNone / kNfc override it.
  Normalizer normalizer = Normalizer::kFromFile;
  // Most pre-tokens whose ids are remembered across Encode calls; 0 disables the cache.
  size_t cache_capacity = 1 << 16;
};

class Tokenizer {
 public:
  // path_or_dir: a tokenizer.json file, or a directory holding one.
  static Result<Tokenizer> Load(const std::string& path_or_dir, TokenizerOptions opts = {});

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Token ids of text; no special tokens are added, added tokens written in the text are matched.
  std::vector<int32_t> Encode(std::string_view text) const;
  // Bytes of the ids concatenated; InvalidArgument names the first id that has no token.
  Result<std::string> Decode(std::span<const int32_t> ids) const;
  // Id of an added token's content or of a vocab entry in its byte-level spelling ("Ġthe").
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // One more than the largest id (vocab and added tokens): the size an embedding must cover.
  int32_t vocab_size() const;
  // Forgets every cached pre-token (for cold-cache measurements).
  void ClearCache() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace s0
