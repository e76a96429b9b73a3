#include "tokenizer/tokenizer.h"

#include <utf8proc.h>

#include <algorithm>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"
#include "util/error.h"

namespace fm {

// ---- MergeTable ----

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap *= 2;
  keys_.assign(cap, kEmpty);
  values_.assign(cap, 0);
  mask_ = cap - 1;
  size_ = 0;
}

void MergeTable::insert(int32_t left, int32_t right, uint32_t rank, int32_t merged) {
  FM_CHECK((size_ + 1) * 2 <= keys_.size(), "MergeTable: reserve() {} slots, inserting {}", keys_.size(),
           size_ + 1);
  const uint64_t key = pack(left, right);
  uint64_t i = slot(key);
  while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
  if (keys_[i] == kEmpty) ++size_;
  keys_[i] = key;
  values_[i] = (uint64_t(rank) << 32) | uint32_t(merged);
}

// ---- TokenIndex ----

void TokenIndex::build(const std::string* strings, size_t n, const std::vector<bool>* include) {
  strings_ = strings;
  size_t cap = 16;
  while (cap < n * 2) cap *= 2;
  slots_.assign(cap, kEmpty);
  mask_ = cap - 1;
  for (size_t id = 0; id < n; ++id) {
    if (include && !(*include)[id]) continue;
    const uint64_t h = std::hash<std::string_view>{}(strings[id]);
    uint64_t i = h & mask_;
    while (slots_[i] != kEmpty) {
      const uint32_t other = uint32_t(slots_[i]);
      if (strings[other] == strings[id]) fail("tokens {} and {} have the same bytes", other, id);
      i = (i + 1) & mask_;
    }
    slots_[i] = (h & 0xFFFFFFFF00000000ull) | uint32_t(id);
  }
}

// ---- helpers ----

namespace {

// Decodes the code point at s[i] (valid UTF-8); returns its length.
size_t decode_at(std::string_view s, size_t i, uint32_t* cp) {
  const uint8_t b = uint8_t(s[i]);
  if (b < 0x80) {
    *cp = b;
    return 1;
  }
  const size_t n = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
  uint32_t v = b & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) v = (v << 6) | (uint8_t(s[i + k]) & 0x3F);
  *cp = v;
  return n;
}

