// The CPU backend: every Backend operation on the host, multithreaded through one ThreadPool.
// The definitions are split by concern: matmul.cpp (matmul, embed), elementwise.cpp (norms,
// activations, rope, conv), attention.cpp, deltanet.cpp.
#pragma once
#include "ops/backend.h"
#include "util/thread_pool.h"

namespace fm {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int n_threads) : pool_(n_threads) {}
  ThreadPool& pool() { return pool_; }

  // Blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4; not Q8_0): rows interleaved by eight
  // (interleave_rows8), which the eight-row kernels read with plain loads instead of gathers and a
  // transposition; llama.cpp's CPU backend repacks these types at load the same way.
  Mat prepare_resident(const Mat& w, std::vector<std::byte>& storage) override;
  void matmul(const Mat& w, const float* x, int n, float* y) override;
  void embed(const Mat& table, const int32_t* ids, int n, float* out) override;
  void rms_norm(const float* x, const float* w, int n_rows, int dim, float eps, float* y) override;
  void rms_norm_gated(const float* x, const float* z, const float* w, int n_rows, int dim, float eps,
                      float* y) override;
  void silu_mul(const float* gate, const float* up, int64_t count, float* y) override;
  void rope(float* x, int n, int n_heads, const int32_t* positions, const RopeSpec& spec) override;
  void attention(const float* q, const float* k_cache, const float* v_cache, int n, int n_past,
                 const AttentionShape& shape, float* out) override;
  void conv1d_silu(const float* x, const float* w, int n, int channels, int width, float* state,
                   float* y) override;
  void gated_delta_rule(const float* qkv, const float* a, const float* b, const float* decay_scale,
                        const float* dt_bias, int n, const DeltaNetShape& shape, float* state,
                        float* out) override;

 private:
  ThreadPool pool_;
};

}  // namespace fm
