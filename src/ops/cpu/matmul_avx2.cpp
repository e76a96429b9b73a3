// AVX2/FMA/F16C tile kernels for matmul. Every function that uses the vector units carries the
// target attribute instead of the file being built with -mavx2: that way no inline function from a
// header can be emitted here with AVX2 code and then picked by the linker for a scalar caller.
#include <immintrin.h>

#include <type_traits>

#include "ops/cpu/kernels.h"
#include "util/error.h"

#define FM_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace fm::cpu::detail {

namespace {

// "Load 8 weights as floats" and "load one", per stored type; the kernel is written once over these.
struct LoadF32 {
  FM_AVX2 static __m256 vec(const std::byte* row, int64_t c) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + c);
  }
  static float one(const std::byte* row, int64_t c) { return f32_at(row, c); }
};

struct LoadF16 {
  FM_AVX2 static __m256 vec(const std::byte* row, int64_t c) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c * 2)));
  }
  static float one(const std::byte* row, int64_t c) { return f16_at(row, c); }
};

struct LoadBF16 {
  // bf16 is the top half of a float32: widen each to 32 bits and shift it into place.
  FM_AVX2 static __m256 vec(const std::byte* row, int64_t c) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c * 2)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static float one(const std::byte* row, int64_t c) { return bf16_at(row, c); }
};

FM_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Register blocking per tile width T (tokens): R rows at once, U vectors of 8 columns per row and
// token per step, R * T * U independent accumulators. FMAs take 4 cycles and two issue per cycle, so
// 8 to 12 chains in flight keep the units busy while the accumulators, T input vectors and a weight
// vector still fit in 16 ymm registers. Each weight vector is converted once and used T times.
// Every width uses one row and U = 4, so each (row, token) is summed in the same order whatever the
// tile: a token's result does not depend on the tokens beside it (prefill equals token-by-token
// decoding, a batch of sequences equals each alone, to the bit). Four tokens run as two tiles of
// two (16 accumulators would not leave room for the inputs); the block of rows is still in cache.
// One row at a time also suits decode, which is bound by streaming the weights from DRAM: one
// sequential stream per thread is what the hardware prefetchers serve best (measured on Zen 4: two
// or four rows side by side stream 20-50% slower, software prefetch 10-15% slower). On the 2-core
// AMD EPYC development VM the 16-bit rows do gain from a prefetch 2 KB ahead, one a cache line
// (4096 x 14336 matvec, one core, best of 5 short timings in three rounds, G weights/s: F16
// 5.9-6.1 -> 6.8-7.3, llama.cpp 6.8-7.5; BF16 5.5-6.5 -> 6.5-6.9, llama.cpp 5.8-6.0), so they
// take it; F32 does not.
template <int T>
struct Blocking {
  static constexpr int R = 1, U = 4;
};

// y[t * ldy + i] = dot(row i, x[t]) for R rows starting at `w` and T tokens of x ([T][cols]).
template <class Load, int R, int T, int U>
FM_AVX2 void dot_rows(const std::byte* w, uint64_t row_bytes, int64_t cols, const float* x, float* y,
                      int64_t ldy) {
  __m256 acc[R][T][U];
#pragma GCC unroll 32
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 32
      for (int u = 0; u < U; ++u) acc[i][t][u] = _mm256_setzero_ps();

  int64_t c = 0;
  for (; c + 8 * U <= cols; c += 8 * U) {
    if constexpr (!std::is_same_v<Load, LoadF32> && R == 1)  // 8 * U = 32 values: one line of 16-bit ones
      _mm_prefetch(reinterpret_cast<const char*>(w) + 2 * c + 2048, _MM_HINT_T0);
#pragma GCC unroll 32
    for (int u = 0; u < U; ++u) {
#pragma GCC unroll 32
      for (int i = 0; i < R; ++i) {
        const __m256 wv = Load::vec(w + i * row_bytes, c + 8 * u);
#pragma GCC unroll 32
        for (int t = 0; t < T; ++t)
          acc[i][t][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * cols + c + 8 * u), acc[i][t][u]);
      }
    }
  }
  // Whole vectors left over when U > 1.
  for (; c + 8 <= cols; c += 8) {
#pragma GCC unroll 32
    for (int i = 0; i < R; ++i) {
      const __m256 wv = Load::vec(w + i * row_bytes, c);
#pragma GCC unroll 32
      for (int t = 0; t < T; ++t)
        acc[i][t][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * cols + c), acc[i][t][0]);
    }
  }

#pragma GCC unroll 32
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      __m256 v = acc[i][t][0];
#pragma GCC unroll 32
      for (int u = 1; u < U; ++u) v = _mm256_add_ps(v, acc[i][t][u]);
      float s = hsum(v);
      for (int64_t k = c; k < cols; ++k) s += Load::one(w + i * row_bytes, k) * x[t * cols + k];
      y[t * ldy + i] = s;
    }
  }
}

template <class Load, int T>
FM_AVX2 void tile_fixed(const Mat& w, int64_t r0, int64_t r1, const float* x, float* y, int64_t ldy) {
  constexpr int R = Blocking<T>::R, U = Blocking<T>::U;
  int64_t r = r0;
  for (; r + R <= r1; r += R)
    dot_rows<Load, R, T, U>(w.data + uint64_t(r) * w.row_bytes, w.row_bytes, w.cols, x, y + r, ldy);
  for (; r < r1; ++r)
    dot_rows<Load, 1, T, U>(w.data + uint64_t(r) * w.row_bytes, w.row_bytes, w.cols, x, y + r, ldy);
}

template <class Load>
FM_AVX2 void tile(const Mat& w, int64_t r0, int64_t r1, const float* x, int n_tokens, float* y, int64_t ldy) {
  static_assert(kMaxTileTokens == 4);
  switch (n_tokens) {
    case 1:
      return tile_fixed<Load, 1>(w, r0, r1, x, y, ldy);
    case 2:
      return tile_fixed<Load, 2>(w, r0, r1, x, y, ldy);
    case 3:
      return tile_fixed<Load, 3>(w, r0, r1, x, y, ldy);
    case 4:
      tile_fixed<Load, 2>(w, r0, r1, x, y, ldy);
      return tile_fixed<Load, 2>(w, r0, r1, x + 2 * w.cols, y + 2 * ldy, ldy);
  }
  FM_CHECK(false, "tile of {} tokens", n_tokens);
}

}  // namespace

TileKernel avx2_tile_kernel(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return tile<LoadF32>;
    case DType::F16:
      return tile<LoadF16>;
    case DType::BF16:
      return tile<LoadBF16>;
    default:
      break;
  }
  FM_CHECK(false, "no AVX2 matmul kernel for {}", dtype_name(dtype));
}

}  // namespace fm::cpu::detail
