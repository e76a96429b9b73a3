// Norms, activations, rotary embedding and the causal conv of the CPU backend. Each works row by
// row; rows are spread over the pool when there are enough of them to pay for it.
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_backend.h"
#include "util/error.h"

namespace fm {

namespace {

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

// 1 / sqrt(mean(x^2) + eps), accumulated in double: rows are short and this keeps the reference
// comparison tight.
inline float inv_rms(const float* x, int dim, float eps) {
  double ss = 0.0;
  for (int i = 0; i < dim; ++i) ss += double(x[i]) * double(x[i]);
  return float(1.0 / std::sqrt(ss / dim + double(eps)));
}

// Rows per parallel task: enough work to amortise a dispatch.
int64_t row_grain(int dim) { return std::max<int64_t>(1, 16384 / std::max(dim, 1)); }

}  // namespace

void CpuBackend::rms_norm(const float* x, const float* w, int n_rows, int dim, float eps, float* y) {
  pool_.parallel_for(n_rows, row_grain(dim), [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * dim;
      float* yr = y + r * dim;
      const float s = inv_rms(xr, dim, eps);
      for (int i = 0; i < dim; ++i) yr[i] = xr[i] * s * w[i];
    }
  });
}

void CpuBackend::rms_norm_gated(const float* x, const float* z, const float* w, int n_rows, int dim, float eps,
                                float* y) {
  pool_.parallel_for(n_rows, row_grain(dim), [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * dim;
      const float* zr = z + r * dim;
      float* yr = y + r * dim;
      const float s = inv_rms(xr, dim, eps);
      for (int i = 0; i < dim; ++i) yr[i] = w[i] * (xr[i] * s) * silu(zr[i]);
    }
  });
}

void CpuBackend::silu_mul(const float* gate, const float* up, int64_t count, float* y) {
  pool_.parallel_for(count, 4096, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) y[i] = silu(gate[i]) * up[i];
  });
}

void CpuBackend::rope(float* x, int n, int n_heads, const int32_t* positions, const RopeSpec& spec) {
  const int half = spec.rotary_dim / 2;
  FM_CHECK(half <= 256 && spec.rotary_dim % 2 == 0 && spec.rotary_dim <= spec.head_dim, "rotary dim {}",
           spec.rotary_dim);
  // Frequencies as transformers computes them, in float32: inv_freq = 1 / theta^(2i / rotary_dim),
  // angle = float(position) * inv_freq.
  float inv_freq[256];
  for (int i = 0; i < half; ++i)
    inv_freq[i] = 1.0f / std::pow(spec.theta, float(2 * i) / float(spec.rotary_dim));
  pool_.parallel_for(n, 1, [&](int64_t t0, int64_t t1, int) {
    float cs[256], sn[256];
    for (int64_t t = t0; t < t1; ++t) {
      for (int i = 0; i < half; ++i) {
        const float angle = float(positions[t]) * inv_freq[i];
        cs[i] = std::cos(angle);
        sn[i] = std::sin(angle);
      }
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + (t * n_heads + h) * int64_t(spec.head_dim);
        for (int i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * cs[i] - b * sn[i];
          v[i + half] = b * cs[i] + a * sn[i];
        }
      }
    }
  });
}

void CpuBackend::conv1d_silu(const float* x, const float* w, int n, int channels, int width, float* state,
                             float* y) {
  const int hist = width - 1;
  FM_CHECK(width >= 1 && width <= 16, "conv width {}", width);
  pool_.parallel_for(channels, 256, [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c) {
      const float* wc = w + c * width;
      float window[16];  // the last `hist` raw inputs of this channel, oldest first
      for (int j = 0; j < hist; ++j) window[j] = state[int64_t(j) * channels + c];
      for (int t = 0; t < n; ++t) {
        const float cur = x[int64_t(t) * channels + c];
        float acc = wc[hist] * cur;
        for (int j = 0; j < hist; ++j) acc += wc[j] * window[j];
        for (int j = 0; j + 1 < hist; ++j) window[j] = window[j + 1];
        if (hist > 0) window[hist - 1] = cur;
        y[int64_t(t) * channels + c] = silu(acc);
      }
      for (int j = 0; j < hist; ++j) state[int64_t(j) * channels + c] = window[j];
    }
  });
}

}  // namespace fm
