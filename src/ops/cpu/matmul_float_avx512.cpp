// AVX-512 tile kernels for F16 and BF16 weights: 16 weights widened to float32 per instruction
// (vcvtph2ps; for bf16 a zero-extension and a shift), then one FMA with the float32 activations.
// The products and sums are float32 as in the AVX2 and scalar kernels; only the order differs (16
// lanes, two partial sums per row and token). Only functions carry the target attribute, and
// matmul.cpp takes this path only where have_avx512_float() says the CPU has it.
//
// Decode (one token) is bound by streaming the weights from DRAM. What limits one core is how many
// cache-line misses it keeps in flight, and the activation vector competes for them once it no
// longer fits in L1 (cols > 4096 floats: wide down projections, the 14336-column benchmark). So:
// - narrow rows (the activation fits in L1, as for the experts' 512..4096 columns): one row at a
//   time, a single sequential stream through memory. Interleaving 2-8 rows there cost up to half
//   the speed of cold expert-sized matrices (2048 x 512, 1 thread: 7.5 -> 3.5 G weights/s).
// - wide rows: 8 rows side by side per token, so each activation vector loaded serves 8 rows
//   (4096 x 14336 bf16, 1 thread: 2.7 -> 5.8 G weights/s against one row at a time, machine
//   loaded; R = 2, 4, 16 and software prefetch measured slower).
// Measured on the 2-core Zen 4 development VM, variants side by side in interleaved rounds;
// docs/benchmarks.md has the bench_quant (against llama.cpp) and bench_matmul numbers.
//
// Every (row, token) is summed in the same order whatever the tile width and the number of rows
// side by side: two accumulators of 16 lanes over steps of 32 columns, a last whole vector into
// the first, a masked partial vector into the second, then their sum reduced. So a token's
// result does not depend on the tokens beside it (batched decoding equals each sequence alone).
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "ops/cpu/kernels.h"
#include "util/error.h"

#define FM_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))

namespace fm::cpu::detail {

namespace {

// All 16 lanes. The zero-masked forms of the intrinsics with this mask are the plain instructions;
// GCC 12's unmasked ones start from an "undefined" register that -Wuninitialized rejects.
constexpr __mmask16 kAll = 0xFFFF;

// "Load 16 weights as floats", whole or the first lanes of `mask` (the rest read as 0, and not
// read from memory at all, so a row's last partial vector never touches the bytes after it).
struct LoadF16 {
  FM_AVX512 static __m512 vec(const std::byte* row, int64_t c) {
    return _mm512_maskz_cvtph_ps(kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c * 2)));
  }
  FM_AVX512 static __m512 part(const std::byte* row, int64_t c, __mmask16 mask) {
    return _mm512_maskz_cvtph_ps(kAll, _mm256_maskz_loadu_epi16(mask, row + c * 2));
  }
};

struct LoadBF16 {
  // bf16 is the top half of a float32: widen each to 32 bits and shift it into place.
  FM_AVX512 static __m512 widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, _mm512_maskz_cvtepu16_epi32(kAll, h), 16));
  }
  FM_AVX512 static __m512 vec(const std::byte* row, int64_t c) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c * 2)));
  }
  FM_AVX512 static __m512 part(const std::byte* row, int64_t c, __mmask16 mask) {
    return widen(_mm256_maskz_loadu_epi16(mask, row + c * 2));
  }
};

// The sum of the 16 lanes, always in the same order.
FM_AVX512 inline float hsum(__m512 v) {
  const __m512d d = _mm512_castps_pd(v);
  const __m256 s8 = _mm256_add_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, d, 0)),
                                  _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, d, 1)));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// y[t * ldy + i] = dot(row i, x[t]) for R rows starting at `w` and T tokens of x (token t at
// x + t * ldx). R * T * 2 accumulators, at most 16 of the 32 registers.
template <class Load, int R, int T>
FM_AVX512 void dot_rows(const std::byte* w, uint64_t row_bytes, int64_t cols, const float* x, int64_t ldx,
                        float* y, int64_t ldy) {
  static_assert(R * T <= 8);
  __m512 acc[R][T][2];
#pragma GCC unroll 32
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) acc[i][t][0] = acc[i][t][1] = _mm512_setzero_ps();

  int64_t c = 0;
  for (; c + 32 <= cols; c += 32) {
#pragma GCC unroll 2
    for (int u = 0; u < 2; ++u) {
#pragma GCC unroll 32
      for (int i = 0; i < R; ++i) {
        const __m512 wv = Load::vec(w + i * row_bytes, c + 16 * u);
#pragma GCC unroll 32
        for (int t = 0; t < T; ++t)
          acc[i][t][u] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * ldx + c + 16 * u), acc[i][t][u]);
      }
    }
  }
  if (c + 16 <= cols) {
#pragma GCC unroll 32
    for (int i = 0; i < R; ++i) {
      const __m512 wv = Load::vec(w + i * row_bytes, c);
#pragma GCC unroll 32
      for (int t = 0; t < T; ++t)
        acc[i][t][0] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * ldx + c), acc[i][t][0]);
    }
    c += 16;
  }
  if (c < cols) {
    const __mmask16 mask = __mmask16((1u << (cols - c)) - 1);
#pragma GCC unroll 32
    for (int i = 0; i < R; ++i) {
      const __m512 wv = Load::part(w + i * row_bytes, c, mask);
#pragma GCC unroll 32
      for (int t = 0; t < T; ++t)
        acc[i][t][1] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, x + t * ldx + c), acc[i][t][1]);
    }
  }

