// Batched decoding: one step of n independent sequences in one pass, so that every dense matrix and
// every routed expert is read once per step for all of them (continuous batching in a server).
//
// The n tokens are the n rows of the residual stream, as the tokens of a prompt chunk are: the
// embedding, every matmul (rows n), the norms, the MoE block (routing per token, each distinct
// expert run once on the rows routed to it; streaming demands the union) and the LM head take them
// together. Only the mixer is per sequence: the projections run on all rows, then each sequence's
// token goes through the single-token attention over its own KV cache at its own position, or the
// single-token conv and delta rule on its own states, exactly as a one-token forward() would.
//
// Each row's arithmetic is the same as in a one-token forward() of that sequence except inside the
// matmul tiles, whose float kernels may sum in another order for tiles of several tokens
// (ops/cpu/matmul_avx2.cpp); the quantized kernels (activations quantized per row) and the scalar
// kernels give the same bits (tests/unit/test_batch.cpp).
#include <algorithm>
#include <chrono>
#include <cmath>

#include "model/qwen_moe.h"
#include "util/error.h"

namespace fm {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

void Transformer::decode_batch(std::span<SequenceState* const> states, std::span<const int32_t> tokens,
                               float* logits) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = weights();
  // Everything is checked before any state changes.
  if (states.size() != tokens.size())
    fail("decode_batch: {} sequences but {} tokens", states.size(), tokens.size());
  if (states.size() > size_t(options_.max_batch))
    fail("decode_batch: {} sequences exceed the batch of {} (max_batch)", states.size(), options_.max_batch);
  for (size_t i = 0; i < states.size(); ++i) {
    const SequenceState* s = states[i];
    FM_CHECK(s != nullptr, "decode_batch: sequence {} is null", i);
    for (size_t j = 0; j < i; ++j)
      if (states[j] == s) fail("decode_batch: sequences {} and {} of the batch are the same sequence", j, i);
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      fail("decode_batch: token id {} of sequence {} is out of range [0, {})", tokens[i], i, c.vocab_size);
    if (s->n_past + 1 > options_.max_context)
      fail(
          "decode_batch: context overflow in sequence {}: {} cached + 1 new token exceed the context of {} "
          "(--ctx)",
          i, s->n_past, options_.max_context);
    if (s->failed)
      fail(
          "decode_batch: sequence {}'s state is incomplete after an earlier failure (an expert read failed "
          "mid-pass); reset it and run the prompt again",
          i);
  }
  const int n = int(states.size());
  if (n == 0) return;

  const int H = c.hidden_size;
  for (int i = 0; i < n; ++i) positions_[size_t(i)] = states[size_t(i)]->n_past;
  const double t_start = now_s();
  try {
    run_layers(tokens.data(), n, Rows{.many = states});
  } catch (...) {
    // Layers before the failure have updated every sequence's caches and states.
    for (SequenceState* s : states) s->failed = true;
    throw;
  }
  for (SequenceState* s : states) ++s->n_past;

  const double t0 = now_s();
  be_.rms_norm(x_.data(), w.final_norm.data(), n, H, c.rms_norm_eps, xn_.data());
  matmul(w.lm_head, xn_.data(), n, logits);
  const double t1 = now_s();
  times_.head += t1 - t0;
  times_.total += t1 - t_start;
  if (store_) times_.io_wait = store_->stats().wait_seconds;
}

