// A tokenizer as GGUF metadata, the keys llama.cpp's converter writes for a byte-level BPE vocabulary:
// tokenizer.ggml.{model = "gpt2", pre, tokens, token_type, merges, bos/eos/padding_token_id,
// add_bos_token} and tokenizer.chat_template. Tokens are spelled in the byte-level alphabet, added
// tokens as their text (CONTROL when special, else USER_DEFINED), ids without a token as "[PAD<id>]"
// (UNUSED). Two keys of flashmoe's own record what llama.cpp's keys cannot say and Tokenizer::from_gguf
// reads back: tokenizer.flashmoe.nfc and tokenizer.flashmoe.ignore_merges.
#pragma once
#include <cstdint>
#include <filesystem>

namespace fm {

class GgufWriter;
class Tokenizer;

struct TokenizerMetadataOptions {
  int64_t vocab_size = 0;  // pad the token list to this many ids (the model's embedding rows); 0: as is
  bool write_eos = true;   // false where the caller writes tokenizer.ggml.eos_token_id itself
};

// Throws fm::Error when the pre-tokenizer regex has no llama.cpp name, or vocab_size is too small.
void write_tokenizer_metadata(GgufWriter& out, const Tokenizer& tokenizer,
                              const TokenizerMetadataOptions& options = {});
// The tokenizer of a Hugging Face model folder (tokenizer.json and its companions).
void write_tokenizer_metadata(GgufWriter& out, const std::filesystem::path& model_dir,
                              const TokenizerMetadataOptions& options = {});

}  // namespace fm
