// The text side of the tokenizer, before BPE: NFC normalisation and the pre-tokenizer regex that
// splits text into words (Hugging Face's Split pre-tokenizer with behavior "Isolated": every match is a
// word and so is every stretch between matches).
// The regex runs in PCRE2 with PCRE2_UTF | PCRE2_UCP, so \s, \p{L}, \p{N}, \p{M} and (?i) follow
// Unicode (PCRE2's tables; Hugging Face uses Oniguruma's; the two agree except for code points that one
// Unicode version assigns and the other does not), JIT-compiled where PCRE2 has a JIT.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fm {

// The Qwen2 / Qwen2.5 / Qwen3 pattern (llama.cpp's pre-tokenizer name "qwen2").
inline constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen3.5 / Qwen3.6: marks (\p{M}) join letters ("qwen35").
inline constexpr std::string_view kQwen35Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// GPT-2's, used by the ByteLevel pre-tokenizer when its use_regex is set ("gpt-2").
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// llama.cpp's tokenizer.ggml.pre name for a pattern, and back; nullopt for patterns and names that
// flashmoe does not know.
std::optional<std::string_view> pre_name_for_pattern(std::string_view pattern);
std::optional<std::string_view> pattern_for_pre_name(std::string_view pre);

class SplitRegex {
 public:
  // Throws fm::Error naming `where` (the file and field the pattern came from) if it does not compile.
  SplitRegex(std::string_view pattern, const std::string& where);
  ~SplitRegex();
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  const std::string& pattern() const { return pattern_; }
  bool jit() const { return jit_; }

  // Calls word(std::string_view) for each word of `text` (valid UTF-8), in order: every match and every
  // non-empty stretch between matches. Empty matches produce no word.
  template <class F>
  void split(std::string_view text, F&& word) const {
    Matcher m(*this, text);
    size_t pos = 0, from = 0;  // the next word starts at pos; the next match is searched from `from`
    size_t start = 0, end = 0;
    while (from < text.size() && m.next(from, &start, &end)) {
      if (end == start) {  // an empty match makes no word: search again one character later
        from = start + 1;
        while (from < text.size() && (uint8_t(text[from]) & 0xC0) == 0x80) ++from;
        continue;
      }
      if (start > pos) word(text.substr(pos, start - pos));
      word(text.substr(start, end - start));
      pos = from = end;
    }
    if (pos < text.size()) word(text.substr(pos));
  }

 private:
  // One match at a time over one text; owns the PCRE2 match data.
  class Matcher {
   public:
    Matcher(const SplitRegex& re, std::string_view text);
    ~Matcher();
    Matcher(const Matcher&) = delete;
    Matcher& operator=(const Matcher&) = delete;
    bool next(size_t from, size_t* start, size_t* end);

   private:
    const SplitRegex& re_;
    std::string_view text_;
    void* match_data_;
  };

  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8
  bool jit_ = false;
};

// Text with code points that NFC could change is normalised to NFC (utf8proc); other text, such as
// any text of code points below U+0300, is returned as is, without a copy. `text` is valid UTF-8.
std::string_view nfc_normalize(std::string_view text, std::string& storage);

}  // namespace fm
