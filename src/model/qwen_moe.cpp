#include "model/qwen_moe.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "util/error.h"
#include "util/mapped_file.h"

namespace fm {

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// Routing of one token: softmax over all experts (float32, as transformers), the k largest
// probabilities (ties to the lower index), renormalised to sum 1 when the config says so.
void route(const float* logits, int n_experts, int k, bool renormalise, int32_t* ids, float* weights) {
  float max_logit = logits[0];
  for (int e = 1; e < n_experts; ++e) max_logit = std::max(max_logit, logits[e]);
  double sum = 0.0;
  for (int e = 0; e < n_experts; ++e) sum += std::exp(double(logits[e] - max_logit));
  // Partial selection sort: k is small (8-10) next to n_experts (up to 512).
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < n_experts; ++e) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= ids[i] == e;
      if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
    }
    ids[j] = best;
    weights[j] = float(std::exp(double(logits[best] - max_logit)) / sum);
  }
  if (renormalise) {
    float total = 0.0f;
    for (int j = 0; j < k; ++j) total += weights[j];
    for (int j = 0; j < k; ++j) weights[j] /= total;
  }
}

}  // namespace

void SequenceState::reset() {
  n_past = 0;
  failed = false;
  for (auto* group : {&k_cache, &v_cache, &conv_state, &recurrent_state})
    for (auto& buf : *group) std::fill(buf.begin(), buf.end(), 0.0f);
}

Transformer::Transformer(const Model& model, Backend& backend, const TransformerOptions& options)
    : model_(model), be_(backend), options_(options) {
  const ModelConfig& c = model_.config;
  top_k_ = options_.experts_per_tok > 0 ? options_.experts_per_tok : c.num_experts_per_tok;
  if (top_k_ > c.num_experts) fail("--moe-top-k {} exceeds the model's {} experts", top_k_, c.num_experts);
  FM_CHECK(options_.max_batch > 0 && options_.max_context > 0, "bad transformer options");
  weights_ = &model_.weights;
  if (options_.repack) prepare_resident_weights();

  const size_t n = size_t(options_.max_batch), H = size_t(c.hidden_size);
  const size_t q_rows = size_t(c.num_heads) * c.head_dim * (c.attn_output_gate ? 2 : 1);
  const size_t attn_dim = size_t(c.num_heads) * c.head_dim;
  const size_t v_dim = size_t(c.linear_num_v_heads) * c.linear_v_head_dim;
  const size_t inter = size_t(std::max({c.moe_intermediate_size, c.shared_expert_intermediate_size,
                                        c.intermediate_size}));
  const size_t k = size_t(std::max(top_k_, 1));
  if (options_.stream_experts) {
    store_ = std::make_unique<ExpertStore>(model_, options_.stream, top_k_);
    last_used_.resize(size_t(c.num_layers));
    lookahead_.resize(size_t(c.num_layers));
    const size_t E = size_t(std::max(c.num_experts, 1));
    pred_xn_.resize(n * H);
    pred_router_.resize(n * E);
    pred_ids_.resize(k);
    pred_w_.resize(k);
    used_.reserve(E);
    pending_.reserve(E);
    for (auto& v : last_used_) v.reserve(E);  // a batch of decode steps uses up to n * k experts
    for (auto& v : lookahead_) v.reserve(E);
  }
  x_.resize(n * H);
  xn_.resize(n * H);
  y_.resize(n * H);
  proj_.resize(n * std::max(size_t(c.linear_conv_dim()), q_rows));
  gate_.resize(n * std::max(v_dim, attn_dim));
  mix_.resize(n * std::max(v_dim, attn_dim));
  small_a_.resize(n * size_t(std::max(c.linear_num_v_heads, 1)));
  small_b_.resize(small_a_.size());
  router_.resize(n * size_t(std::max(c.num_experts, 1)));
  topk_id_.resize(n * k);
  topk_w_.resize(n * k);
  by_expert_.resize(n * k);
  expert_count_.resize(size_t(std::max(c.num_experts, 1)) + 1);
  rows_.resize(n * H);
  ffn_gate_.resize(n * inter);
  ffn_up_.resize(n * inter);
  ffn_out_.resize(n * H);
  expert_out_.resize(n * k * H);
  shared_g_.resize(n);
  positions_.resize(n);
  if (std::count(c.layer_kinds.begin(), c.layer_kinds.end(), LayerKind::FullAttention) > 0) {
    k_new_.resize(n * size_t(c.num_kv_heads) * size_t(c.head_dim));
    v_new_.resize(k_new_.size());
  }
}

