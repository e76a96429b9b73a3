// A multi-turn chat on one sequence: the conversation rendered with the model's chat template, the KV
// cache and the DeltaNet states kept from turn to turn.
//
// Each turn renders the whole conversation (the new user message and the generation prompt included).
// When the text already fed to the model (the prompts and the answer tokens fed back) is a prefix of that
// rendering, only the rest is encoded and fed: the cache is reused. Otherwise the sequence is prefilled
// again from the start (the DeltaNet recurrent state cannot be rewound to the first differing token) and
// ChatStats::re_prefills counts it.
//
// An answer is kept as the model saw it: its content is the text after the assistant header of the
// generation prompt ("<think>\n\n</think>\n\n" with thinking off) plus the generated text, with an empty
// reasoning_content, so that templates that drop earlier turns' <think> blocks (Qwen3 / Qwen3.5) render it
// as it was fed and the next turn still reuses the cache.
//
// Session files (save / load): a 40-byte header, then the payload.
//   header:  magic "FMCHAT\0\0" | u32 version | u32 reserved (0) | u64 model fingerprint |
//            u64 payload size | u32 CRC-32 (zlib) of the payload | u32 reserved (0)      (little-endian)
//   payload: u32 n + n bytes of JSON {"model": name, "fingerprint": hex, "messages": [...]}
//            u64 n + n int32 token ids fed to the model (n == n_past)
//            u64 n + n bytes: the text they stand for (the rendered prompts and the answers' bytes)
//            u32 layers; per layer: u8 kind (0 linear, 1 full attention), then
//              full attention: u64 n + n floats of K rows [0, n_past), idem V;
//              linear:         u64 n + n floats of the conv state, idem the recurrent state.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "chat/chat_template.h"
#include "model/model.h"
#include "model/qwen_moe.h"
#include "runtime/generate.h"
#include "tokenizer/tokenizer.h"

namespace fm {

// A 64-bit identity of a model's weights: FNV-1a over the config (architecture and every shape
// field), every matrix in binding order (which fixes its tensor name) with its type and shape, the
// final norm, and the first 256 bytes of the embedding, the LM head and each layer's first mixer
// matrix. Sessions carry it so that one model's cache is never loaded into another.
uint64_t model_fingerprint(const Model& model);

struct ChatOptions {
  int max_new_tokens = 512;
  SamplerOptions sampling = {};
  bool think = false;  // the template's enable_thinking
};

struct ChatStats {
  int turns = 0;
  int64_t prefix_reuses = 0;  // turns that fed only the new suffix
  int64_t re_prefills = 0;    // turns whose rendering was no extension of what was fed: fed from the start
  int64_t fed_tokens = 0;     // prompt tokens fed, over all turns
  int64_t reused_tokens = 0;  // tokens already in the cache at the start of a turn, over all turns
  int64_t generated = 0;      // tokens generated, over all turns
  int last_fed = 0;           // prompt tokens fed by the last turn
  double prefill_seconds = 0;
  double decode_seconds = 0;
  int64_t decode_steps = 0;
};

struct ChatTurn {
  std::string text;  // the answer as generated (a <think> block included)
  FinishReason finish = FinishReason::Length;
  int fed = 0;  // prompt tokens fed
  bool re_prefilled = false;
  int generated = 0;
};

class ChatSession {
 public:
  ChatSession(const Model& model, Transformer& transformer, const Tokenizer& tokenizer,
              const ChatTemplate& tmpl, std::string model_name);

  // Sets the system message (empty: none). Changing it after the first turn re-prefills the next turn.
  void set_system(const std::string& text);

  // Adds the user message, feeds what the cache lacks, generates the answer and adds it. on_text gets
  // the answer's text as it comes; on_token returning false stops the answer (kept as far as it got).
  // On an fm::Error the conversation is left as it was before the call (the cache is cleared).
  ChatTurn ask(const std::string& user, const ChatOptions& options,
               const std::function<void(std::string_view)>& on_text = {},
               const std::function<bool(int32_t)>& on_token = {});

  void reset();  // forget the conversation (the system message stays)
  void save(const std::filesystem::path& file) const;
  // Replaces the conversation and the cache with a saved session's. fm::Error naming the file for a
  // corrupt, truncated or foreign file, or one saved with another model (both named).
  void load(const std::filesystem::path& file);

  const ChatStats& stats() const { return stats_; }
  int n_past() const { return state_.n_past; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  const jinja::Json& messages() const { return messages_; }
  const SequenceState& state() const { return state_; }
  uint64_t fingerprint() const { return fingerprint_; }

 private:
  jinja::Json conversation() const;  // the system message (if any) and the messages

  const Model& model_;
  Transformer& transformer_;
  const Tokenizer& tokenizer_;
  const ChatTemplate& template_;
  std::string model_name_;
  uint64_t fingerprint_;
  std::string system_;
  jinja::Json messages_ = jinja::Json::array();  // user and assistant messages
  SequenceState state_;
  std::vector<int32_t> tokens_;  // ids fed to the model: tokens_.size() == state_.n_past
  std::string fed_text_;         // their text: the rendered prompts and the answers' bytes
  ChatStats stats_;
};

}  // namespace fm
