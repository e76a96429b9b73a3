// matmul over block-quantized weights, AVX2/FMA path: the same template as matmul_quant.cpp with the
// dot product in 8-wide FMAs. The format's scalar dequantize_block is inlined into the target
// function and compiled (and vectorized where the compiler can) for AVX2 there; as in
// matmul_avx2.cpp, only functions carry the target attribute, never the whole file.
#include <immintrin.h>

#include "formats/quant_blocks.h"
#include "ops/cpu/matmul_quant.h"
#include "util/error.h"

#define FM_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace fm::cpu::detail {

namespace {

FM_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Rows [r0, r1) for T tokens. Each block is decoded into buf (in L1) and read back 8 floats at a
// time, every weight vector serving all T tokens. U independent accumulators per token keep enough
// FMA chains in flight when T is small (4-cycle latency, two per cycle).
template <class Q, int T>
FM_AVX2 void quant_rows(const Mat& w, int64_t r0, int64_t r1, const float* x, float* y, int64_t ldy) {
  constexpr int kBlock = Q::kBlock;
  constexpr uint64_t kBlockBytes = sizeof(typename Q::Block);
  constexpr int U = T == 1 ? 4 : 2;
  static_assert(kBlock % (8 * U) == 0);
  const int64_t cols = w.cols, n_blocks = cols / kBlock;
  alignas(32) float buf[kBlock];
  for (int64_t r = r0; r < r1; ++r) {
    const std::byte* row = w.data + uint64_t(r) * w.row_bytes;
    __m256 acc[T][U];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) acc[t][u] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n_blocks; ++b) {
      Q::dequantize_block(row + uint64_t(b) * kBlockBytes, buf);
      const float* xb = x + b * kBlock;
#pragma GCC unroll 8
      for (int c = 0; c < kBlock; c += 8 * U) {
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u) {
          const __m256 wv = _mm256_load_ps(buf + c + 8 * u);
#pragma GCC unroll 8
          for (int t = 0; t < T; ++t)
            acc[t][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xb + t * cols + c + 8 * u), acc[t][u]);
        }
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      __m256 v = acc[t][0];
#pragma GCC unroll 8
      for (int u = 1; u < U; ++u) v = _mm256_add_ps(v, acc[t][u]);
      y[t * ldy + r] = hsum(v);
    }
  }
}

template <class Q>
FM_AVX2 void quant_tile(const Mat& w, int64_t r0, int64_t r1, const float* x, int n_tokens, float* y, int64_t ldy) {
  static_assert(kMaxTileTokens == 4);
  switch (n_tokens) {
    case 1:
      return quant_rows<Q, 1>(w, r0, r1, x, y, ldy);
    case 2:
      return quant_rows<Q, 2>(w, r0, r1, x, y, ldy);
    case 3:
      return quant_rows<Q, 3>(w, r0, r1, x, y, ldy);
    case 4:
      return quant_rows<Q, 4>(w, r0, r1, x, y, ldy);
  }
  FM_CHECK(false, "tile of {} tokens", n_tokens);
}

}  // namespace

TileKernel avx2_quant_tile_kernel(DType dtype) {
  TileKernel kernel = nullptr;
  quant::visit_format(dtype, [&](auto q) { kernel = quant_tile<decltype(q)>; });
  FM_CHECK(kernel != nullptr, "no AVX2 matmul kernel for {}", dtype_name(dtype));
  return kernel;
}

}  // namespace fm::cpu::detail