void Transformer::prepare_resident_weights() {
  resident_weights_ = model_.weights;
  const bool tied = resident_weights_.lm_head.data == resident_weights_.embed.data;
  std::vector<std::byte> storage;
  for_each_matrix(resident_weights_, [&](Mat& m, bool routed_expert) {
    if (routed_expert && options_.stream_experts) return;  // read from the files into the store's buffers
    const Mat stored = m;
    m = be_.prepare_resident(m, storage);
    if (storage.empty()) return;
    resident_storage_.push_back(std::move(storage));
    storage = {};
    // The mapped pages the copy was made from would otherwise count twice in the resident set.
    std::string path;
    uint64_t offset = 0;
    if (model_.tensors && model_.tensors->locate(stored.data, &path, &offset))
      drop_mapped_pages(stored.data, stored.nbytes());
  });
  if (tied) resident_weights_.lm_head = resident_weights_.embed;
  if (resident_storage_.empty()) {
    resident_weights_ = {};
    return;
  }
  weights_ = &resident_weights_;
}

SequenceState Transformer::new_sequence() const {
  const ModelConfig& c = model_.config;
  SequenceState s;
  const size_t L = size_t(c.num_layers);
  s.k_cache.resize(L);
  s.v_cache.resize(L);
  s.conv_state.resize(L);
  s.recurrent_state.resize(L);
  for (size_t i = 0; i < L; ++i) {
    if (c.layer_kinds[i] == LayerKind::FullAttention) {
      const size_t kv = size_t(options_.max_context) * c.num_kv_heads * c.head_dim;
      s.k_cache[i].assign(kv, 0.0f);
      s.v_cache[i].assign(kv, 0.0f);
    } else {
      s.conv_state[i].assign(size_t(c.linear_conv_kernel - 1) * c.linear_conv_dim(), 0.0f);
      s.recurrent_state[i].assign(size_t(c.linear_num_v_heads) * c.linear_k_head_dim * c.linear_v_head_dim, 0.0f);
    }
  }
  return s;
}

void Transformer::forward(SequenceState& state, std::span<const int32_t> tokens, float* logits, bool all_logits) {
  const ModelConfig& c = model_.config;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      fail("token id {} at position {} is out of range [0, {})", tokens[i], i, c.vocab_size);
  if (state.n_past + int64_t(tokens.size()) > options_.max_context)
    fail("context overflow: {} cached + {} new tokens exceed the context of {} (--ctx)", state.n_past,
         tokens.size(), options_.max_context);
  if (state.failed)
    fail("this sequence's state is incomplete after an earlier failure (an expert read failed mid-pass); "
         "reset it and run the prompt again");
  const int64_t V = c.vocab_size;
  for (size_t done = 0; done < tokens.size();) {
    const int n = int(std::min<size_t>(tokens.size() - done, size_t(options_.max_batch)));
    const bool last_chunk = done + size_t(n) == tokens.size();
    float* out = all_logits ? logits + int64_t(done) * V : (last_chunk ? logits : nullptr);
    try {
      forward_chunk(state, tokens.data() + done, n, out, all_logits);
    } catch (...) {
      // Layers before the failure have updated their caches and recurrent states: the sequence
      // cannot go on, but the transformer and the expert cache can.
      state.failed = true;
      throw;
    }
    done += size_t(n);
  }
}

