// The forward pass of Qwen3.5-MoE and Qwen3-MoE (see docs/architecture.md for the equations).
//
// Per decoder layer, for a batch of n consecutive tokens of one sequence (forward), or of one token
// of each of n sequences (decode_batch: the mixer runs per sequence, everything else on all rows):
//   h   = x + Mixer(RMSNorm_in(x))           Mixer: Gated DeltaNet or gated softmax attention
//   out = h + FFN(RMSNorm_post(h))           FFN: routed experts (+ gated shared expert), or dense
// then logits = lm_head(RMSNorm_final(x_L)).
//
// The transformer owns its scratch (sized once for max_batch tokens: no allocation per token); the
// per-sequence state (KV cache, conv and recurrent states) lives in SequenceState, so several
// sequences can share one transformer.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/model.h"
#include "ops/backend.h"
#include "stream/expert_store.h"

namespace fm {

struct TransformerOptions {
  int max_context = 4096;  // KV cache length per sequence
  int max_batch = 128;     // tokens per forward call; longer prompts go in chunks
  int experts_per_tok = 0;  // 0: the config's num_experts_per_tok
  // Expert streaming: routed experts read from the files into a RAM cache instead of used in place.
  bool stream_experts = false;
  StreamOptions stream;
  bool predict_temporal = true;   // prefetch the experts each layer used for the previous token
  bool predict_lookahead = true;  // prefetch layer l+1's router applied to layer l's hidden state
  // Resident weights (all but streamed experts) in the backend's own layout, copied at load
  // (Backend::prepare_resident: the CPU backend interleaves the blocks-of-32 types); false keeps
  // every matrix in the file's layout, in place.
  bool repack = true;
};

// How well a predictor foresaw the experts a layer then used (decode steps only).
struct PredictorStats {
  uint64_t predicted = 0;  // experts predicted
  uint64_t correct = 0;    // of which used
  uint64_t used = 0;       // experts used where a prediction was made
  double precision() const { return predicted ? double(correct) / double(predicted) : 0.0; }
  double recall() const { return used ? double(correct) / double(used) : 0.0; }
};

// Where the time of the forward passes went, in seconds.
struct PhaseTimes {
  double mixer = 0;       // attention and DeltaNet blocks
  double moe = 0;         // routed and shared experts, I/O waits included
  double io_wait = 0;     // blocked on expert reads (part of moe)
  double head = 0;        // final norm and LM head
  double total = 0;
};

struct SequenceState {
  int n_past = 0;
  bool failed = false;  // a forward pass failed midway (an expert read): reset() before reuse
  std::vector<std::vector<float>> k_cache;          // per layer: [max_context][n_kv * head_dim] (full attention)
  std::vector<std::vector<float>> v_cache;          // per layer: idem
  std::vector<std::vector<float>> conv_state;       // per layer: [kernel - 1][conv_dim] (linear attention)
  std::vector<std::vector<float>> recurrent_state;  // per layer: [n_v][dk][dv]
  void reset();
};

class Transformer {
 public:
  Transformer(const Model& model, Backend& backend, const TransformerOptions& options);

  const ModelConfig& config() const { return model_.config; }
  const TransformerOptions& options() const { return options_; }
  SequenceState new_sequence() const;

  // Runs `tokens` at positions [state.n_past, state.n_past + n) and advances the state. Writes the
  // logits of every token ([n][vocab]) if all_logits, else of the last one ([vocab]).
  // Token ids out of range and context overflow are fm::Errors; the state is then unchanged.
  void forward(SequenceState& state, std::span<const int32_t> tokens, float* logits, bool all_logits);

  // One decode step for several sequences: token i runs at position states[i]->n_past of its own
  // sequence and advances it; logits [n][vocab]. The sequences must be distinct and n <= max_batch.
  // A bad token id, a context overflow or a failed sequence is an fm::Error naming the sequence,
  // and then no state has changed. If an expert read fails midway, every sequence of the batch is
  // marked failed (as forward does for its one).
  void decode_batch(std::span<SequenceState* const> states, std::span<const int32_t> tokens, float* logits);

  // Bytes of weights the forward passes have read so far (each matrix once per call, the embedding
  // rows used): the traffic that bounds decode speed.
  uint64_t weight_bytes_read() const { return weight_bytes_read_; }

  // Sees the residual stream [n][hidden] after the embedding (layer -1) and after each decoder layer,
  // for dumps and layer-by-layer comparisons with a reference. Empty by default.
  std::function<void(int layer, const float* x, int n)> layer_observer;

