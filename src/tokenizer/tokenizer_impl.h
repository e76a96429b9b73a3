// Internals of Tokenizer shared by its loaders (tokenizer_load.cpp) and the encoder (tokenizer.cpp).
#pragma once
#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace fm {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// Token ids by their bytes, for strings held elsewhere (`strings[id]`): open addressing over ids, each
// slot tagged with the upper hash bits so that a probe rarely compares strings. `strings` must stay
// where it is (a vector's data() survives the vector being moved).
class TokenIndex {
 public:
  void build(const std::string* strings, size_t n, const std::vector<bool>* include = nullptr);
  int32_t find(std::string_view s) const {  // -1 when absent
    if (slots_.empty()) return -1;
    const uint64_t h = std::hash<std::string_view>{}(s);
    const uint32_t tag = uint32_t(h >> 32);
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
      const uint64_t v = slots_[i];
      if (v == kEmpty) return -1;
      if (uint32_t(v >> 32) == tag && strings_[uint32_t(v)] == s) return int32_t(uint32_t(v));
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  const std::string* strings_ = nullptr;
  std::vector<uint64_t> slots_;
  uint64_t mask_ = 0;
};

// (left id, right id) -> (rank, merged id), open addressing with linear probing.
class MergeTable {
 public:
  void reserve(size_t n);
  void insert(int32_t left, int32_t right, uint32_t rank, int32_t merged);  // a repeated pair: the later wins
  // Returns false when the pair does not merge.
  bool find(int32_t left, int32_t right, uint32_t* rank, int32_t* merged) const {
    if (keys_.empty()) return false;
    const uint64_t key = pack(left, right);
    for (uint64_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) {
        *rank = uint32_t(values_[i] >> 32);
        *merged = int32_t(uint32_t(values_[i]));
        return true;
      }
      if (keys_[i] == kEmpty) return false;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t pack(int32_t l, int32_t r) { return (uint64_t(uint32_t(l)) << 32) | uint32_t(r); }
  uint64_t slot(uint64_t key) const { return ((key * 0x9E3779B97F4A7C15ull) >> 17) & mask_; }
  std::vector<uint64_t> keys_, values_;
  uint64_t mask_ = 0;
  size_t size_ = 0;
};

struct Tokenizer::WordCache {
  static constexpr size_t kMaxWords = 1 << 16;     // cleared when full
  static constexpr size_t kMaxWordBytes = 256;     // longer words are not kept (as in HF tokenizers)
  StringMap<std::pair<uint32_t, uint32_t>> words;  // word -> [offset, offset + count) in ids
  std::vector<int32_t> ids;
};

struct Tokenizer::Tables {
  TokenIndex vocab;                  // BPE tokens by their bytes
  StringMap<int32_t> added_by_text;  // added tokens by their text
  std::array<int32_t, 256> byte_id;  // the token of each single byte, -1 where there is none
  MergeTable merges;
  // Added tokens by first byte, longest first, as indices into Tokenizer::added_: matched in the raw
  // text, and in the normalised text.
  std::array<std::vector<uint32_t>, 256> raw_by_first, normalized_by_first;
  bool any_raw = false, any_normalized = false;
  std::mutex cache_mutex;  // an encode() that finds it taken works without the cache
  WordCache cache;
};

// Assembles a Tokenizer: tokens, added tokens, merges, pattern; finish() builds the tables and checks
// that they fit together, naming `source` in errors.
class TokenizerBuilder {
 public:
  explicit TokenizerBuilder(std::string source);
  // A BPE token. `bytes` is its raw bytes; `in_vocab` false for a token that BPE can never produce
  // (its tokenizer.json spelling is outside the byte-level alphabet).
  void set_token(int32_t id, std::string bytes, TokenType type, bool in_vocab = true);
  void add_added(AddedToken token);
  void add_merge(int32_t left, int32_t right) { t_.merges_.emplace_back(left, right); }
  void set_pattern(std::string_view pattern, const std::string& where);
  Tokenizer& tokenizer() { return t_; }
  Tokenizer finish();

 private:
  void set_size(int32_t id);
  Tokenizer t_;
  std::vector<bool> in_vocab_;
};

// Bytes that HF's ByteLevel decoder gives for an added token's text: the bytes it spells in the
// byte-level alphabet when all its characters are in it, else its UTF-8 as is.
std::string added_token_bytes(std::string_view content);

}  // namespace fm