void Transformer::forward_chunk(SequenceState& state, const int32_t* tokens, int n, float* logits,
                                bool all_logits) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = weights();
  const int H = c.hidden_size;
  for (int t = 0; t < n; ++t) positions_[size_t(t)] = state.n_past + t;
  const double t_start = now_s();
  run_layers(tokens, n, Rows{.one = &state});
  state.n_past += n;

  if (logits) {
    // Only the rows whose logits are wanted go through the final norm and the LM head.
    const double t0 = now_s();
    const int first = all_logits ? 0 : n - 1;
    const int rows = n - first;
    be_.rms_norm(x_.data() + int64_t(first) * H, w.final_norm.data(), rows, H, c.rms_norm_eps, xn_.data());
    matmul(w.lm_head, xn_.data(), rows, logits);
    times_.head += now_s() - t0;
  }
  times_.total += now_s() - t_start;
  if (store_) times_.io_wait = store_->stats().wait_seconds;
}

void Transformer::run_layers(const int32_t* tokens, int n, const Rows& rows) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = weights();
  const int H = c.hidden_size;
  be_.embed(w.embed, tokens, n, x_.data());
  weight_bytes_read_ += uint64_t(n) * w.embed.row_bytes;
  if (layer_observer) layer_observer(-1, x_.data(), n);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = w.layers[size_t(l)];
    const double t0 = now_s();
    be_.rms_norm(x_.data(), L.input_norm.data(), n, H, c.rms_norm_eps, xn_.data());
    const bool attention = L.kind == LayerKind::FullAttention;
    if (rows.decode())
      attention ? attention_batch(l, rows.many) : deltanet_batch(l, rows.many);
    else
      attention ? attention_block(l, *rows.one, n) : deltanet_block(l, *rows.one, n);
    for (size_t i = 0; i < size_t(n) * H; ++i) x_[i] += y_[i];
    const double t1 = now_s();
    times_.mixer += t1 - t0;

    be_.rms_norm(x_.data(), L.post_norm.data(), n, H, c.rms_norm_eps, xn_.data());
    if (L.is_moe)
      moe_block(l, n, n == 1 || rows.decode());
    else
      ffn(L.mlp, xn_.data(), n, c.intermediate_size, y_.data());
    for (size_t i = 0; i < size_t(n) * H; ++i) x_[i] += y_[i];
    times_.moe += now_s() - t1;
    if (layer_observer) layer_observer(l, x_.data(), n);
  }
}

// Gated softmax attention. Qwen3.5: q_proj emits [q_h | gate_h] per head, and the output is
// attn * sigmoid(gate); q and k get a per-head RMSNorm before the (partial) rotary embedding.
void Transformer::project_query(const AttentionWeights& a, int n, float* q) {
  const ModelConfig& c = model_.config;
  const int hd = c.head_dim, nh = c.num_heads;
  if (!c.attn_output_gate) return matmul(a.q, xn_.data(), n, q);
  matmul(a.q, xn_.data(), n, proj_.data());  // [n][nh][q | gate]
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nh; ++h) {
      const float* src = proj_.data() + (int64_t(t) * nh + h) * 2 * hd;
      std::copy(src, src + hd, q + (int64_t(t) * nh + h) * hd);
      std::copy(src + hd, src + 2 * hd, gate_.data() + (int64_t(t) * nh + h) * hd);
    }
}