  // The weights the passes compute with: the model's, or copies of some matrices in the backend's
  // own layout (TransformerOptions::repack).
  const ModelWeights& weights() const { return *weights_; }

  ExpertStore* expert_store() { return store_.get(); }
  const PredictorStats& temporal_stats() const { return temporal_stats_; }
  const PredictorStats& lookahead_stats() const { return lookahead_stats_; }
  const PhaseTimes& phase_times() const { return times_; }

 private:
  // The rows of one pass: n consecutive tokens of `one` sequence (forward), or one token of each
  // of `many` sequences (decode_batch).
  struct Rows {
    SequenceState* one = nullptr;
    std::span<SequenceState* const> many;
    bool decode() const { return !many.empty(); }
  };

  void matmul(const Mat& w, const float* x, int n, float* y);
  void forward_chunk(SequenceState& state, const int32_t* tokens, int n, float* logits, bool all_logits);
  // Embedding and decoder layers over the n rows of x_ (positions_ set by the caller).
  void run_layers(const int32_t* tokens, int n, const Rows& rows);
  void attention_block(int layer, SequenceState& state, int n);
  // q of the n rows of xn_ into q ([n][nh * hd]); with an output gate, the gate into gate_.
  void project_query(const AttentionWeights& a, int n, float* q);
  void deltanet_block(int layer, SequenceState& state, int n);
  void attention_batch(int layer, std::span<SequenceState* const> states);  // qwen_moe_batch.cpp
  void deltanet_batch(int layer, std::span<SequenceState* const> states);   // qwen_moe_batch.cpp
  void moe_block(int layer, int n, bool decode);
  void ffn(const FfnWeights& w, const float* x, int n, int inter, float* out);
  void routed_experts(int layer, int n, bool decode);
  void expert_ffn(const FfnWeights& weights, int e, int n);
  void shared_expert(int layer, int n);
  void predict_next_layer(int layer, int n);
  void score(std::span<const int32_t> predicted, std::span<const int32_t> used, PredictorStats& stats) const;

  void prepare_resident_weights();

  const Model& model_;
  Backend& be_;
  const ModelWeights* weights_ = nullptr;
  ModelWeights resident_weights_;
  std::vector<std::vector<std::byte>> resident_storage_;
  TransformerOptions options_;
  int top_k_ = 0;
  uint64_t weight_bytes_read_ = 0;

  // Scratch, [max_batch][...] each.
  std::vector<float> x_;        // residual stream [n][H]
  std::vector<float> xn_;       // normalised input [n][H]
  std::vector<float> y_;        // block output [n][H]
  std::vector<float> proj_;     // qkv / q+gate projections [n][max(conv_dim, q_rows)]
  std::vector<float> gate_;     // z of DeltaNet / output gate of attention [n][max(nv*dv, nh*hd)]
  std::vector<float> mix_;      // attention / DeltaNet output [n][max(nv*dv, nh*hd)]
  std::vector<float> small_a_;  // [n][nv]
  std::vector<float> small_b_;  // [n][nv]
  std::vector<float> router_;   // [n][E]
  std::vector<int32_t> topk_id_;   // [n][k]
  std::vector<float> topk_w_;      // [n][k]
  std::vector<int32_t> by_expert_;  // token slots grouped by expert [n*k]
  std::vector<int32_t> expert_count_;  // [E]
  std::vector<float> rows_;      // gathered token rows [n][H]
  std::vector<float> ffn_gate_;  // [n][max I]
  std::vector<float> ffn_up_;    // [n][max I]
  std::vector<float> ffn_out_;   // [n][H]
  std::vector<float> expert_out_;  // [n][k][H]: each routed expert's weighted output
  std::vector<float> shared_g_;  // [n]
  std::vector<int32_t> positions_;  // [n]
  std::vector<float> k_new_;        // decode_batch: the new keys [n][n_kv * head_dim], before their caches
  std::vector<float> v_new_;        // idem, values

  std::unique_ptr<ExpertStore> store_;
  std::vector<int32_t> used_;       // distinct experts of the current layer
  std::vector<int32_t> pending_;    // of which not yet computed
  std::vector<std::vector<int32_t>> last_used_;   // [layer]: experts of the previous decode step
  std::vector<std::vector<int32_t>> lookahead_;   // [layer]: look-ahead prediction for this step
  std::vector<float> pred_xn_;      // [n][H]
  std::vector<float> pred_router_;  // [n][E]
  std::vector<int32_t> pred_ids_;   // [k]
  std::vector<float> pred_w_;       // [k]
  PredictorStats temporal_stats_, lookahead_stats_;
  PhaseTimes times_;
};

}  // namespace fm
