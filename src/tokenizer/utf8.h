// UTF-8 helpers for the tokenizer: validation, lossy repair and the GPT-2 byte-level alphabet.
// Lossy repair follows the Unicode "substitution of maximal subparts" practice (Unicode 15, section
// 3.9, U+FFFD substitution), which Rust's String::from_utf8_lossy (what Hugging Face tokenizers uses
// to decode) and Python's bytes.decode("utf-8", "replace") both implement.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace fm::utf8 {

// Length of the well-formed sequence starting at s[i], or 0 where it is ill-formed or cut short;
// `*valid_prefix` (when given) receives how many bytes from s[i] form a valid but possibly incomplete
// start of a sequence (at least 1: the lead byte itself when ill-formed).
size_t sequence_length(std::string_view s, size_t i, size_t* valid_prefix = nullptr);

bool is_valid(std::string_view s);

// `s` with every ill-formed subpart replaced by U+FFFD (EF BF BD).
std::string lossy(std::string_view s);
void append_lossy(std::string& out, std::string_view s);

// How many bytes at the end of `s` form the valid start of a sequence that more bytes could complete
// (0 to 3): what a streaming decoder must hold back.
size_t incomplete_tail(std::string_view s);

// Appends code point `cp` encoded as UTF-8.
void append_code_point(std::string& out, uint32_t cp);

// GPT-2's byte-level alphabet: each byte is shown as one printable code point (printable Latin-1
// bytes as themselves, the others as U+0100 + n), so that byte strings can live in a JSON vocabulary.
const std::array<uint32_t, 256>& byte_to_code_point();
// The byte a code point of that alphabet stands for; nullopt for any other code point.
std::optional<uint8_t> code_point_to_byte(uint32_t cp);

// "Ġhello" -> " hello"; nullopt when some character is outside the byte-level alphabet.
std::optional<std::string> byte_level_decode(std::string_view mapped);
// " hello" -> "Ġhello"
std::string byte_level_encode(std::string_view bytes);

}  // namespace fm::utf8