void Transformer::attention_block(int layer, SequenceState& state, int n) {
  const ModelConfig& c = model_.config;
  const AttentionWeights& a = weights().layers[size_t(layer)].attn;
  const int hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t q_dim = int64_t(nh) * hd, kv_dim = int64_t(nkv) * hd;
  float* k_rows = state.k_cache[size_t(layer)].data() + int64_t(state.n_past) * kv_dim;
  float* v_rows = state.v_cache[size_t(layer)].data() + int64_t(state.n_past) * kv_dim;

  float* q = mix_.data();  // q is staged in mix_, the output in proj_ once q is consumed
  project_query(a, n, q);
  matmul(a.k, xn_.data(), n, k_rows);
  matmul(a.v, xn_.data(), n, v_rows);
  be_.rms_norm(q, a.q_norm.data(), n * nh, hd, c.rms_norm_eps, q);
  be_.rms_norm(k_rows, a.k_norm.data(), n * nkv, hd, c.rms_norm_eps, k_rows);
  const RopeSpec rope{.head_dim = hd, .rotary_dim = c.rotary_dim, .theta = c.rope_theta};
  be_.rope(q, n, nh, positions_.data(), rope);
  be_.rope(k_rows, n, nkv, positions_.data(), rope);

  float* out = proj_.data();
  be_.attention(q, state.k_cache[size_t(layer)].data(), state.v_cache[size_t(layer)].data(), n, state.n_past,
                AttentionShape{.n_heads = nh, .n_kv_heads = nkv, .head_dim = hd}, out);
  if (c.attn_output_gate)
    for (int64_t i = 0; i < int64_t(n) * q_dim; ++i) out[i] *= sigmoid(gate_[size_t(i)]);
  matmul(a.o, out, n, y_.data());
}

// Gated DeltaNet: projections, causal conv over q|k|v, the gated delta rule, a gated RMSNorm per
// V head with z, and the output projection.
void Transformer::deltanet_block(int layer, SequenceState& state, int n) {
  const ModelConfig& c = model_.config;
  const DeltaNetWeights& d = weights().layers[size_t(layer)].linear;
  const int conv_dim = c.linear_conv_dim();
  const int nv = c.linear_num_v_heads, dv = c.linear_v_head_dim;

  matmul(d.qkv, xn_.data(), n, proj_.data());
  matmul(d.z, xn_.data(), n, gate_.data());
  matmul(d.b, xn_.data(), n, small_b_.data());
  matmul(d.a, xn_.data(), n, small_a_.data());
  be_.conv1d_silu(proj_.data(), d.conv.data(), n, conv_dim, c.linear_conv_kernel,
                  state.conv_state[size_t(layer)].data(), proj_.data());
  const DeltaNetShape shape{.n_k_heads = c.linear_num_k_heads, .n_v_heads = nv, .k_dim = c.linear_k_head_dim,
                            .v_dim = dv, .v_heads_tiled = d.v_heads_tiled};
  be_.gated_delta_rule(proj_.data(), small_a_.data(), small_b_.data(), d.decay_scale.data(), d.dt_bias.data(), n,
                       shape, state.recurrent_state[size_t(layer)].data(), mix_.data());
  be_.rms_norm_gated(mix_.data(), gate_.data(), d.norm.data(), n * nv, dv, c.rms_norm_eps, mix_.data());
  matmul(d.out, mix_.data(), n, y_.data());
}

void Transformer::matmul(const Mat& w, const float* x, int n, float* y) {
  weight_bytes_read_ += w.nbytes();
  be_.matmul(w, x, n, y);
}

void Transformer::ffn(const FfnWeights& w, const float* x, int n, int inter, float* out) {
  matmul(w.gate, x, n, ffn_gate_.data());
  matmul(w.up, x, n, ffn_up_.data());
  be_.silu_mul(ffn_gate_.data(), ffn_up_.data(), int64_t(n) * inter, ffn_gate_.data());
  matmul(w.down, ffn_gate_.data(), n, out);
}