// The start of the code point that ends at s[end).
size_t previous_start(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (uint8_t(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

// Unicode White_Space (Rust's char::is_whitespace, which HF uses for lstrip / rstrip).
bool is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// A letter, digit or underscore: what single_word tokens may not touch.
bool is_word_char(uint32_t c) {
  if (c == '_') return true;
  const utf8proc_category_t cat = utf8proc_category(utf8proc_int32_t(c));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

}  // namespace

std::string added_token_bytes(std::string_view content) {
  std::optional<std::string> mapped = utf8::byte_level_decode(content);
  return mapped ? std::move(*mapped) : std::string(content);
}

// ---- Tokenizer ----

Tokenizer::Tokenizer() : tables_(std::make_unique<Tables>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

const std::string& Tokenizer::pattern() const { return regex_->pattern(); }

TokenType Tokenizer::token_type(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return TokenType::Undefined;
  return types_[size_t(id)];
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    fail("token id {} is outside the vocabulary (0..{})", id, vocab_size() - 1);
  return tokens_[size_t(id)];
}

std::optional<int32_t> Tokenizer::token_id(std::string_view bytes) const {
  if (auto it = tables_->added_by_text.find(bytes); it != tables_->added_by_text.end()) return it->second;
  if (const int32_t id = tables_->vocab.find(bytes); id >= 0) return id;
  return std::nullopt;
}

std::string Tokenizer::decode_bytes(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) out.append(token_bytes(id));
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  const std::string bytes = decode_bytes(ids);
  return utf8::is_valid(bytes) ? bytes : utf8::lossy(bytes);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::string repaired;
  if (!utf8::is_valid(text)) {
    repaired = utf8::lossy(text);
    text = repaired;
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  // One encode() at a time uses the shared cache; a concurrent one works without it rather than wait.
  std::unique_lock lock(tables_->cache_mutex, std::try_to_lock);
  encode_text(text, parse_special, false, out, lock.owns_lock() ? &tables_->cache : nullptr);
  return out;
}

// Cuts the added tokens of this pass out of `text`; what lies between goes on to the next step.
void Tokenizer::encode_text(std::string_view text, bool parse_special, bool normalized_pass,
                            std::vector<int32_t>& out, WordCache* cache) const {
  const Tables& tb = *tables_;
  auto plain = [&](std::string_view piece) {
    if (piece.empty()) return;
    if (normalized_pass) return encode_words(piece, out, cache);
    std::string storage;
    const std::string_view normalized = nfc_ ? nfc_normalize(piece, storage) : piece;
    encode_text(normalized, parse_special, true, out, cache);
  };
  if (!(normalized_pass ? tb.any_normalized : tb.any_raw)) return plain(text);

  const auto& by_first = normalized_pass ? tb.normalized_by_first : tb.raw_by_first;
  size_t segment = 0, i = 0;
  while (i < text.size()) {
    const std::vector<uint32_t>& candidates = by_first[uint8_t(text[i])];
    const AddedToken* found = nullptr;
    for (uint32_t index : candidates) {
      const AddedToken& a = added_[index];
      if (a.special && !parse_special) continue;
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word) {
        uint32_t cp = 0;
        if (i > 0) decode_at(text, previous_start(text, i), &cp);
        if (i > 0 && is_word_char(cp)) continue;
        const size_t end = i + a.content.size();
        if (end < text.size() && (decode_at(text, end, &cp), is_word_char(cp))) continue;
      }
      found = &a;
      break;
    }
    if (!found) {
      ++i;
      continue;
    }
    size_t start = i, end = i + found->content.size();
    uint32_t cp = 0;
    if (found->lstrip)
      while (start > segment) {
        const size_t p = previous_start(text, start);
        decode_at(text, p, &cp);
        if (!is_white_space(cp)) break;
        start = p;
      }
    if (found->rstrip)
      while (end < text.size()) {
        const size_t n = decode_at(text, end, &cp);
        if (!is_white_space(cp)) break;
        end += n;
      }
    plain(text.substr(segment, start - segment));
    out.push_back(found->id);
    segment = i = end;
  }
  plain(text.substr(segment));
}

void Tokenizer::encode_words(std::string_view text, std::vector<int32_t>& out, WordCache* cache) const {
  const Tables& tb = *tables_;
  regex_->split(text, [&](std::string_view word) {
    if (word.size() == 1) {
      if (const int32_t id = tb.byte_id[uint8_t(word[0])]; id >= 0) out.push_back(id);
      return;
    }
    if (cache) {
      if (auto it = cache->words.find(word); it != cache->words.end()) {
        const auto [offset, count] = it->second;
        out.insert(out.end(), cache->ids.begin() + offset, cache->ids.begin() + offset + count);
        return;
      }
    }
    const size_t before = out.size();
    const int32_t whole = ignore_merges_ ? tb.vocab.find(word) : -1;
    if (whole >= 0) {
      out.push_back(whole);
    } else {
      bpe(word, out);
    }
    if (cache && word.size() <= WordCache::kMaxWordBytes) {
      if (cache->words.size() >= WordCache::kMaxWords) {
        cache->words.clear();
        cache->ids.clear();
      }
      cache->words.emplace(std::string(word),
                           std::pair{uint32_t(cache->ids.size()), uint32_t(out.size() - before)});
      cache->ids.insert(cache->ids.end(), out.begin() + ptrdiff_t(before), out.end());
    }
  });
}

// Hugging Face's BPE (tokenizers/src/models/bpe/word.rs, merge_all): a heap of candidate merges,
// lowest rank first and leftmost among equal ranks; entries made stale by an earlier merge are skipped.
void Tokenizer::bpe(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id, prev, next;
  };
  struct Candidate {
    uint32_t rank;
    int32_t pos, merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  const Tables& tb = *tables_;
  symbols.clear();
  heap.clear();
  for (char c : word) {
    const int32_t id = tb.byte_id[uint8_t(c)];
    if (id < 0) continue;  // a byte with no token is dropped, as HF drops unknown characters without unk
    const int32_t n = int32_t(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1});
  }
  const auto greater = [](const Candidate& a, const Candidate& b) { return a > b; };
  auto push = [&](int32_t pos) {
    const int32_t next = symbols[size_t(pos)].next;
    uint32_t rank;
    int32_t merged;
    if (next >= 0 && tb.merges.find(symbols[size_t(pos)].id, symbols[size_t(next)].id, &rank, &merged)) {
      heap.push_back({rank, pos, merged});
      std::push_heap(heap.begin(), heap.end(), greater);
    }
  };
  for (int32_t i = 0; i + 1 < int32_t(symbols.size()); ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), greater);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& s = symbols[size_t(top.pos)];
    if (s.id < 0 || s.next < 0) continue;  // merged away, or last
    uint32_t rank;
    int32_t merged;
    Symbol& right = symbols[size_t(s.next)];
    if (!tb.merges.find(s.id, right.id, &rank, &merged) || merged != top.merged) continue;  // stale
    s.id = merged;
    right.id = -1;
    s.next = right.next;
    if (s.next >= 0) symbols[size_t(s.next)].prev = top.pos;
    if (s.prev >= 0) push(s.prev);
    push(top.pos);
  }
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[size_t(i)].next)
    out.push_back(symbols[size_t(i)].id);
}

// ---- StreamDecoder ----

std::string StreamDecoder::push(int32_t id) {
  pending_.append(tokenizer_.token_bytes(id));
  const size_t keep = utf8::incomplete_tail(pending_);
  std::string out = utf8::lossy(std::string_view(pending_).substr(0, pending_.size() - keep));
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = utf8::lossy(pending_);
  pending_.clear();
  return out;
}

// ---- TokenizerBuilder ----

TokenizerBuilder::TokenizerBuilder(std::string source) { t_.source_ = std::move(source); }

