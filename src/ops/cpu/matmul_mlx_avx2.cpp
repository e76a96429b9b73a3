// AVX2/FMA kernels for MLX affine-quantized weights. 8 consecutive values of b bits are b whole
// bytes (32 values, a chunk, are b uint32 words), so each group of 8 is one small load: values 0-3
// lie in its low 32 bits, values 4-7 in the 32 bits from bit 4b, and one variable shift per lane
// (vpsrlvd) plus a mask frees all 8 for every bit width, 3 and 6 included. The levels become
// weights as level * scale + bias (multiply, then add: the values dequantize_mlx_row gives), each
// used for every token of the tile. As in the other AVX2 files, functions carry the target
// attribute rather than the file being built with -mavx2.
//
// Measured (4096 x 4096, group 64, bf16 scales, 2 threads, a 16-core Xeon otherwise idle): MLX4
// 1.54 ms for 1 token, 3.49 ms for 4; MLX3 2.96 / 4.52; MLX8 1.68 / 3.78; Q4_K (int8 dot products)
// 0.72 / 1.45. Decoding and the float FMAs bound it, not memory; an integer-dot variant (levels
// times 8-bit activations, scale and bias applied per group) is the next step.
#include <immintrin.h>

#include <cstring>

#include "ops/cpu/matmul_mlx.h"
#include "util/error.h"

// The weights are level * scale + bias in one FMA: with BF16 or F16 scales the product of a level
// (<= 8 bits) and a scale (<= 11 significant bits) is exact, so this is the value dequantize_mlx_row
// gives (product rounded, then the add) bit for bit; with F32 scales it may differ in the last bit.

#define FM_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace fm::cpu::detail {

namespace {

FM_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 8 levels stored in the kBits bytes at p, as floats.
template <int kBits>
FM_AVX2 inline __m256 levels8(const std::byte* p) {
  // Whole loads of 1, 2 and 4 bytes: a memcpy of 3 or 6 bytes into a word goes through the stack
  // and stalls store forwarding (MLX3 matmul measured 10x slower that way).
  uint64_t bits;
  if constexpr (kBits == 3 || kBits == 6) {
    uint16_t head;
    std::memcpy(&head, p + kBits - 2, 2);
    uint32_t low = 0;
    if constexpr (kBits == 3)
      low = uint8_t(p[0]);
    else
      std::memcpy(&low, p, 4);
    bits = uint64_t(low) | uint64_t(head) << (8 * (kBits - 2));
  } else {
    bits = 0;
    std::memcpy(&bits, p, kBits);
  }
  const __m256i src = _mm256_set_m128i(_mm_set1_epi32(int(uint32_t(bits >> (4 * kBits)))),
                                       _mm_set1_epi32(int(uint32_t(bits))));
  const __m256i shifts = _mm256_setr_epi32(0, kBits, 2 * kBits, 3 * kBits, 0, kBits, 2 * kBits, 3 * kBits);
  const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(src, shifts), _mm256_set1_epi32((1 << kBits) - 1));
  return _mm256_cvtepi32_ps(q);
}

// The 32 levels of a chunk (kBits * 4 bytes at p) as four vectors of 8 floats. 4 and 8 bits, the
// common widths, unpack whole bytes at once.
template <int kBits>
FM_AVX2 inline void levels32(const std::byte* p, __m256* lv) {
  if constexpr (kBits == 4) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(bytes, mask), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    const __m128i v0 = _mm_unpacklo_epi8(lo, hi), v1 = _mm_unpackhi_epi8(lo, hi);  // values 0-15, 16-31
    lv[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v0));
    lv[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v0, 8)));
    lv[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v1));
    lv[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v1, 8)));
  } else if constexpr (kBits == 8) {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k)
      lv[k] = _mm256_cvtepi32_ps(
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * k))));
  } else {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) lv[k] = levels8<kBits>(p + k * kBits);
  }
}

// Rows [r0, r1) for T tokens: per row, four accumulators per token (one per 8 values of a chunk).
template <int kBits, float (*param)(const std::byte*, int64_t), int T>
FM_AVX2 void mlx_rows(const Mat& w, int64_t r0, int64_t r1, const float* x, float* y, int64_t ldy) {
  const int64_t cols = w.cols, group = w.mlx.group, n_groups = cols / group;
  for (int64_t r = r0; r < r1; ++r) {
    const std::byte* row = w.data + uint64_t(r) * w.row_bytes;
    const std::byte* scales = w.mlx.scales + uint64_t(r) * w.mlx.row_bytes;
    const std::byte* biases = w.mlx.biases + uint64_t(r) * w.mlx.row_bytes;
    __m256 acc[T][4];
    for (int t = 0; t < T; ++t)
      for (int k = 0; k < 4; ++k) acc[t][k] = _mm256_setzero_ps();
    for (int64_t g = 0; g < n_groups; ++g) {
      const __m256 s = _mm256_set1_ps(param(scales, g)), b = _mm256_set1_ps(param(biases, g));
      for (int64_t c = g * group; c < (g + 1) * group; c += 32) {
        __m256 lv[4];
        levels32<kBits>(row + c / 8 * kBits, lv);  // keeps the 4 vectors in registers once unrolled
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          const __m256 wv = _mm256_fmadd_ps(lv[k], s, b);
#pragma GCC unroll 4
          for (int t = 0; t < T; ++t)
            acc[t][k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * cols + c + 8 * k), acc[t][k]);
        }
      }
    }
    for (int t = 0; t < T; ++t)
      y[t * ldy + r] = hsum(_mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]), _mm256_add_ps(acc[t][2], acc[t][3])));
  }
}

template <int kBits, float (*param)(const std::byte*, int64_t)>
void mlx_tile_of(const Mat& w, int64_t r0, int64_t r1, const float* x, int n_tokens, float* y, int64_t ldy) {
  switch (n_tokens) {
    case 1: return mlx_rows<kBits, param, 1>(w, r0, r1, x, y, ldy);
    case 2: return mlx_rows<kBits, param, 2>(w, r0, r1, x, y, ldy);
    case 3: return mlx_rows<kBits, param, 3>(w, r0, r1, x, y, ldy);
    case 4: return mlx_rows<kBits, param, 4>(w, r0, r1, x, y, ldy);
    default: break;
  }
  static_assert(kMaxTileTokens == 4);
  FM_CHECK(false, "tile of {} tokens", n_tokens);
}

template <int kBits>
void mlx_tile(const Mat& w, int64_t r0, int64_t r1, const float* x, int n_tokens, float* y, int64_t ldy) {
  switch (w.mlx.dtype) {
    case DType::BF16: return mlx_tile_of<kBits, bf16_at>(w, r0, r1, x, n_tokens, y, ldy);
    case DType::F16: return mlx_tile_of<kBits, f16_at>(w, r0, r1, x, n_tokens, y, ldy);
    case DType::F32: return mlx_tile_of<kBits, f32_at>(w, r0, r1, x, n_tokens, y, ldy);
    default: break;
  }
  FM_CHECK(false, "MLX scales of type {}", dtype_name(w.mlx.dtype));
}

}  // namespace

TileKernel avx2_mlx_tile_kernel(DType dtype) {
  switch (dtype) {
    case DType::MLX2: return mlx_tile<2>;
    case DType::MLX3: return mlx_tile<3>;
    case DType::MLX4: return mlx_tile<4>;
    case DType::MLX6: return mlx_tile<6>;
    case DType::MLX8: return mlx_tile<8>;
    default: break;
  }
  FM_CHECK(false, "not an MLX type: {}", dtype_name(dtype));
}

}  // namespace fm::cpu::detail
