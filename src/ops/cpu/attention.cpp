// Causal softmax attention over the KV cache, one (query, head) pair per task. Online softmax
// (running max and sum, one pass over the keys), so no score buffer of context length is needed.
#include <cmath>

#include "ops/cpu/cpu_backend.h"
#include "util/error.h"

namespace fm {

void CpuBackend::attention(const float* q, const float* k_cache, const float* v_cache, int n, int n_past,
                           const AttentionShape& shape, float* out) {
  const int hd = shape.head_dim;
  const int group = shape.n_heads / shape.n_kv_heads;  // query heads per KV head (h / group -> kv head)
  const int64_t q_stride = int64_t(shape.n_heads) * hd;
  const int64_t kv_stride = int64_t(shape.n_kv_heads) * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  FM_CHECK(hd <= 512, "head_dim {}", hd);
  pool_.parallel_for(int64_t(n) * shape.n_heads, 1, [&](int64_t i0, int64_t i1, int) {
    float acc[512];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / shape.n_heads;
      const int h = int(i % shape.n_heads);
      const float* qh = q + t * q_stride + int64_t(h) * hd;
      const int64_t kv_off = int64_t(h / group) * hd;
      const int64_t n_keys = n_past + t + 1;  // causal: keys up to and including this position
      float running_max = -INFINITY, running_sum = 0.0f;
      for (int d = 0; d < hd; ++d) acc[d] = 0.0f;
      for (int64_t j = 0; j < n_keys; ++j) {
        const float* kj = k_cache + j * kv_stride + kv_off;
        float s = 0.0f;
        for (int d = 0; d < hd; ++d) s += qh[d] * kj[d];
        s *= scale;
        const float* vj = v_cache + j * kv_stride + kv_off;
        if (s > running_max) {
          const float r = std::exp(running_max - s);  // rescale what was accumulated so far
          running_sum = running_sum * r + 1.0f;
          for (int d = 0; d < hd; ++d) acc[d] = acc[d] * r + vj[d];
          running_max = s;
        } else {
          const float p = std::exp(s - running_max);
          running_sum += p;
          for (int d = 0; d < hd; ++d) acc[d] += p * vj[d];
        }
      }
      float* oh = out + t * q_stride + int64_t(h) * hd;
      const float inv = 1.0f / running_sum;
      for (int d = 0; d < hd; ++d) oh[d] = acc[d] * inv;
    }
  });
}

}  // namespace fm
