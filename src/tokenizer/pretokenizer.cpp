#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>

#include "util/error.h"

namespace fm {

namespace {

struct PreName {
  std::string_view name, pattern;
};
// The names llama.cpp (src/llama-vocab.cpp) maps to these patterns; the first of each is what we write.
constexpr PreName kPreNames[] = {
    {"qwen35", kQwen35Pattern},   {"qwen2", kQwen2Pattern}, {"deepseek-r1-qwen", kQwen2Pattern},
    {"stablelm2", kQwen2Pattern}, {"gpt-2", kGpt2Pattern},
};

pcre2_code* code_of(void* p) { return static_cast<pcre2_code*>(p); }

std::string pcre2_message(int error) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(error, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

std::optional<std::string_view> pre_name_for_pattern(std::string_view pattern) {
  for (const PreName& p : kPreNames)
    if (p.pattern == pattern) return p.name;
  return std::nullopt;
}

std::optional<std::string_view> pattern_for_pre_name(std::string_view pre) {
  for (const PreName& p : kPreNames)
    if (p.name == pre) return p.pattern;
  return std::nullopt;
}

SplitRegex::SplitRegex(std::string_view pattern, const std::string& where) : pattern_(pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern_.data()), pattern_.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (!code)
    fail("{}: pre-tokenizer regex does not compile at offset {}: {}", where, offset, pcre2_message(error));
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

SplitRegex::~SplitRegex() { pcre2_code_free(code_of(code_)); }

SplitRegex::Matcher::Matcher(const SplitRegex& re, std::string_view text)
    : re_(re), text_(text), match_data_(pcre2_match_data_create_from_pattern(code_of(re.code_), nullptr)) {
  if (!match_data_) throw std::bad_alloc();
}

SplitRegex::Matcher::~Matcher() { pcre2_match_data_free(static_cast<pcre2_match_data*>(match_data_)); }

bool SplitRegex::Matcher::next(size_t from, size_t* start, size_t* end) {
  auto* md = static_cast<pcre2_match_data*>(match_data_);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text_.data());
  int rc = PCRE2_ERROR_JIT_BADOPTION;
  if (re_.jit_) rc = pcre2_jit_match(code_of(re_.code_), subject, text_.size(), from, 0, md, nullptr);
  // No JIT, or its default 32 KiB stack ran out on some long input: the interpreter keeps its
  // backtracking state on the heap.
  if (rc == PCRE2_ERROR_JIT_BADOPTION || rc == PCRE2_ERROR_JIT_STACKLIMIT)
    rc = pcre2_match(code_of(re_.code_), subject, text_.size(), from, PCRE2_NO_UTF_CHECK, md, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) fail("pre-tokenizer regex failed on a text of {} bytes: {}", text_.size(), pcre2_message(rc));
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
  *start = ov[0];
  *end = ov[1];
  return true;
}

std::string_view nfc_normalize(std::string_view text, std::string& storage) {
  // Every code point from U+0300 up has a lead byte of 0xCC or more; below it, NFC changes nothing
  // (no character there decomposes, and none composes with a following one below U+0300).
  bool maybe = false;
  for (char c : text)
    if (uint8_t(c) >= 0xCC) {
      maybe = true;
      break;
    }
  if (!maybe) return text;
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), utf8proc_ssize_t(text.size()),
                   &out, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) fail("NFC normalisation failed: {}", utf8proc_errmsg(n));
  storage.assign(reinterpret_cast<const char*>(out), size_t(n));
  std::free(out);
  return storage;
}

}  // namespace fm
