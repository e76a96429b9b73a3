// matmul over block-quantized weights, AVX2/FMA path: the same template as matmul_quant.cpp with the
// dot product in 8-wide FMAs. The format's scalar dequantize_block is inlined into the target
// function and compiled (and vectorized where the compiler can) for AVX2 there; as in
// matmul_avx2.cpp, only functions carry the target attribute, never the whole file.
#include <immintrin.h>

#include <algorithm>

#include "ops/cpu/matmul_quant.h"
#include "util/error.h"

// The decoded weights are the ones dequantize_row gives, bit for bit: no multiply-add of a block's
// decoding is fused here either (see quant.cpp). The dot products use explicit FMA intrinsics.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "formats/quant_blocks.h"

#define FM_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace fm::cpu::detail {

namespace {

FM_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Decodes N blocks into buf and adds their dot products with T tokens into acc; xb points at the
// blocks' first column of token 0, tokens are cols apart. U independent accumulators per token
// keep enough FMA chains in flight when T is small (4-cycle latency, two per cycle).
template <class Q, int T, int U, int N>
FM_AVX2 inline void dot_blocks(const std::byte* blocks, const float* xb, int64_t cols, float* buf,
                               __m256 (&acc)[T][U]) {
  constexpr int kBlock = Q::kBlock;
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) Q::dequantize_block(blocks + i * sizeof(typename Q::Block), buf + i * kBlock);
#pragma GCC unroll 8
  for (int c = 0; c < N * kBlock; c += 8 * U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const __m256 wv = _mm256_load_ps(buf + c + 8 * u);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t)
        acc[t][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xb + t * cols + c + 8 * u), acc[t][u]);
    }
  }
}

// Rows [r0, r1) for T tokens. Blocks of 32 are decoded four at a time: the scalar decoders store
// their values in pieces narrower than the 8-float loads that read them back, and such a load has
// to wait until those stores have left the store buffer; with 128 values between a store and its
// load most of that wait is over (measured 1.5-2x faster for Q4_0 / Q4_1 / Q5 on Zen 4).
template <class Q, int T>
FM_AVX2 void quant_rows(const Mat& w, int64_t r0, int64_t r1, const float* x, float* y, int64_t ldy) {
  constexpr int kBlock = Q::kBlock;
  constexpr uint64_t kBlockBytes = sizeof(typename Q::Block);
  constexpr int kChunk = std::max(1, 128 / kBlock);  // blocks decoded at once
  constexpr int U = T == 1 ? 4 : 2;
  static_assert(kBlock % (8 * U) == 0);
  const int64_t cols = w.cols, n_blocks = cols / kBlock;
  alignas(32) float buf[kBlock * kChunk];
  for (int64_t r = r0; r < r1; ++r) {
    const std::byte* row = w.data + uint64_t(r) * w.row_bytes;
    __m256 acc[T][U];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) acc[t][u] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + kChunk <= n_blocks; b += kChunk)
      dot_blocks<Q, T, U, kChunk>(row + uint64_t(b) * kBlockBytes, x + b * kBlock, cols, buf, acc);
    for (; b < n_blocks; ++b)
      dot_blocks<Q, T, U, 1>(row + uint64_t(b) * kBlockBytes, x + b * kBlock, cols, buf, acc);
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
FM_AVX2 void quant_tile(const Mat& w, int64_t r0, int64_t r1, const float* x, int n_tokens, float* y,
                        int64_t ldy) {
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