// Routed experts: each token picks top_k experts; tokens are grouped by expert so every chosen
// expert's weights are read once for all the tokens that use it.
void Transformer::moe_block(int layer, int n, bool decode) {
  const ModelConfig& c = model_.config;
  const MoeWeights& m = weights().layers[size_t(layer)].moe;
  const int H = c.hidden_size, E = c.num_experts, k = top_k_;

  matmul(m.router, xn_.data(), n, router_.data());
  for (int t = 0; t < n; ++t)
    route(router_.data() + int64_t(t) * E, E, k, c.norm_topk_prob, topk_id_.data() + int64_t(t) * k,
          topk_w_.data() + int64_t(t) * k);

  // Counting sort of the n*k (token, slot) pairs by expert.
  std::fill(expert_count_.begin(), expert_count_.end(), 0);
  for (int i = 0; i < n * k; ++i) ++expert_count_[size_t(topk_id_[size_t(i)]) + 1];
  for (int e = 0; e < E; ++e) expert_count_[size_t(e) + 1] += expert_count_[size_t(e)];
  {
    // expert_count_[e] is now the first slot of expert e; fill, then shift back.
    for (int i = 0; i < n * k; ++i) by_expert_[size_t(expert_count_[size_t(topk_id_[size_t(i)])]++)] = i;
    for (int e = E; e > 0; --e) expert_count_[size_t(e)] = expert_count_[size_t(e) - 1];
    expert_count_[0] = 0;
  }

  // The shared expert goes into y_ first; each routed expert's weighted output into its (token,
  // slot) row of expert_out_, in whatever order the experts are computed (streaming computes them
  // as their reads complete); then the rows are summed per token in ascending expert order. The
  // result is the same to the bit whatever the order of computation.
  std::fill(y_.begin(), y_.begin() + int64_t(n) * H, 0.0f);
  if (store_) {
    routed_experts(layer, n, decode);
  } else {
    shared_expert(layer, n);
    for (int e = 0; e < E; ++e) {
      if (expert_count_[size_t(e)] == expert_count_[size_t(e) + 1]) continue;
      expert_ffn(m.experts[size_t(e)], e, n);
    }
  }
  for (int i = 0; i < n * k; ++i) {
    const int slot = by_expert_[size_t(i)];
    float* dst = y_.data() + int64_t(slot / k) * H;
    const float* src = expert_out_.data() + int64_t(slot) * H;
    for (int j = 0; j < H; ++j) dst[j] += src[j];
  }
}

// The tokens routed to expert e (grouped by moe_block) through its FFN, weighted into y_.
void Transformer::expert_ffn(const FfnWeights& weights, int e, int n) {
  const ModelConfig& c = model_.config;
  const int H = c.hidden_size, k = top_k_;
  const int begin = expert_count_[size_t(e)], end = expert_count_[size_t(e) + 1];
  const int rows = end - begin;
  for (int r = 0; r < rows; ++r) {
    const int token = by_expert_[size_t(begin + r)] / k;
    std::copy_n(xn_.data() + int64_t(token) * H, H, rows_.data() + int64_t(r) * H);
  }
  ffn(weights, rows_.data(), rows, c.moe_intermediate_size, ffn_out_.data());
  for (int r = 0; r < rows; ++r) {
    const int slot = by_expert_[size_t(begin + r)];
    const float weight = topk_w_[size_t(slot)];
    float* dst = expert_out_.data() + int64_t(slot) * H;
    const float* src = ffn_out_.data() + int64_t(r) * H;
    for (int i = 0; i < H; ++i) dst[i] = weight * src[i];
  }
}

// Streaming: the layer's experts are demanded from the store at once; while they are read, the
// shared expert runs and the next layer's experts are predicted and prefetched; then each expert is
// computed as soon as its read is done (any ready one first).
void Transformer::routed_experts(int layer, int n, bool decode) {
  const int E = model_.config.num_experts;
  used_.clear();
  for (int e = 0; e < E; ++e)
    if (expert_count_[size_t(e)] != expert_count_[size_t(e) + 1]) used_.push_back(e);
  store_->demand(layer, used_);
  if (decode) {
    // Decode steps (one token, or one token of each of n sequences): score the predictions made
    // for this layer, then predict the next one.
    if (!last_used_[size_t(layer)].empty()) score(last_used_[size_t(layer)], used_, temporal_stats_);
    if (!lookahead_[size_t(layer)].empty()) score(lookahead_[size_t(layer)], used_, lookahead_stats_);
    lookahead_[size_t(layer)].clear();
    last_used_[size_t(layer)] = used_;
    predict_next_layer(layer, n);
  }
  shared_expert(layer, n);

  // A ready expert first, else one being read; one not yet read (more experts than the cache has
  // slots, in prefill) only when nothing else is left. Each computed expert frees its slot for the
  // reads still to start.
  pending_ = used_;
  while (!pending_.empty()) {
    size_t pick = pending_.size();
    for (size_t i = 0; i < pending_.size() && pick == pending_.size(); ++i)
      if (store_->ready(layer, pending_[i])) pick = i;
    for (size_t i = 0; i < pending_.size() && pick == pending_.size(); ++i)
      if (store_->cached(layer, pending_[i])) pick = i;
    if (pick == pending_.size()) pick = 0;
    const int e = pending_[pick];
    pending_.erase(pending_.begin() + int64_t(pick));
    const FfnWeights w = store_->acquire(layer, e);
    expert_ffn(w, e, n);
    store_->release(layer, e);
    if (pending_.size() + 1 > size_t(store_->slots())) store_->demand(layer, pending_);
  }
}

