// Gated DeltaNet recurrence (Qwen3.5 linear attention), token by token, one V head per task.
// Per token t and V head h, with K head kh serving it:
//   q, k = l2norm(q_kh), l2norm(k_kh);  q *= dk^-1/2
//   beta = sigmoid(b_h);  g = decay_scale_h * softplus(a_h + dt_bias_h);  S_h *= exp(g)
//   m = S_h^T k;  delta = beta (v_h - m);  S_h += k delta^T;  o_h = S_h^T q
// S_h is [dk][dv] float32. The prefill uses the same recurrence as decoding; transformers' chunked
// form is the same math.
#include <cmath>

#include "ops/cpu/cpu_backend.h"
#include "util/error.h"

namespace fm {

namespace {

inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }  // torch's threshold

// x * rsqrt(sum x^2 + 1e-6), as transformers' l2norm.
inline void l2_normalise(const float* x, int n, float scale, float* y) {
  double ss = 0.0;
  for (int i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const float s = float(1.0 / std::sqrt(ss + 1e-6)) * scale;
  for (int i = 0; i < n; ++i) y[i] = x[i] * s;
}

}  // namespace

void CpuBackend::gated_delta_rule(const float* qkv, const float* a, const float* b, const float* decay_scale,
                                  const float* dt_bias, int n, const DeltaNetShape& shape, float* state,
                                  float* out) {
  const int dk = shape.k_dim, dv = shape.v_dim, nk = shape.n_k_heads, nv = shape.n_v_heads;
  FM_CHECK(dk <= 512 && dv <= 512 && nv % nk == 0, "deltanet shape dk {} dv {} nk {} nv {}", dk, dv, nk, nv);
  const int64_t conv_dim = 2 * int64_t(nk) * dk + int64_t(nv) * dv;
  const int ratio = nv / nk;
  const float q_scale = 1.0f / std::sqrt(float(dk));
  pool_.parallel_for(nv, 1, [&](int64_t h0, int64_t h1, int) {
    float q[512], k[512], delta[512];
    for (int64_t h = h0; h < h1; ++h) {
      const int kh = shape.v_heads_tiled ? int(h % nk) : int(h / ratio);
      float* S = state + h * int64_t(dk) * dv;
      for (int t = 0; t < n; ++t) {
        const float* row = qkv + int64_t(t) * conv_dim;
        l2_normalise(row + int64_t(kh) * dk, dk, q_scale, q);
        l2_normalise(row + int64_t(nk) * dk + int64_t(kh) * dk, dk, 1.0f, k);
        const float* v = row + 2 * int64_t(nk) * dk + h * dv;
        const float beta = 1.0f / (1.0f + std::exp(-b[int64_t(t) * nv + h]));
        const float alpha = std::exp(decay_scale[h] * softplus(a[int64_t(t) * nv + h] + dt_bias[h]));
        // Decay the state and read it with k in one pass.
        for (int j = 0; j < dv; ++j) delta[j] = 0.0f;
        for (int i = 0; i < dk; ++i) {
          float* Si = S + int64_t(i) * dv;
          const float ki = k[i];
          for (int j = 0; j < dv; ++j) {
            Si[j] *= alpha;
            delta[j] += Si[j] * ki;
          }
        }
        for (int j = 0; j < dv; ++j) delta[j] = beta * (v[j] - delta[j]);
        // Write k delta^T and read the updated state with q.
        float* o = out + int64_t(t) * nv * dv + h * dv;
        for (int j = 0; j < dv; ++j) o[j] = 0.0f;
        for (int i = 0; i < dk; ++i) {
          float* Si = S + int64_t(i) * dv;
          const float ki = k[i], qi = q[i];
          for (int j = 0; j < dv; ++j) {
            Si[j] += ki * delta[j];
            o[j] += Si[j] * qi;
          }
        }
      }
    }
  });
}

}  // namespace fm