#pragma GCC unroll 32
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) y[t * ldy + i] = hsum(_mm512_add_ps(acc[i][t][0], acc[i][t][1]));
}

// Rows [r0, r1) for T tokens, R rows side by side (the last r1 - r0 mod R one at a time).
template <class Load, int R, int T>
FM_AVX512 void tile_rows(const Mat& w, int64_t r0, int64_t r1, const float* x, int64_t ldx, float* y,
                         int64_t ldy) {
  int64_t r = r0;
  if constexpr (R > 1)
    for (; r + R <= r1; r += R)
      dot_rows<Load, R, T>(w.data + uint64_t(r) * w.row_bytes, w.row_bytes, w.cols, x, ldx, y + r, ldy);
  for (; r < r1; ++r)
    dot_rows<Load, 1, T>(w.data + uint64_t(r) * w.row_bytes, w.row_bytes, w.cols, x, ldx, y + r, ldy);
}

// Rows whose activation (float32) is wider than this take several rows side by side (see the top).
constexpr int64_t kInterleaveCols = 4096;

template <class Load, int T>
FM_AVX512 void tile_fixed(const Mat& w, int64_t r0, int64_t r1, const float* x, int64_t ldx, float* y,
                          int64_t ldy) {
  if (w.cols > kInterleaveCols)
    tile_rows<Load, 8 / T, T>(w, r0, r1, x, ldx, y, ldy);
  else
    tile_rows<Load, 1, T>(w, r0, r1, x, ldx, y, ldy);
}

// The activation rows, each starting on a cache line: x itself when it does, else a copy in the
// calling thread's scratch (it grows to the largest tile the thread has seen and is then reused:
// no allocation in steady decoding). A 64-byte load that straddles two lines costs two; with
// float32 activations that is one load per 16 weights, and it cost 10-25% of the one-token speed
// of cold 2048 x 2048 and 4096 x 4096 matrices (activations from malloc, 16 bytes past a line).
const float* aligned_rows(const float* x, int n_tokens, int64_t cols, int64_t& ldx) {
  constexpr uintptr_t kLine = 64;
  ldx = cols;
  if (reinterpret_cast<uintptr_t>(x) % kLine == 0 && (n_tokens == 1 || cols % 16 == 0)) return x;
  ldx = (cols + 15) / 16 * 16;
  thread_local std::vector<float> scratch;
  const size_t need = static_cast<size_t>(n_tokens * ldx) + kLine / sizeof(float);
  if (scratch.size() < need) scratch.resize(need);
  float* out =
      scratch.data() + (kLine - reinterpret_cast<uintptr_t>(scratch.data()) % kLine) % kLine / sizeof(float);
  for (int t = 0; t < n_tokens; ++t)
    std::memcpy(out + t * ldx, x + t * cols, static_cast<size_t>(cols) * sizeof(float));
  return out;
}

template <class Load>
FM_AVX512 void tile(const Mat& w, int64_t r0, int64_t r1, const float* x_in, int n_tokens, float* y,
                    int64_t ldy) {
  static_assert(kMaxTileTokens == 4);
  int64_t ldx = 0;
  const float* x = aligned_rows(x_in, n_tokens, w.cols, ldx);
  switch (n_tokens) {
    case 1:
      return tile_fixed<Load, 1>(w, r0, r1, x, ldx, y, ldy);
    case 2:
      return tile_fixed<Load, 2>(w, r0, r1, x, ldx, y, ldy);
    case 3:
      return tile_fixed<Load, 3>(w, r0, r1, x, ldx, y, ldy);
    case 4:
      return tile_fixed<Load, 4>(w, r0, r1, x, ldx, y, ldy);
  }
  FM_CHECK(false, "tile of {} tokens", n_tokens);
}

}  // namespace

bool have_avx512_float() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx512f") &&
                           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return have;
#else
  return false;
#endif
}

TileKernel avx512_tile_kernel(DType dtype) {
  switch (dtype) {
    case DType::F16:
      return tile<LoadF16>;
    case DType::BF16:
      return tile<LoadBF16>;
    default:
      break;
  }
  FM_CHECK(false, "no AVX-512 matmul kernel for {}", dtype_name(dtype));
}

}  // namespace fm::cpu::detail