// The next MoE layer's experts as its router would pick them from the current residual stream
// (look-ahead), and as it picked them for the previous step (temporal); prefetched when enabled.
// With n rows (one token of each of n sequences), the union over the rows.
void Transformer::predict_next_layer(int layer, int n) {
  const ModelConfig& c = model_.config;
  int next = layer + 1;
  while (next < c.num_layers && !weights().layers[size_t(next)].is_moe) ++next;
  if (next >= c.num_layers) return;
  const LayerWeights& L = weights().layers[size_t(next)];
  const int H = c.hidden_size, E = c.num_experts, k = top_k_;
  // x_ holds h = x + mixer(x) of this layer: the residual stream the next layer builds on.
  be_.rms_norm(x_.data(), L.post_norm.data(), n, H, c.rms_norm_eps, pred_xn_.data());
  be_.matmul(L.moe.router, pred_xn_.data(), n, pred_router_.data());
  std::vector<int32_t>& la = lookahead_[size_t(next)];
  la.clear();
  for (int t = 0; t < n; ++t) {
    route(pred_router_.data() + int64_t(t) * E, E, k, c.norm_topk_prob, pred_ids_.data(), pred_w_.data());
    for (int j = 0; j < k; ++j) {
      const int32_t e = pred_ids_[size_t(j)];
      if (std::find(la.begin(), la.end(), e) == la.end()) la.push_back(e);
    }
  }
  std::sort(la.begin(), la.end());
  if (options_.predict_lookahead) store_->prefetch(next, la);
  if (options_.predict_temporal && !last_used_[size_t(next)].empty()) store_->prefetch(next, last_used_[size_t(next)]);
}

void Transformer::score(std::span<const int32_t> predicted, std::span<const int32_t> used, PredictorStats& stats) const {
  // Both sorted ascending.
  uint64_t hit = 0;
  for (size_t i = 0, j = 0; i < predicted.size() && j < used.size();) {
    if (predicted[i] == used[j]) ++hit, ++i, ++j;
    else if (predicted[i] < used[j]) ++i;
    else ++j;
  }
  stats.predicted += predicted.size();
  stats.used += used.size();
  stats.correct += hit;
}

void Transformer::shared_expert(int layer, int n) {
  const ModelConfig& c = model_.config;
  const MoeWeights& m = weights().layers[size_t(layer)].moe;
  const int H = c.hidden_size;
  if (m.has_shared) {
    ffn(m.shared, xn_.data(), n, c.shared_expert_intermediate_size, ffn_out_.data());
    matmul(m.shared_gate, xn_.data(), n, shared_g_.data());
    for (int t = 0; t < n; ++t) {
      const float g = sigmoid(shared_g_[size_t(t)]);
      float* dst = y_.data() + int64_t(t) * H;
      const float* src = ffn_out_.data() + int64_t(t) * H;
      for (int i = 0; i < H; ++i) dst[i] += g * src[i];
    }
  }
}

}  // namespace fm
