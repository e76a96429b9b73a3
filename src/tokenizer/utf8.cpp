#include "tokenizer/utf8.h"

namespace fm::utf8 {

namespace {

// Unicode Table 3-7: the second byte's range depends on the lead byte; later bytes are 80..BF.
struct LeadInfo {
  uint8_t length;  // 0: not a lead byte
  uint8_t lo, hi;  // range of the second byte
};

LeadInfo lead_info(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

}  // namespace

size_t sequence_length(std::string_view s, size_t i, size_t* valid_prefix) {
  const uint8_t b0 = uint8_t(s[i]);
  const LeadInfo info = lead_info(b0);
  size_t ok = 1;
  if (info.length > 1) {
    for (size_t k = 1; k < info.length && i + k < s.size(); ++k) {
      const uint8_t b = uint8_t(s[i + k]);
      const bool fits = k == 1 ? (b >= info.lo && b <= info.hi) : (b >= 0x80 && b <= 0xBF);
      if (!fits) break;
      ++ok;
    }
  }
  if (valid_prefix) *valid_prefix = ok;
  if (info.length == 0) return 0;
  return ok == info.length ? ok : 0;
}

bool is_valid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (uint8_t(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t n = sequence_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

void append_lossy(std::string& out, std::string_view s) {
  size_t i = 0, run = 0;  // [run, i) is well-formed and not yet copied
  while (i < s.size()) {
    if (uint8_t(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t valid = 0;
    const size_t n = sequence_length(s, i, &valid);
    if (n) {
      i += n;
      continue;
    }
    out.append(s.substr(run, i - run));
    out.append(kReplacement);
    i += valid;  // a maximal subpart: one U+FFFD for the valid start, then resume at the bad byte
    run = i;
  }
  out.append(s.substr(run));
}

std::string lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  append_lossy(out, s);
  return out;
}

size_t incomplete_tail(std::string_view s) {
  // A sequence is at most 4 bytes, so only a lead byte among the last 3 can start an incomplete one.
  const size_t first = s.size() > 3 ? s.size() - 3 : 0;
  for (size_t i = s.size(); i-- > first;) {
    const uint8_t b = uint8_t(s[i]);
    if (b >= 0x80 && b <= 0xBF) continue;  // a continuation byte: look further back
    const LeadInfo info = lead_info(b);
    if (info.length <= 1) return 0;
    size_t valid = 0;
    sequence_length(s, i, &valid);
    // Incomplete when every byte after the lead fits and there are too few of them.
    return (i + valid == s.size() && valid < info.length) ? s.size() - i : 0;
  }
  return 0;
}

void append_code_point(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

const std::array<uint32_t, 256>& byte_to_code_point() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? b : next++;
    }
    return t;
  }();
  return table;
}

std::optional<uint8_t> code_point_to_byte(uint32_t cp) {
  static const std::array<int16_t, 324> table = [] {
    std::array<int16_t, 324> t;
    t.fill(-1);
    const auto& fwd = byte_to_code_point();
    for (int b = 0; b < 256; ++b) t[fwd[size_t(b)]] = int16_t(b);
    return t;
  }();
  if (cp >= table.size() || table[cp] < 0) return std::nullopt;
  return uint8_t(table[cp]);
}

std::optional<std::string> byte_level_decode(std::string_view mapped) {
  std::string out;
  out.reserve(mapped.size());
  size_t i = 0;
  while (i < mapped.size()) {
    const uint8_t b0 = uint8_t(mapped[i]);
    uint32_t cp;
    if (b0 < 0x80) {
      cp = b0;
      i += 1;
    } else if ((b0 & 0xE0) == 0xC0 && i + 1 < mapped.size()) {
      cp = (uint32_t(b0 & 0x1F) << 6) | (uint8_t(mapped[i + 1]) & 0x3F);
      i += 2;
    } else {
      return std::nullopt;  // every code point of the alphabet is below U+0800
    }
    const std::optional<uint8_t> b = code_point_to_byte(cp);
    if (!b) return std::nullopt;
    out.push_back(char(*b));
  }
  return out;
}

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  const auto& table = byte_to_code_point();
  for (char c : bytes) append_code_point(out, table[uint8_t(c)]);
  return out;
}

}  // namespace fm::utf8