// attention_block for one token of each sequence: the projections, norms and rotary embedding on
// all rows (each at its own position), the new key and value rows into each sequence's cache, the
// attention per sequence over its cache, the gate and the output projection on all rows.
void Transformer::attention_batch(int layer, std::span<SequenceState* const> states) {
  const ModelConfig& c = model_.config;
  const AttentionWeights& a = weights().layers[size_t(layer)].attn;
  const int n = int(states.size());
  const int hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t q_dim = int64_t(nh) * hd, kv_dim = int64_t(nkv) * hd;

  float* q = mix_.data();  // [n][nh * hd], staged as in attention_block
  project_query(a, n, q);
  matmul(a.k, xn_.data(), n, k_new_.data());  // [n][nkv * hd]
  matmul(a.v, xn_.data(), n, v_new_.data());
  be_.rms_norm(q, a.q_norm.data(), n * nh, hd, c.rms_norm_eps, q);
  be_.rms_norm(k_new_.data(), a.k_norm.data(), n * nkv, hd, c.rms_norm_eps, k_new_.data());
  const RopeSpec rope{.head_dim = hd, .rotary_dim = c.rotary_dim, .theta = c.rope_theta};
  be_.rope(q, n, nh, positions_.data(), rope);
  be_.rope(k_new_.data(), n, nkv, positions_.data(), rope);

  float* out = proj_.data();  // [n][nh * hd]
  const AttentionShape shape{.n_heads = nh, .n_kv_heads = nkv, .head_dim = hd};
  for (int t = 0; t < n; ++t) {
    SequenceState& s = *states[size_t(t)];
    float* k_cache = s.k_cache[size_t(layer)].data();
    float* v_cache = s.v_cache[size_t(layer)].data();
    std::copy_n(k_new_.data() + t * kv_dim, kv_dim, k_cache + int64_t(s.n_past) * kv_dim);
    std::copy_n(v_new_.data() + t * kv_dim, kv_dim, v_cache + int64_t(s.n_past) * kv_dim);
    be_.attention(q + t * q_dim, k_cache, v_cache, 1, s.n_past, shape, out + t * q_dim);
  }
  if (c.attn_output_gate)
    for (int64_t i = 0; i < int64_t(n) * q_dim; ++i) out[i] *= sigmoid(gate_[size_t(i)]);
  matmul(a.o, out, n, y_.data());
}

// deltanet_block for one token of each sequence: the projections on all rows, the conv and the
// delta rule per sequence on its own states, the gated norm and the output projection on all rows.
void Transformer::deltanet_batch(int layer, std::span<SequenceState* const> states) {
  const ModelConfig& c = model_.config;
  const DeltaNetWeights& d = weights().layers[size_t(layer)].linear;
  const int n = int(states.size());
  const int conv_dim = c.linear_conv_dim();
  const int nv = c.linear_num_v_heads, dv = c.linear_v_head_dim;

  matmul(d.qkv, xn_.data(), n, proj_.data());   // [n][conv_dim]
  matmul(d.z, xn_.data(), n, gate_.data());     // [n][nv * dv]
  matmul(d.b, xn_.data(), n, small_b_.data());  // [n][nv]
  matmul(d.a, xn_.data(), n, small_a_.data());  // [n][nv]
  const DeltaNetShape shape{.n_k_heads = c.linear_num_k_heads,
                            .n_v_heads = nv,
                            .k_dim = c.linear_k_head_dim,
                            .v_dim = dv,
                            .v_heads_tiled = d.v_heads_tiled};
  for (int t = 0; t < n; ++t) {
    SequenceState& s = *states[size_t(t)];
    float* qkv = proj_.data() + int64_t(t) * conv_dim;
    be_.conv1d_silu(qkv, d.conv.data(), 1, conv_dim, c.linear_conv_kernel, s.conv_state[size_t(layer)].data(),
                    qkv);
    be_.gated_delta_rule(qkv, small_a_.data() + int64_t(t) * nv, small_b_.data() + int64_t(t) * nv,
                         d.decay_scale.data(), d.dt_bias.data(), 1, shape,
                         s.recurrent_state[size_t(layer)].data(), mix_.data() + int64_t(t) * nv * dv);
  }
  be_.rms_norm_gated(mix_.data(), gate_.data(), d.norm.data(), n * nv, dv, c.rms_norm_eps, mix_.data());
  matmul(d.out, mix_.data(), n, y_.data());
}

}  // namespace fm
