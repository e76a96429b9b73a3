// Byte-level BPE tokenizer (GPT-2 style, as Qwen2/Qwen3/Qwen3.5 use), equal to Hugging Face
// tokenizers on the same tokenizer.json. encode() runs, in order:
//   1. invalid UTF-8 in the input is replaced by U+FFFD, one per maximal ill-formed subpart (what
//      Python's bytes.decode("utf-8", "replace") gives the tokenizer to encode);
//   2. added tokens (special or not; specials only when parse_special) are cut out of the raw text,
//      leftmost first and the longest at a position (lstrip / rstrip / single_word honoured);
//   3. the rest is NFC-normalised when the tokenizer asks for it, then added tokens marked
//      "normalized" are cut out of that;
//   4. the pre-tokenizer regex splits it into words (tokenizer/pretokenizer.h);
//   5. each word's bytes go through BPE: merges applied lowest rank first (leftmost among equals),
//      or, with ignore_merges, a word that is itself in the vocabulary becomes that one token.
// Words seen before come from a cache. Tokens are held as raw bytes; the byte-level alphabet
// (Ġ for a space, ...) is only the spelling of tokenizer.json and GGUF vocabularies.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fm {

class GgufFile;
class SplitRegex;

// llama.cpp's llama_token_type, as GGUF's tokenizer.ggml.token_type stores it.
enum class TokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6
};

// A token matched in the text before pre-tokenization (tokenizer.json "added_tokens"; GGUF CONTROL and
// USER_DEFINED tokens).
struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;      // a control token: matched only when parse_special
  bool lstrip = false;       // the match takes the whitespace before it
  bool rstrip = false;       // ... and after it
  bool single_word = false;  // not matched inside a word
  bool normalized = false;   // matched in the normalised text rather than the raw one
};

// Tiktoken rank files hold only the mergeable tokens; the rest comes from the model's code.
struct TiktokenSpec {
  std::string pattern;                                          // the pre-tokenizer regex
  std::vector<std::pair<int32_t, std::string>> special_tokens;  // (id, text)
  bool nfc = false;
};

class Tokenizer {
 public:
  // A folder holding tokenizer.json (plus, where present, tokenizer_config.json, config.json and
  // generation_config.json for the special token ids and the chat template), a tokenizer.json file, or a
  // .gguf file's tokenizer.ggml.* metadata. Throws fm::Error naming the file and field at fault.
  static Tokenizer load(const std::filesystem::path& model_path);
  static Tokenizer from_tokenizer_json(const std::filesystem::path& file);
  static Tokenizer from_gguf(const GgufFile& gguf);
  // A tiktoken rank file ("base64-token rank" per line); merges are derived from the ranks as
  // transformers' TikTokenConverter does, with ignore_merges set.
  static Tokenizer from_tiktoken(const std::filesystem::path& rank_file, const TiktokenSpec& spec);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;
  // The tokens' bytes joined, with invalid UTF-8 replaced by U+FFFD (as Hugging Face decodes).
  std::string decode(std::span<const int32_t> ids) const;
  // The tokens' bytes joined, as they are. Throws fm::Error for an id outside the vocabulary.
  std::string decode_bytes(std::span<const int32_t> ids) const;
  std::string_view token_bytes(int32_t id) const;
  // The id of a token with exactly these bytes (an added token's text first).
  std::optional<int32_t> token_id(std::string_view bytes) const;

  int32_t vocab_size() const { return int32_t(tokens_.size()); }
  TokenType token_type(int32_t id) const;
  bool is_special(int32_t id) const { return token_type(id) == TokenType::Control; }
  // Tokens that end generation: the declared end-of-sequence ids and the special tokens that
  // llama.cpp treats as end of generation by name (<|im_end|>, <|endoftext|>, ...), sorted.
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }  // the declared one
  std::optional<int32_t> pad_id() const { return pad_id_; }
  std::optional<bool> add_bos() const { return add_bos_; }
  const std::string& chat_template() const { return chat_template_; }

  const std::string& pattern() const;
  bool nfc() const { return nfc_; }
  bool ignore_merges() const { return ignore_merges_; }
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  // Merges in rank order, as (left, right) token ids.
  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merges_; }
  const std::string& source() const { return source_; }  // the file it came from, for messages

 private:
  friend class TokenizerBuilder;
  struct Tables;     // lookup tables (tokenizer.cpp)
  struct WordCache;  // words already encoded
  Tokenizer();

  void encode_text(std::string_view text, bool parse_special, bool normalized_pass, std::vector<int32_t>& out,
                   WordCache* cache) const;
  void encode_words(std::string_view text, std::vector<int32_t>& out, WordCache* cache) const;
  void bpe(std::string_view word, std::vector<int32_t>& out) const;

  std::string source_;
  std::vector<std::string> tokens_;  // [vocab_size] raw bytes of each token
  std::vector<TokenType> types_;     // [vocab_size]
  std::vector<std::pair<int32_t, int32_t>> merges_;
  std::vector<AddedToken> added_;
  std::unique_ptr<SplitRegex> regex_;
  std::unique_ptr<Tables> tables_;
  bool nfc_ = false;
  bool ignore_merges_ = false;
  std::optional<int32_t> bos_id_, eos_id_, pad_id_;
  std::optional<bool> add_bos_;
  std::vector<int32_t> eos_ids_;
  std::string chat_template_;
};

// Turns ids into UTF-8 text as they come: bytes of a character split across tokens are held until
// it is complete, so each piece is valid UTF-8 and the pieces joined equal decode() of all the ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string push(int32_t id);
  std::string flush();  // what is held back, with U+FFFD for a character never completed

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;
};

}  // namespace fm
