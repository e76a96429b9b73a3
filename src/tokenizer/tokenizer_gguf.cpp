#include "tokenizer/tokenizer_gguf.h"

#include <fmt/format.h>

#include "formats/gguf_writer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"
#include "util/error.h"

namespace fm {

void write_tokenizer_metadata(GgufWriter& out, const Tokenizer& t, const TokenizerMetadataOptions& options) {
  const std::optional<std::string_view> pre = pre_name_for_pattern(t.pattern());
  if (!pre)
    fail("{}: the pre-tokenizer regex has no llama.cpp name, so GGUF cannot carry it: {}", t.source(),
         t.pattern());
  const int64_t n = std::max<int64_t>(t.vocab_size(), options.vocab_size);
  if (options.vocab_size > 0 && options.vocab_size < t.vocab_size())
    fail("{}: the tokenizer has {} ids, more than the model's vocab_size {}", t.source(), t.vocab_size(),
         options.vocab_size);
  std::vector<std::string> tokens(static_cast<size_t>(n));
  std::vector<int32_t> types(static_cast<size_t>(n), int32_t(TokenType::Unused));
  for (int32_t id = 0; id < n; ++id) {
    const TokenType type = t.token_type(id);
    if (type == TokenType::Normal) {
      tokens[size_t(id)] = utf8::byte_level_encode(t.token_bytes(id));
      types[size_t(id)] = int32_t(type);
    } else if (type == TokenType::Unknown) {
      tokens[size_t(id)] = std::string(t.token_bytes(id));
      types[size_t(id)] = int32_t(type);
    } else {
      tokens[size_t(id)] = fmt::format("[PAD{}]", id);
    }
  }
  for (const AddedToken& a : t.added_tokens()) {
    tokens[size_t(a.id)] = a.content;
    types[size_t(a.id)] = int32_t(a.special ? TokenType::Control : TokenType::UserDefined);
  }
  std::vector<std::string> merges;
  merges.reserve(t.merges().size());
  for (const auto& [l, r] : t.merges())
    merges.push_back(utf8::byte_level_encode(t.token_bytes(l)) + " " +
                     utf8::byte_level_encode(t.token_bytes(r)));

  out.set_string("tokenizer.ggml.model", "gpt2");
  out.set_string("tokenizer.ggml.pre", std::string(*pre));
  out.set_array("tokenizer.ggml.tokens", std::move(tokens));
  out.set_array("tokenizer.ggml.token_type", std::move(types));
  out.set_array("tokenizer.ggml.merges", std::move(merges));
  if (t.bos_id()) out.set_u32("tokenizer.ggml.bos_token_id", uint32_t(*t.bos_id()));
  if (t.eos_id() && options.write_eos) out.set_u32("tokenizer.ggml.eos_token_id", uint32_t(*t.eos_id()));
  if (t.pad_id()) out.set_u32("tokenizer.ggml.padding_token_id", uint32_t(*t.pad_id()));
  if (t.add_bos()) out.set_bool("tokenizer.ggml.add_bos_token", *t.add_bos());
  if (!t.chat_template().empty()) out.set_string("tokenizer.chat_template", t.chat_template());
  out.set_bool("tokenizer.flashmoe.nfc", t.nfc());
  out.set_bool("tokenizer.flashmoe.ignore_merges", t.ignore_merges());
}

void write_tokenizer_metadata(GgufWriter& out, const std::filesystem::path& model_dir,
                              const TokenizerMetadataOptions& options) {
  write_tokenizer_metadata(out, Tokenizer::load(model_dir), options);
}

}  // namespace fm