void TokenizerBuilder::set_size(int32_t id) {
  if (id < 0 || id >= (1 << 30)) fail("{}: token id {} is out of range", t_.source_, id);
  if (size_t(id) >= t_.tokens_.size()) {
    t_.tokens_.resize(size_t(id) + 1);
    t_.types_.resize(size_t(id) + 1, TokenType::Unused);
    in_vocab_.resize(size_t(id) + 1, false);
  }
}

void TokenizerBuilder::set_token(int32_t id, std::string bytes, TokenType type, bool in_vocab) {
  set_size(id);
  t_.tokens_[size_t(id)] = std::move(bytes);
  t_.types_[size_t(id)] = type;
  in_vocab_[size_t(id)] = in_vocab && type == TokenType::Normal;
}

void TokenizerBuilder::add_added(AddedToken token) {
  if (token.content.empty()) fail("{}: added token {} has empty text", t_.source_, token.id);
  set_size(token.id);
  // An added token that is also in the BPE vocabulary stays there (merges may make it).
  if (!in_vocab_[size_t(token.id)]) t_.tokens_[size_t(token.id)] = added_token_bytes(token.content);
  t_.types_[size_t(token.id)] = token.special ? TokenType::Control : TokenType::UserDefined;
  t_.added_.push_back(std::move(token));
}

void TokenizerBuilder::set_pattern(std::string_view pattern, const std::string& where) {
  t_.regex_ = std::make_unique<SplitRegex>(pattern, where);
}

Tokenizer TokenizerBuilder::finish() {
  FM_CHECK(t_.regex_ != nullptr, "{}: tokenizer built without a pattern", t_.source_);
  if (t_.tokens_.empty()) fail("{}: the vocabulary is empty", t_.source_);
  Tokenizer::Tables& tb = *t_.tables_;
  tb.byte_id.fill(-1);
  for (size_t id = 0; id < t_.tokens_.size(); ++id) {
    if (!in_vocab_[id]) continue;  // added tokens that are also BPE tokens stay in
    if (t_.tokens_[id].empty()) fail("{}: token {} is empty", t_.source_, id);
    if (t_.tokens_[id].size() == 1) tb.byte_id[uint8_t(t_.tokens_[id][0])] = int32_t(id);
  }
  try {
    tb.vocab.build(t_.tokens_.data(), t_.tokens_.size(), &in_vocab_);
  } catch (const Error& e) {
    fail("{}: {}", t_.source_, e.what());
  }
  tb.merges.reserve(t_.merges_.size());
  std::string joined;
  for (size_t rank = 0; rank < t_.merges_.size(); ++rank) {
    const auto [left, right] = t_.merges_[rank];
    joined.assign(t_.tokens_[size_t(left)]);
    joined.append(t_.tokens_[size_t(right)]);
    const int32_t merged = tb.vocab.find(joined);
    if (merged < 0)
      fail("{}: merge {} ('{}' '{}') makes '{}', which is not in the vocabulary", t_.source_, rank,
           utf8::byte_level_encode(t_.tokens_[size_t(left)]),
           utf8::byte_level_encode(t_.tokens_[size_t(right)]), utf8::byte_level_encode(joined));
    tb.merges.insert(left, right, uint32_t(rank), merged);
  }
  for (uint32_t i = 0; i < t_.added_.size(); ++i) {
    const AddedToken& a = t_.added_[i];
    tb.added_by_text.emplace(a.content, a.id);
    auto& table = a.normalized ? tb.normalized_by_first : tb.raw_by_first;
    table[uint8_t(a.content[0])].push_back(i);
    (a.normalized ? tb.any_normalized : tb.any_raw) = true;
  }
  for (auto* table : {&tb.raw_by_first, &tb.normalized_by_first})
    for (auto& list : *table)
      std::stable_sort(list.begin(), list.end(), [&](uint32_t a, uint32_t b) {
        return t_.added_[a].content.size() > t_.added_[b].content.size();
      });

  // End of generation: the declared ids and the specials llama.cpp recognises by name.
  static constexpr std::string_view kEogNames[] = {
      "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end_of_text|>", "<EOT>"};
  for (const AddedToken& a : t_.added_)
    if (a.special && std::find(std::begin(kEogNames), std::end(kEogNames), a.content) != std::end(kEogNames))
      t_.eos_ids_.push_back(a.id);
  if (t_.eos_id_) t_.eos_ids_.push_back(*t_.eos_id_);
  for (int32_t id : t_.eos_ids_)
    if (id < 0 || id >= t_.vocab_size())
      fail("{}: end-of-sequence id {} is outside the vocabulary", t_.source_, id);
  std::sort(t_.eos_ids_.begin(), t_.eos_ids_.end());
  t_.eos_ids_.erase(std::unique(t_.eos_ids_.begin(), t_.eos_ids_.end()), t_.eos_ids_.end());
  for (const auto& id : {t_.bos_id_, t_.pad_id_})
    if (id && (*id < 0 || *id >= t_.vocab_size()))
      fail("{}: special token id {} is outside the vocabulary", t_.source_, *id);
  return std::move(t_);
}

}  // namespace fm
