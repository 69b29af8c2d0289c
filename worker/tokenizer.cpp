#include "worker/tokenizer.h"

#include "kernels/check.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

namespace s0 {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// UTF-8 and the few Unicode classes the added-token rules need.

// Code point starting at s[0] (n bytes available); *len is its length. A byte that does not
// start a well-formed sequence (stray continuation, overlong form, surrogate, > U+10FFFF,
// truncation) gives -1 with *len = 1.
int32_t DecodeUtf8(const unsigned char* s, size_t n, size_t* len) {
  *len = 1;
  const unsigned char c = s[0];
  if (c < 0x80) return c;
  size_t need;
  int32_t cp, min;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1, cp = c & 0x1F, min = 0x80;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2, cp = c & 0x0F, min = 0x800;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3, cp = c & 0x07, min = 0x10000;
  } else {
    return -1;
  }
  if (n < need + 1) return -1;
  for (size_t k = 1; k <= need; ++k) {
    if ((s[k] & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (s[k] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
  *len = need + 1;
  return cp;
}

const unsigned char* Bytes(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

// Code point at s[pos..] (-1 for an ill-formed byte), with its length in *len.
int32_t CodePointAt(std::string_view s, size_t pos, size_t* len) {
  return DecodeUtf8(Bytes(s) + pos, s.size() - pos, len);
}

// Code point that ends at s[end) (-1 when the bytes before end are not a well-formed one).
int32_t CodePointBefore(std::string_view s, size_t end, size_t* len) {
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && (Bytes(s)[start] & 0xC0) == 0x80) --start;
  size_t l;
  const int32_t cp = CodePointAt(s, start, &l);
  if (cp < 0 || start + l != end) {
    *len = 1;
    return -1;
  }
  *len = l;
  return cp;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Unicode White_Space: what `\s` means in the Rust regexes HF uses for lstrip/rstrip.
bool IsWhiteSpace(int32_t cp) {
  if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0) return true;
  if (cp < 0x1680) return false;
  const utf8proc_category_t cat = utf8proc_category(cp);
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

// Rust regex `\w` (for single_word): letters, marks, decimal digits, connector punctuation,
// letter numbers and the two joiners. It also counts Other_Alphabetic symbols such as circled
// letters, which utf8proc cannot tell apart and which are treated as non-word here.
bool IsWordChar(int32_t cp) {
  if (cp < 0) return false;
  if (cp == 0x200C || cp == 0x200D) return true;
  switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

// ---------------------------------------------------------------------------------------------
// NFC. Code points below U+0300 are NFC-stable and never compose with a neighbour, and all their
// UTF-8 bytes are below 0xCC, so a span without such a byte (all ASCII text) is already NFC.

bool MayNeedNfc(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) >= 0xCC; });
}

// NFC of the well-formed runs of s. utf8proc rejects ill-formed input as a whole, so ill-formed
// bytes are copied as they are and act as boundaries between independently normalised runs.
std::string Nfc(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 16);
  size_t i = 0;
  while (i < s.size()) {
    size_t end = i, len;
    while (end < s.size() && CodePointAt(s, end, &len) >= 0) end += len;
    if (end > i) {
      utf8proc_uint8_t* dst = nullptr;
      const utf8proc_ssize_t n = utf8proc_map(Bytes(s) + i, static_cast<utf8proc_ssize_t>(end - i), &dst,
                                              utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
      if (n >= 0) {
        out.append(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
      } else {  // out of memory: leave the run as it is rather than lose text
        out.append(s.substr(i, end - i));
      }
      std::free(dst);
    }
    if (end < s.size()) out.push_back(s[end++]);
    i = end;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// ByteLevel: GPT-2's byte-to-symbol map. Printable Latin-1 bytes stand for themselves; the other
// 68 bytes take code points 256, 257, ... in byte order, so every byte is a visible character.

std::array<uint32_t, 256> ByteLevelCodePoints() {
  std::array<uint32_t, 256> cps{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    cps[b] = printable ? b : next++;
  }
  return cps;
}

// The bytes a vocab token stands for. A token holding a symbol outside the byte map decodes to
// its own UTF-8, as HF's ByteLevel decoder does.
std::string ByteLevelDecode(std::string_view token, const std::array<int16_t, 512>& byte_of) {
  std::string out;
  size_t pos = 0, len;
  while (pos < token.size()) {
    const int32_t cp = CodePointAt(token, pos, &len);
    if (cp < 0 || cp >= 512 || byte_of[static_cast<size_t>(cp)] < 0) return std::string(token);
    out.push_back(static_cast<char>(byte_of[static_cast<size_t>(cp)]));
    pos += len;
  }
  return out;
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// ---------------------------------------------------------------------------------------------
// Merge table: (left id, right id) -> (rank, merged id). The BPE inner loop's only lookup, so an
// open-addressing table with 64-bit keys and one multiply as hash instead of node-based maps.

struct Merge {
  int32_t rank;
  int32_t merged;
};

class MergeTable {
 public:
  void Reserve(size_t n) {
    size_t cap = 16;
    int bits = 4;
    while (cap < 2 * n) cap <<= 1, ++bits;
    keys_.assign(cap, kEmpty);
    vals_.assign(cap, Merge{0, 0});
    shift_ = 64 - bits;
  }
  // A pair listed twice keeps its last rank, as HF's map construction does.
  void Put(int32_t a, int32_t b, Merge m) {
    const uint64_t k = Key(a, b);
    size_t i = Slot(k);
    while (keys_[i] != kEmpty && keys_[i] != k) i = (i + 1) & (keys_.size() - 1);
    keys_[i] = k;
    vals_[i] = m;
  }
  const Merge* Get(int32_t a, int32_t b) const {
    const uint64_t k = Key(a, b);
    for (size_t i = Slot(k);; i = (i + 1) & (keys_.size() - 1)) {
      if (keys_[i] == k) return &vals_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }

 private:
  // Ids are non-negative int32, so an all-ones key never occurs.
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t Key(int32_t a, int32_t b) {
    return (uint64_t{static_cast<uint32_t>(a)} << 32) | static_cast<uint32_t>(b);
  }
  size_t Slot(uint64_t k) const { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> shift_); }
  std::vector<uint64_t> keys_;
  std::vector<Merge> vals_;
  int shift_ = 60;
};

// ---------------------------------------------------------------------------------------------
// Added tokens.

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// Finds added tokens in text the way HF does: leftmost match first, longest at that position
// (a byte trie), non-overlapping, scanning on after each match; single_word drops a match that
// touches a word character, lstrip/rstrip widen a match over neighbouring whitespace.
class AddedMatcher {
 public:
  bool empty() const { return tokens_.empty(); }

  // pattern is what is looked for in the text (the normalised content for normalized tokens).
  void Add(std::string_view pattern, const AddedToken& token) {
    int32_t node = 0;
    for (char ch : pattern) {
      const auto c = static_cast<unsigned char>(ch);
      int32_t child = Child(node, c);
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[static_cast<size_t>(node)].next.emplace_back(c, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    nodes_[static_cast<size_t>(node)].token = static_cast<int32_t>(tokens_.size());
    tokens_.push_back(token);
    first_[static_cast<unsigned char>(pattern[0])] = true;
  }

  // Calls fn(span, id) over text in order, covering it exactly: id is the token's id for a match
  // and -1 for the text between matches (never empty).
  template <typename Fn>
  void Split(std::string_view text, Fn&& fn) const {
    size_t emitted = 0, i = 0;
    while (i < text.size()) {
      if (!first_[Bytes(text)[i]]) {
        ++i;
        continue;
      }
      int32_t best = -1;
      size_t stop = i;
      for (size_t j = i, node = 0; j < text.size();) {
        const int32_t child = Child(static_cast<int32_t>(node), Bytes(text)[j++]);
        if (child < 0) break;
        node = static_cast<size_t>(child);
        if (nodes_[node].token >= 0) best = nodes_[node].token, stop = j;
      }
      if (best < 0) {
        ++i;
        continue;
      }
      const AddedToken& tok = tokens_[static_cast<size_t>(best)];
      size_t start = i;
      i = stop;
      if (tok.single_word && !IsSingleWord(text, start, stop)) continue;
      if (tok.lstrip) start = std::max(WhiteSpaceStart(text, start), emitted);
      // HF resumes scanning at the unwidened end; resuming after the stripped whitespace only
      // differs for a token that itself begins with whitespace, where HF would repeat text.
      if (tok.rstrip) i = stop = WhiteSpaceEnd(text, stop);
      if (emitted < start) fn(text.substr(emitted, start - emitted), int32_t{-1});
      fn(text.substr(start, stop - start), tok.id);
      emitted = stop;
    }
    if (emitted < text.size()) fn(text.substr(emitted), int32_t{-1});
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;
    int32_t token = -1;
  };

  int32_t Child(int32_t node, unsigned char c) const {
    for (const auto& [byte, child] : nodes_[static_cast<size_t>(node)].next) {
      if (byte == c) return child;
    }
    return -1;
  }
  static bool IsSingleWord(std::string_view text, size_t start, size_t stop) {
    size_t len;
    if (start > 0 && IsWordChar(CodePointBefore(text, start, &len))) return false;
    return stop == text.size() || !IsWordChar(CodePointAt(text, stop, &len));
  }
  static size_t WhiteSpaceStart(std::string_view text, size_t pos) {
    size_t len;
    while (pos > 0 && IsWhiteSpace(CodePointBefore(text, pos, &len))) pos -= len;
    return pos;
  }
  static size_t WhiteSpaceEnd(std::string_view text, size_t pos) {
    size_t len;
    while (pos < text.size() && IsWhiteSpace(CodePointAt(text, pos, &len))) pos += len;
    return pos;
  }

  std::vector<Node> nodes_{1};
  std::vector<AddedToken> tokens_;
  std::array<bool, 256> first_{};
};

// ---------------------------------------------------------------------------------------------
// Pre-token -> ids, shared by all threads. Sharded so that concurrent Encode calls rarely wait
// on one lock. Each shard is an open-addressing table of (hash, arena offset, lengths) over one
// arena that holds every entry's key bytes followed by its ids: a hit touches one slot and one
// arena span instead of a node-based map's chain of allocations. A full shard is emptied at once
// rather than evicted entry by entry, so its arena never fragments.

class PreTokenCache {
 public:
  // Keys are at most kMaxKeyBytes bytes; their BPE gives at most as many ids as bytes.
  static constexpr size_t kMaxKeyBytes = 64;

  explicit PreTokenCache(size_t capacity)
      : per_shard_(std::clamp<size_t>(capacity / kShards, 1, size_t{1} << 22)) {
    size_t slots = 2;
    while (slots < 2 * per_shard_) slots <<= 1;
    for (Shard& shard : shards_) shard.slots.assign(slots, Slot{});
  }

  // Appends the cached ids of word to out; false on a miss.
  bool Lookup(std::string_view word, uint64_t hash, std::vector<int32_t>* out) const {
    const Shard& shard = shards_[hash >> kShardShift];
    std::lock_guard<std::mutex> lock(shard.mu);
    const Slot* slot = shard.Find(word, hash);
    if (slot->key_len == 0) return false;
    const size_t n = out->size();
    out->resize(n + slot->n_ids);
    std::memcpy(out->data() + n, shard.arena.data() + slot->offset + slot->key_len,
                slot->n_ids * sizeof(int32_t));
    return true;
  }

  // word: 1..kMaxKeyBytes bytes; ids: its BPE (1..word.size() ids).
  void Insert(std::string_view word, uint64_t hash, std::span<const int32_t> ids) {
    Shard& shard = shards_[hash >> kShardShift];
    std::lock_guard<std::mutex> lock(shard.mu);
    if (shard.entries >= per_shard_) shard.Reset();
    Slot* slot = shard.Find(word, hash);
    if (slot->key_len != 0) return;  // another thread inserted it meanwhile
    *slot = Slot{hash, static_cast<uint32_t>(shard.arena.size()), static_cast<uint16_t>(word.size()),
                 static_cast<uint16_t>(ids.size())};
    shard.arena.append(word);
    shard.arena.append(reinterpret_cast<const char*>(ids.data()), ids.size_bytes());
    ++shard.entries;
  }

  void Clear() {
    for (Shard& shard : shards_) {
      std::lock_guard<std::mutex> lock(shard.mu);
      shard.Reset();
    }
  }

 private:
  static constexpr size_t kShards = 16;
  static constexpr int kShardShift = 60;  // the hash's top 4 bits pick the shard, low bits the slot
  struct Slot {
    uint64_t hash = 0;
    uint32_t offset = 0;   // of the key in the arena; the ids follow it
    uint16_t key_len = 0;  // 0: empty slot (keys are never empty)
    uint16_t n_ids = 0;
  };
  struct Shard {
    mutable std::mutex mu;
    std::vector<Slot> slots;  // a power of two, at least twice the entries
    std::string arena;
    size_t entries = 0;

    // The slot holding word, or the empty slot where it would go.
    template <typename Self>
    static auto* FindIn(Self& self, std::string_view word, uint64_t hash) {
      const size_t mask = self.slots.size() - 1;
      for (size_t i = hash & mask;; i = (i + 1) & mask) {
        auto& slot = self.slots[i];
        if (slot.key_len == 0) return &slot;
        if (slot.hash == hash && slot.key_len == word.size() &&
            std::memcmp(self.arena.data() + slot.offset, word.data(), word.size()) == 0) {
          return &slot;
        }
      }
    }
    const Slot* Find(std::string_view word, uint64_t hash) const { return FindIn(*this, word, hash); }
    Slot* Find(std::string_view word, uint64_t hash) { return FindIn(*this, word, hash); }
    void Reset() {
      std::fill(slots.begin(), slots.end(), Slot{});
      arena.clear();
      entries = 0;
    }
  };
  size_t per_shard_;
  std::array<Shard, kShards> shards_;
};

struct RegexFree {
  void operator()(pcre2_code* re) const { pcre2_code_free(re); }
};
using Regex = std::unique_ptr<pcre2_code, RegexFree>;

struct MatchDataFree {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};

// Per-call working memory of Encode.
struct Scratch {
  struct Symbol {
    int32_t id, prev, next;
  };
  // A candidate merge of symbol `left` with its right neighbour `right`, valid while both still
  // hold the ids they had when it was queued and are still adjacent.
  struct Candidate {
    int32_t rank, left, right, left_id, right_id, merged;
  };
  std::unique_ptr<pcre2_match_data, MatchDataFree> match;
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::vector<int32_t> word_ids;
  std::string spelling;
};

// Min-heap order: lowest rank first, then leftmost, as HF's BPE merges.
bool LaterCandidate(const Scratch::Candidate& a, const Scratch::Candidate& b) {
  return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  bool nfc = false;
  bool ignore_merges = false;
  Regex split;
  bool split_jit = false;
  std::array<int32_t, 256> byte_ids{};
  std::array<std::string, 256> byte_symbols;  // UTF-8 of each byte's ByteLevel symbol
  MergeTable merges;
  StringMap<int32_t> vocab;
  StringMap<int32_t> added_ids;
  std::vector<std::string> id_bytes;  // what Decode emits per id
  std::vector<uint8_t> id_known;
  AddedMatcher raw_added, normalized_added;
  std::unique_ptr<PreTokenCache> cache;  // null when disabled

  // Loading, in this order (messages name the JSON field; Load adds the file name).
  Status Build(const json& doc, const TokenizerOptions& opts);
  Status BuildVocab(const json& model, int32_t* max_id);
  Status BuildMerges(const json& model);
  Status BuildAdded(const std::vector<AddedToken>& tokens, int32_t* max_id);
  void BuildIdTable(const std::vector<AddedToken>& tokens, int32_t max_id);

  void EncodeText(std::string_view text, Scratch& s, std::vector<int32_t>* out) const;
  void EncodeNormalized(std::string_view text, Scratch& s, std::vector<int32_t>* out) const;
  void EncodeWord(std::string_view word, Scratch& s, std::vector<int32_t>* out) const;
  void Bpe(std::string_view word, Scratch& s, std::vector<int32_t>* out) const;
};

// A span free of unnormalised added tokens: normalise, cut normalized added tokens, pre-tokenise.
void Tokenizer::Impl::EncodeText(std::string_view text, Scratch& s, std::vector<int32_t>* out) const {
  std::string normalized;
  if (nfc && MayNeedNfc(text)) {
    normalized = Nfc(text);
    text = normalized;
  }
  if (normalized_added.empty()) {
    EncodeNormalized(text, s, out);
    return;
  }
  normalized_added.Split(text, [&](std::string_view span, int32_t id) {
    if (id >= 0) {
      out->push_back(id);
    } else {
      EncodeNormalized(span, s, out);
    }
  });
}

// Split(pattern, Isolated): every match and every gap between matches is a pre-token. An empty
// match (possible only with an overriding pattern) is a split point, and the search moves on by
// one character, as HF's regex iteration does.
void Tokenizer::Impl::EncodeNormalized(std::string_view text, Scratch& s, std::vector<int32_t>* out) const {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t piece = 0, search = 0;
  while (search < text.size()) {
    // pcre2_jit_match skips pcre2_match's per-call checks: measurable at one call per pre-token.
    const int rc = split_jit
                       ? pcre2_jit_match(split.get(), subject, text.size(), search, 0, s.match.get(), nullptr)
                       : pcre2_match(split.get(), subject, text.size(), search, 0, s.match.get(), nullptr);
    // Beyond "no match", pcre2 fails only on resource limits; the rest of the span then stays
    // one pre-token, which BPE still encodes losslessly.
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.match.get());
    const size_t begin = ov[0], end = ov[1];
    if (begin > piece) EncodeWord(text.substr(piece, begin - piece), s, out);
    if (end > begin) {
      EncodeWord(text.substr(begin, end - begin), s, out);
      search = end;
    } else {
      size_t len;
      CodePointAt(text, begin, &len);
      search = begin + len;
    }
    piece = end;
  }
  if (piece < text.size()) EncodeWord(text.substr(piece), s, out);
}

void Tokenizer::Impl::EncodeWord(std::string_view word, Scratch& s, std::vector<int32_t>* out) const {
  if (word.size() == 1) {
    out->push_back(byte_ids[Bytes(word)[0]]);
    return;
  }
  // Longer pre-tokens are rare and seldom repeat; caching them would only churn the cache.
  if (!cache || word.size() > PreTokenCache::kMaxKeyBytes) {
    Bpe(word, s, out);
    return;
  }
  const uint64_t hash = StringHash{}(word);
  if (cache->Lookup(word, hash, out)) return;
  s.word_ids.clear();
  Bpe(word, s, &s.word_ids);
  cache->Insert(word, hash, s.word_ids);
  out->insert(out->end(), s.word_ids.begin(), s.word_ids.end());
}

// Rank-ordered BPE over a linked list of symbols (one per byte to start with) and a heap of
// candidate merges: O(n log n) in the word length.
void Tokenizer::Impl::Bpe(std::string_view word, Scratch& s, std::vector<int32_t>* out) const {
  if (ignore_merges) {
    s.spelling.clear();
    for (unsigned char c : word) s.spelling += byte_symbols[c];
    if (auto it = vocab.find(s.spelling); it != vocab.end()) {
      out->push_back(it->second);
      return;
    }
  }
  const auto n = static_cast<int32_t>(word.size());
  auto& sym = s.symbols;
  sym.resize(word.size());
  for (int32_t i = 0; i < n; ++i) {
    sym[static_cast<size_t>(i)] = {byte_ids[Bytes(word)[i]], i - 1, i + 1 < n ? i + 1 : -1};
  }
  auto& heap = s.heap;
  heap.clear();
  auto consider = [&](int32_t left) {
    const int32_t right = sym[static_cast<size_t>(left)].next;
    if (right < 0) return;
    const int32_t a = sym[static_cast<size_t>(left)].id, b = sym[static_cast<size_t>(right)].id;
    if (const Merge* m = merges.Get(a, b)) {
      heap.push_back({m->rank, left, right, a, b, m->merged});
      std::push_heap(heap.begin(), heap.end(), LaterCandidate);
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), LaterCandidate);
    const Scratch::Candidate c = heap.back();
    heap.pop_back();
    Scratch::Symbol& left = sym[static_cast<size_t>(c.left)];
    Scratch::Symbol& right = sym[static_cast<size_t>(c.right)];
    if (left.id != c.left_id || left.next != c.right || right.id != c.right_id) continue;
    left.id = c.merged;
    left.next = right.next;
    if (right.next >= 0) sym[static_cast<size_t>(right.next)].prev = c.left;
    right.id = -1;  // dead: no valid candidate names it any more
    if (left.prev >= 0) consider(left.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0; i = sym[static_cast<size_t>(i)].next) {
    out->push_back(sym[static_cast<size_t>(i)].id);
  }
}

// ---------------------------------------------------------------------------------------------
// Loading.

namespace {

Status Bad(const std::string& what) { return Status::Corruption(what); }
Status Unsupported(const std::string& what) { return Status::InvalidArgument(what + " (unsupported)"); }

// Reads an optional boolean field (default when absent or null).
Result<bool> OptionalBool(const json& obj, const char* key, bool dflt, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) return Bad(where + "." + key + ": expected a boolean");
  return it->get<bool>();
}

// "type" of a component object, or an error naming where.
Result<std::string> TypeOf(const json& obj, const std::string& where) {
  if (!obj.is_object()) return Bad(where + ": expected an object");
  auto it = obj.find("type");
  if (it == obj.end() || !it->is_string()) return Bad(where + ": missing \"type\"");
  return it->get<std::string>();
}

Result<bool> ParseNormalizer(const json& doc, TokenizerOptions::Normalizer choice) {
  if (choice != TokenizerOptions::Normalizer::kFromFile) {
    return choice == TokenizerOptions::Normalizer::kNfc;
  }
  auto it = doc.find("normalizer");
  if (it == doc.end() || it->is_null()) return false;
  S0_ASSIGN_OR_RETURN(std::string type, TypeOf(*it, "normalizer"));
  if (type != "NFC") return Unsupported("normalizer: type \"" + type + "\"; supported: null, NFC");
  return true;
}

struct SplitPattern {
  std::string text;
  bool literal = false;
};

// Sequence[Split(pattern, Isolated), ByteLevel(add_prefix_space=false, use_regex=false)].
Result<SplitPattern> ParsePreTokenizer(const json& doc) {
  const std::string where = "pre_tokenizer";
  auto it = doc.find("pre_tokenizer");
  if (it == doc.end() || it->is_null())
    return Unsupported(where + ": missing; expected Sequence[Split, ByteLevel]");
  S0_ASSIGN_OR_RETURN(std::string type, TypeOf(*it, where));
  auto steps = it->find("pretokenizers");
  if (type != "Sequence" || steps == it->end() || !steps->is_array() || steps->size() != 2) {
    return Unsupported(where + ": expected Sequence[Split, ByteLevel]");
  }
  const json& split = (*steps)[0];
  const json& byte_level = (*steps)[1];
  S0_ASSIGN_OR_RETURN(std::string split_type, TypeOf(split, where + ".pretokenizers[0]"));
  S0_ASSIGN_OR_RETURN(std::string bl_type, TypeOf(byte_level, where + ".pretokenizers[1]"));
  if (split_type != "Split" || bl_type != "ByteLevel") {
    return Unsupported(where + ": expected Sequence[Split, ByteLevel], got Sequence[" + split_type + ", " +
                       bl_type + "]");
  }
  const std::string sw = where + ".pretokenizers[0]";
  auto behavior = split.find("behavior");
  if (behavior == split.end() || !behavior->is_string() || *behavior != "Isolated") {
    return Unsupported(sw + ".behavior: only \"Isolated\"");
  }
  S0_ASSIGN_OR_RETURN(bool invert, OptionalBool(split, "invert", false, sw));
  if (invert) return Unsupported(sw + ".invert: true");
  SplitPattern pattern;
  auto pat = split.find("pattern");
  if (pat != split.end() && pat->is_object() && pat->contains("Regex") && (*pat)["Regex"].is_string()) {
    pattern.text = (*pat)["Regex"].get<std::string>();
  } else if (pat != split.end() && pat->is_object() && pat->contains("String") &&
             (*pat)["String"].is_string()) {
    pattern.text = (*pat)["String"].get<std::string>();
    pattern.literal = true;
  } else {
    return Bad(sw + ".pattern: expected {\"Regex\": string} or {\"String\": string}");
  }
  // HF's ByteLevel defaults are add_prefix_space=true and use_regex=true.
  const std::string bw = where + ".pretokenizers[1]";
  S0_ASSIGN_OR_RETURN(bool prefix_space, OptionalBool(byte_level, "add_prefix_space", true, bw));
  S0_ASSIGN_OR_RETURN(bool use_regex, OptionalBool(byte_level, "use_regex", true, bw));
  if (prefix_space || use_regex) return Unsupported(bw + ": add_prefix_space and use_regex must be false");
  return pattern;
}

Result<Regex> CompileSplit(const SplitPattern& pattern) {
  // A pattern is matched against UTF-8 that may be ill-formed: PCRE2_MATCH_INVALID_UTF makes
  // ill-formed bytes unmatchable instead of an error, so they end up in gaps (their own pieces).
  const uint32_t flags = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (pattern.literal ? PCRE2_LITERAL : PCRE2_UCP);
  int err = 0;
  PCRE2_SIZE offset = 0;
  Regex re(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.text.data()), pattern.text.size(), flags, &err,
                         &offset, nullptr));
  if (!re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return Status::InvalidArgument("split pattern: " + std::string(reinterpret_cast<char*>(msg)) +
                                   " at offset " + std::to_string(offset));
  }
  return re;
}

Status CheckDecoder(const json& doc) {
  auto it = doc.find("decoder");
  if (it == doc.end() || it->is_null()) return Unsupported("decoder: missing; expected ByteLevel");
  S0_ASSIGN_OR_RETURN(std::string type, TypeOf(*it, "decoder"));
  if (type != "ByteLevel") return Unsupported("decoder: type \"" + type + "\"; expected ByteLevel");
  return Status::Ok();
}

// The model's options other than vocab and merges; returns ignore_merges.
Result<bool> CheckModelOptions(const json& model) {
  auto type = model.find("type");
  if (type != model.end() && (!type->is_string() || *type != "BPE")) {
    return Unsupported("model.type: " + type->dump() + "; expected \"BPE\"");
  }
  auto dropout = model.find("dropout");
  if (dropout != model.end() && !dropout->is_null()) return Unsupported("model.dropout: " + dropout->dump());
  S0_ASSIGN_OR_RETURN(bool byte_fallback, OptionalBool(model, "byte_fallback", false, "model"));
  if (byte_fallback) return Unsupported("model.byte_fallback: true");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = model.find(key);
    if (it != model.end() && !it->is_null() && *it != "") {
      return Unsupported(std::string("model.") + key + ": " + it->dump());
    }
  }
  return OptionalBool(model, "ignore_merges", false, "model");
}

// The two token strings of one merge rule ("a b" or ["a", "b"]), viewing into rule; false when
// it is neither.
bool ParseMergeRule(const json& rule, std::string_view* a, std::string_view* b) {
  if (rule.is_string()) {
    const std::string_view s = rule.get_ref<const std::string&>();
    const size_t space = s.find(' ');
    if (space == std::string_view::npos || s.find(' ', space + 1) != std::string_view::npos) return false;
    *a = s.substr(0, space);
    *b = s.substr(space + 1);
    return true;
  }
  if (rule.is_array() && rule.size() == 2 && rule[0].is_string() && rule[1].is_string()) {
    *a = rule[0].get_ref<const std::string&>();
    *b = rule[1].get_ref<const std::string&>();
    return true;
  }
  return false;
}

Result<std::vector<AddedToken>> ParseAddedTokens(const json& doc) {
  std::vector<AddedToken> tokens;
  auto it = doc.find("added_tokens");
  if (it == doc.end() || it->is_null()) return tokens;
  if (!it->is_array()) return Bad("added_tokens: expected an array");
  for (size_t i = 0; i < it->size(); ++i) {
    const json& t = (*it)[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    if (!t.is_object()) return Bad(where + ": expected an object");
    AddedToken tok;
    auto id = t.find("id");
    auto content = t.find("content");
    if (id == t.end() || !id->is_number_integer() || id->get<int64_t>() < 0 ||
        id->get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return Bad(where + ".id: expected a non-negative 32-bit integer");
    }
    if (content == t.end() || !content->is_string() || content->get_ref<const std::string&>().empty()) {
      return Bad(where + ".content: expected a non-empty string");
    }
    tok.id = static_cast<int32_t>(id->get<int64_t>());
    tok.content = content->get<std::string>();
    S0_ASSIGN_OR_RETURN(tok.special, OptionalBool(t, "special", false, where));
    S0_ASSIGN_OR_RETURN(tok.single_word, OptionalBool(t, "single_word", false, where));
    S0_ASSIGN_OR_RETURN(tok.lstrip, OptionalBool(t, "lstrip", false, where));
    S0_ASSIGN_OR_RETURN(tok.rstrip, OptionalBool(t, "rstrip", false, where));
    // HF's default: special tokens match the raw text, others the normalised text.
    S0_ASSIGN_OR_RETURN(tok.normalized, OptionalBool(t, "normalized", !tok.special, where));
    tokens.push_back(std::move(tok));
  }
  return tokens;
}

}  // namespace

Status Tokenizer::Impl::BuildVocab(const json& model, int32_t* max_id) {
  auto v = model.find("vocab");
  if (v == model.end() || !v->is_object()) return Bad("model.vocab: missing or not an object");
  vocab.reserve(v->size());
  for (auto it = v->begin(); it != v->end(); ++it) {
    const json& id = it.value();
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return Bad("model.vocab[" + json(it.key()).dump() + "]: expected a non-negative 32-bit id");
    }
    vocab.emplace(it.key(), static_cast<int32_t>(id.get<int64_t>()));
    *max_id = std::max(*max_id, static_cast<int32_t>(id.get<int64_t>()));
  }
  std::vector<const std::string*> owner(static_cast<size_t>(*max_id) + 1, nullptr);
  for (const auto& [token, id] : vocab) {
    const std::string*& o = owner[static_cast<size_t>(id)];
    if (o != nullptr) {
      return Bad("model.vocab: id " + std::to_string(id) + " is given to both " + json(*o).dump() + " and " +
                 json(token).dump());
    }
    o = &token;
  }
  const std::array<uint32_t, 256> cps = ByteLevelCodePoints();
  for (size_t b = 0; b < 256; ++b) {
    AppendUtf8(cps[b], &byte_symbols[b]);
    auto it = vocab.find(byte_symbols[b]);
    if (it == vocab.end()) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "0x%02zx", b);
      return Bad("model.vocab: no entry for the byte-level symbol " + json(byte_symbols[b]).dump() +
                 " (byte " + hex + "); not a byte-level BPE vocab");
    }
    byte_ids[b] = it->second;
  }
  return Status::Ok();
}

Status Tokenizer::Impl::BuildMerges(const json& model) {
  auto m = model.find("merges");
  if (m == model.end() || !m->is_array()) return Bad("model.merges: missing or not an array");
  if (m->size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    return Bad("model.merges: too many");
  merges.Reserve(m->size());
  std::string_view a, b;
  std::string ab;
  for (size_t rank = 0; rank < m->size(); ++rank) {
    auto where = [&] { return "model.merges[" + std::to_string(rank) + "]"; };
    const json& rule = (*m)[rank];
    if (!ParseMergeRule(rule, &a, &b)) {
      return Bad(where() + ": expected \"a b\" or [\"a\", \"b\"], got " + rule.dump());
    }
    ab.assign(a).append(b);
    auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(ab);
    if (ia == vocab.end()) return Bad(where() + ": " + json(a).dump() + " is not in the vocab");
    if (ib == vocab.end()) return Bad(where() + ": " + json(b).dump() + " is not in the vocab");
    if (iab == vocab.end())
      return Bad(where() + ": the merged token " + json(ab).dump() + " is not in the vocab");
    merges.Put(ia->second, ib->second, Merge{static_cast<int32_t>(rank), iab->second});
  }
  return Status::Ok();
}

// HF ignores the ids written in added_tokens: a token already in the vocab keeps its vocab id,
// and each new one takes the next id after the vocab (after the largest added id so far). A file
// whose ids disagree would make us differ from HF, so it is rejected rather than renumbered.
Status Tokenizer::Impl::BuildAdded(const std::vector<AddedToken>& tokens, int32_t* max_id) {
  std::vector<uint8_t> in_vocab(static_cast<size_t>(*max_id) + 1, 0);
  for (const auto& [token, id] : vocab) in_vocab[static_cast<size_t>(id)] = 1;
  const auto vocab_entries = static_cast<int64_t>(vocab.size());
  int64_t max_added = -1;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const AddedToken& t = tokens[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    if (auto [it, fresh] = added_ids.emplace(t.content, t.id); !fresh) {
      return Bad(where + ": content " + json(t.content).dump() + " is listed twice");
    }
    if (auto v = vocab.find(t.content); v != vocab.end()) {
      if (v->second != t.id) {
        return Bad(where + ": " + json(t.content).dump() + " has id " + std::to_string(t.id) +
                   " but the vocab gives it " + std::to_string(v->second));
      }
    } else {
      const int64_t expected = max_added >= vocab_entries ? max_added + 1 : vocab_entries;
      if (t.id != expected) {
        return Bad(where + ": id " + std::to_string(t.id) + " where Hugging Face tokenizers assigns " +
                   std::to_string(expected) + " (new added tokens take the ids after the vocab, in order)");
      }
      if (static_cast<size_t>(t.id) < in_vocab.size() && in_vocab[static_cast<size_t>(t.id)]) {
        return Bad(where + ": id " + std::to_string(t.id) + " is already a vocab token's");
      }
    }
    max_added = std::max<int64_t>(max_added, t.id);
    *max_id = std::max(*max_id, t.id);
    if (t.normalized) {
      normalized_added.Add(nfc && MayNeedNfc(t.content) ? Nfc(t.content) : t.content, t);
    } else {
      raw_added.Add(t.content, t);
    }
  }
  return Status::Ok();
}

void Tokenizer::Impl::BuildIdTable(const std::vector<AddedToken>& tokens, int32_t max_id) {
  const auto size = static_cast<size_t>(max_id) + 1;
  id_bytes.assign(size, std::string());
  id_known.assign(size, 0);
  std::array<int16_t, 512> byte_of;
  byte_of.fill(-1);
  const std::array<uint32_t, 256> cps = ByteLevelCodePoints();
  for (size_t b = 0; b < 256; ++b) byte_of[cps[b]] = static_cast<int16_t>(b);
  for (const auto& [token, id] : vocab) {
    id_bytes[static_cast<size_t>(id)] = ByteLevelDecode(token, byte_of);
    id_known[static_cast<size_t>(id)] = 1;
  }
  for (const AddedToken& t : tokens) {
    id_bytes[static_cast<size_t>(t.id)] = t.content;
    id_known[static_cast<size_t>(t.id)] = 1;
  }
}

Status Tokenizer::Impl::Build(const json& doc, const TokenizerOptions& opts) {
  if (!doc.is_object()) return Bad("expected a JSON object at the top level");
  S0_ASSIGN_OR_RETURN(nfc, ParseNormalizer(doc, opts.normalizer));
  S0_ASSIGN_OR_RETURN(SplitPattern pattern, ParsePreTokenizer(doc));
  if (opts.split_regex) pattern = SplitPattern{*opts.split_regex, false};
  S0_ASSIGN_OR_RETURN(split, CompileSplit(pattern));
  // JIT is only a speed-up: where it is unavailable pcre2_match interprets, with equal results.
  split_jit = pcre2_jit_compile(split.get(), PCRE2_JIT_COMPLETE) == 0;
  S0_RETURN_IF_ERROR(CheckDecoder(doc));
  auto model = doc.find("model");
  if (model == doc.end() || !model->is_object()) return Bad("model: missing or not an object");
  S0_ASSIGN_OR_RETURN(ignore_merges, CheckModelOptions(*model));
  int32_t max_id = -1;
  S0_RETURN_IF_ERROR(BuildVocab(*model, &max_id));
  S0_RETURN_IF_ERROR(BuildMerges(*model));
  S0_ASSIGN_OR_RETURN(std::vector<AddedToken> added, ParseAddedTokens(doc));
  S0_RETURN_IF_ERROR(BuildAdded(added, &max_id));
  if (max_id == std::numeric_limits<int32_t>::max()) return Bad("ids must stay below 2^31 - 1");
  BuildIdTable(added, max_id);
  if (opts.cache_capacity > 0) cache = std::make_unique<PreTokenCache>(opts.cache_capacity);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<Tokenizer> Tokenizer::Load(const std::string& path_or_dir, TokenizerOptions opts) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const std::string path =
      fs::is_directory(path_or_dir, ec) ? (fs::path(path_or_dir) / "tokenizer.json").string() : path_or_dir;
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound(path + ": cannot open tokenizer file");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return Status::IOError(path + ": read failed");
  auto impl = std::make_unique<Impl>();
  try {
    const json doc = json::parse(text);
    text.clear();
    text.shrink_to_fit();
    S0_RETURN_IF_ERROR(impl->Build(doc, opts).Context(path));
  } catch (const json::exception& e) {
    return Status::Corruption(path + ": " + e.what());
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  Scratch s;
  s.match.reset(pcre2_match_data_create_from_pattern(impl_->split.get(), nullptr));
  S0_CHECK_MSG(s.match != nullptr, "out of memory creating PCRE2 match data");
  auto text_span = [&](std::string_view span, int32_t id) {
    if (id >= 0) {
      out.push_back(id);
    } else {
      impl_->EncodeText(span, s, &out);
    }
  };
  if (impl_->raw_added.empty()) {
    if (!text.empty()) text_span(text, -1);
  } else {
    impl_->raw_added.Split(text, text_span);
  }
  return out;
}

Result<std::string> Tokenizer::Decode(std::span<const int32_t> ids) const {
  size_t bytes = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size() || !impl_->id_known[static_cast<size_t>(id)]) {
      return Status::InvalidArgument("decode: id " + std::to_string(id) + " at position " +
                                     std::to_string(i) + " has no token (vocab size " +
                                     std::to_string(vocab_size()) + ")");
    }
    bytes += impl_->id_bytes[static_cast<size_t>(id)].size();
  }
  std::string out;
  out.reserve(bytes);
  for (int32_t id : ids) out += impl_->id_bytes[static_cast<size_t>(id)];
  return out;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (auto it = impl_->added_ids.find(token); it != impl_->added_ids.end()) return it->second;
  if (auto it = impl_->vocab.find(token); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_bytes.size()); }

void Tokenizer::ClearCache() const {
  if (impl_->cache) impl_->cache->Clear();
}

}  // namespace s0
