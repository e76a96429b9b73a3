// The compute seam. Model code (src/model) states the math through these operations and never
// touches SIMD, threads or devices; each backend (CPU now, CUDA later) implements all of them.
// Activations are float32, row-major, one row per token. Pointers are the backend's memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ops/mat.h"

namespace fm {

struct RopeSpec {
  int head_dim = 0;
  int rotary_dim = 0;  // the first rotary_dim dims of each head rotate, NeoX pairing (i, i + rotary_dim/2)
  float theta = 10000.0f;
};

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
};

struct DeltaNetShape {
  int n_k_heads = 0;
  int n_v_heads = 0;  // multiple of n_k_heads
  int k_dim = 0;
  int v_dim = 0;
  bool v_heads_tiled = false;  // K head of V head h: h % n_k_heads if tiled (GGUF order), else h / (n_v/n_k)
};

class Backend {
 public:
  virtual ~Backend() = default;

  // A weight matrix that stays resident for the model's life (not a streamed expert), in the layout
  // this backend computes fastest with: w itself, or a copy made in `storage`, which the caller keeps
  // as long as it uses the result. Called once per matrix at load.
  virtual Mat prepare_resident(const Mat& w, std::vector<std::byte>& storage) {
    (void)storage;
    return w;
  }

  // y[t][r] = sum_c w[r][c] * x[t][c] for t < n; x is [n][w.cols], y is [n][w.rows].
  virtual void matmul(const Mat& w, const float* x, int n, float* y) = 0;
  // out[t] = row ids[t] of the table, as float32.
  virtual void embed(const Mat& table, const int32_t* ids, int n, float* out) = 0;
  // y = x * rsqrt(mean(x^2) + eps) * w, per row of `dim` (y may alias x).
  virtual void rms_norm(const float* x, const float* w, int n_rows, int dim, float eps, float* y) = 0;
  // y = w * rms_normalise(x) * silu(z), per row of `dim` (y may alias x).
  virtual void rms_norm_gated(const float* x, const float* z, const float* w, int n_rows, int dim, float eps,
                              float* y) = 0;
  // y[i] = silu(gate[i]) * up[i]; the [n][2*dim] input holds gate then up per row when fused.
  virtual void silu_mul(const float* gate, const float* up, int64_t count, float* y) = 0;
  // In place on x [n][n_heads * head_dim] at the given positions.
  virtual void rope(float* x, int n, int n_heads, const int32_t* positions, const RopeSpec& spec) = 0;
  // Causal attention of n new queries at positions [n_past, n_past + n) over a cache that already
  // holds their keys/values: q [n][n_heads*head_dim], k_cache/v_cache [n_past+n][n_kv_heads*head_dim],
  // out [n][n_heads*head_dim].
  virtual void attention(const float* q, const float* k_cache, const float* v_cache, int n, int n_past,
                         const AttentionShape& shape, float* out) = 0;
  // Causal depthwise conv1d + SiLU over n tokens of `channels` with a kernel of `width`, continuing
  // from `state` ([width-1][channels], the previous raw inputs, oldest first), which is updated.
  // w is [channels][width], the last tap multiplying the current token.
  virtual void conv1d_silu(const float* x, const float* w, int n, int channels, int width, float* state,
                           float* y) = 0;
  // Gated delta rule over n tokens. qkv [n][conv_dim] (q | k | v after the conv), a/b [n][n_v_heads]
  // raw projections; decay_scale = -exp(A_log) and dt_bias [n_v_heads]; state [n_v_heads][k_dim][v_dim] updated in place;
  // out [n][n_v_heads * v_dim].
  virtual void gated_delta_rule(const float* qkv, const float* a, const float* b, const float* decay_scale,
                                const float* dt_bias, int n, const DeltaNetShape& shape, float* state,
                                float* out) = 0;
};

}  // namespace fm
