// The x86 vector kernels of matmul over MLX affine-quantized weights (DType::MLX2..MLX8: per group of
// 32, 64 or 128 values of a row, w = scale * level + bias with unsigned b-bit levels), run the way
// llama.cpp runs Q4_1: the activation row is quantized once per call to 8-bit blocks of 32
// (quant_act.h, ActBlock32: x ~= dx * q, with s = dx * sum q), and each chunk of 32 weights is
//
//   sum_i w_i x_i ~= scale * dx * sum_i level_i q_i  +  bias * s
//
// with the level-by-activation sum exact in integers (vpmaddubsw + vpmaddwd, or VNNI vpdpbusd). The
// error is that of the activation rounding alone, as for the GGUF types (each x moves by at most
// max|x_block| / 254; tests/unit/test_mlx.cpp checks that bound against the float reference). The
// exact float path is the portable kernel of matmul_mlx.cpp (cpu::set_force_scalar).
//
// matmul_quant_avx2.cpp and matmul_quant_avx512.cpp include this with matmul_quant_x86.h, whose
// primitives (dot_bytes, the activation quantizer) it uses, so it is built for both instruction sets.
// Both compute the same integer sums and the same float operations, so the same bits.
//
// Levels are decoded to unsigned bytes: 4 bits as the low nibbles of the chunk's 16 bytes, then the
// high ones (elements 0, 2, .., 30, then 1, 3, .., 31), 2 bits as the k-th bit pair of its 8 bytes in
// the k-th 8 lanes (elements k, 4 + k, .., 28 + k), with the activation blocks quantized in the same
// order (mlx_quantize_act permutes them once per call; the integer sums are the same); 8 bits as
// they are (minus 128, as signed bytes whose signs move onto the activations, since vpmaddubsw pairs
// of 255 * 127 would saturate); 3 and 6 bits in element order, by one byte shuffle that puts the two
// bytes holding each level in a 16-bit lane, a multiply that shifts it into place and a pack. Products
// never saturate: levels <= 63 (or |level - 128| <= 128) with |q| <= 127. (4 and 2 bits had been
// decoded in element order too, by nibble unpacking and by the 3- and 6-bit way: 4096 x 14336, one
// thread of a Zen 4, AVX-512, best of 3 in CPU time, MLX4 g64 15.1 -> 16.4 Gw/s and MLX2 g64 19.6 ->
// 28.6 with the permuted activations. Precomputing each group's activation sum per call and taking
// the bias terms as a vector dot product made no difference that this shared machine could measure.)
//
// Every (row, token) pair is summed in the same order whatever the number of tokens in the tile:
// chunks alternate between two vector accumulators, and the bias terms of each group go into two
// scalar sums by group parity (two dependency chains per row, each half as long).
#pragma once

#include <array>

#include "ops/cpu/matmul_quant_x86.h"  // the primitives; it checks FM_SIMD and FM_QUANT_AVX512

namespace fm::cpu::detail {

namespace {

// The shuffle and multiplier constants of the 3- and 6-bit decoders. The 32 levels of a chunk
// (4 * kBits bytes) come as two vectors of 16-bit lanes: lo holds levels 0-7 (low 128 bits) and
// 16-23 (high), hi holds 8-15 and 24-31, so that one vpackuswb gives them in element order. The low
// 128 bits of the source hold the chunk's bytes from 0, the high ones its bytes from kHighBase.
template <int kBits>
struct MlxUnpack {
  static constexpr int kHighBase = kBits == 3 ? 4 : 8;
  std::array<uint8_t, 32> shuffle_lo{}, shuffle_hi{};
  std::array<int16_t, 16> mul_lo{}, mul_hi{};
  constexpr MlxUnpack() {
    for (int lane = 0; lane < 2; ++lane)
      for (int w = 0; w < 8; ++w)
        for (int half = 0; half < 2; ++half) {
          const int level = 16 * lane + 8 * half + w, bit = level * kBits, byte = bit / 8 - lane * kHighBase;
          auto& shuffle = half == 0 ? shuffle_lo : shuffle_hi;
          auto& mul = half == 0 ? mul_lo : mul_hi;
          shuffle[16 * lane + 2 * w] = uint8_t(byte);
          // The next byte only where the level reaches into it (else zero: never out of the lane).
          shuffle[16 * lane + 2 * w + 1] = bit % 8 + kBits > 8 ? uint8_t(byte + 1) : uint8_t(0x80);
          mul[8 * lane + w] = int16_t(1 << (8 - bit % 8));  // (v << (8 - shift)) >> 8 = v >> shift
        }
  }
};
template <int kBits>
inline constexpr MlxUnpack<kBits> kMlxUnpack;

// The 32 levels of one chunk (4 * kBits bytes at p; reads no byte beyond them) as unsigned bytes, in
// the order of mlx_quantize_act.
template <int kBits>
FM_BLOCK inline __m256i mlx_levels(const uint8_t* p) {
  if constexpr (kBits == 8) {
    return loadu(p);
  } else if constexpr (kBits == 4) {  // byte j: level 2j in the low nibble, 2j + 1 in the high one
    return nibbles32(p);
  } else if constexpr (kBits == 2) {  // byte j: level 4j + k in bits 2k, 2k + 1
    return _mm256_and_si256(
        _mm256_srlv_epi64(_mm256_set1_epi64x(int64_t(load_u64(p))), _mm256_setr_epi64x(0, 2, 4, 6)),
        _mm256_set1_epi8(3));
  } else {
    static_assert(kBits == 3 || kBits == 6);
    constexpr const MlxUnpack<kBits>& k = kMlxUnpack<kBits>;
    __m256i src;
    if constexpr (kBits == 3) {  // bytes 0-7 and 4-11
      src = _mm256_set_m128i(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 4)),
                             _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    } else {  // bytes 0-15 and 8-23
      src = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)),
                             _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    const __m256i lo = _mm256_srli_epi16(
        _mm256_mullo_epi16(_mm256_shuffle_epi8(src, loadu(k.shuffle_lo.data())), loadu(k.mul_lo.data())), 8);
    const __m256i hi = _mm256_srli_epi16(
        _mm256_mullo_epi16(_mm256_shuffle_epi8(src, loadu(k.shuffle_hi.data())), loadu(k.mul_hi.data())), 8);
    return _mm256_and_si256(_mm256_packus_epi16(lo, hi), _mm256_set1_epi8(char((1 << kBits) - 1)));
  }
}

// The activation row quantized to blocks of 32 (quant_act.h), each block's bytes then put in the
// order mlx_levels decodes the levels in: 4 bits: elements 0, 2, .., 30, 1, 3, .., 31; 2 bits:
// 0, 4, .., 28, 1, 5, .., 29, 2, .., 3, .., 31.
template <int kBits>
FM_SIMD void mlx_quantize_act(const float* x, int64_t cols, std::byte* out) {
  simd_quantize_act<32>(x, cols, out);
  if constexpr (kBits == 2 || kBits == 4) {
    // Within each 128 bits, then across: 4 bits: the even bytes, then the odd ones (dwords 0 1 4 5,
    // then 2 3 6 7); 2 bits: bytes k, 4 + k, 8 + k, 12 + k as dword k (then dwords 0 4 1 5 2 6 3 7).
    const __m256i in_lane = kBits == 4
                                ? _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2,
                                                   4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15)
                                : _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4,
                                                   8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i across =
        kBits == 4 ? _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7) : _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    auto* blocks = reinterpret_cast<ActBlock32*>(out);
    for (int64_t b = 0; b < cols / 32; ++b) {
      const __m256i v =
          _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(loadu(blocks[b].qs), in_lane), across);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(blocks[b].qs), v);
    }
  }
}

// Group parameter g of a row of scales or biases, per stored type.
template <DType kParam>
FM_SIMD inline float mlx_param(const std::byte* p, int64_t g) {
  if constexpr (kParam == DType::F32) {
    float v;
    std::memcpy(&v, p + 4 * g, 4);
    return v;
  } else {
    uint16_t h;
    std::memcpy(&h, p + 2 * g, 2);
    if constexpr (kParam == DType::F16) return f16(h);
    const uint32_t bits = uint32_t(h) << 16;
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
}

// One group g (kChunks chunks of 32) of a row for T tokens. Chunk c goes to accumulator set c % 2,
// or G (the group's parity) for groups of one chunk; the group's bias term to scalar set G.
template <int kBits, DType kParam, int kChunks, int G, int T>
FM_BLOCK inline void mlx_group(const uint8_t* row, const std::byte* scales, const std::byte* biases,
                               int64_t g, const ActBlock32* const (&x)[T], __m256 (&acc)[2][T],
                               float (&corr)[2][T]) {
  const float scale = mlx_param<kParam>(scales, g);
  // 8 bits: the levels are taken minus 128, so the bias takes the 128 back.
  const float bias =
      kBits == 8 ? mlx_param<kParam>(biases, g) + 128.0f * scale : mlx_param<kParam>(biases, g);
  float xsum[T];
  for (int t = 0; t < T; ++t) xsum[t] = 0.0f;
#pragma GCC unroll 4
  for (int c = 0; c < kChunks; ++c) {
    const int64_t b = g * kChunks + c;
    const __m256i lv = mlx_levels<kBits>(row + b * 4 * kBits);
    __m256i u = lv, v = lv;
    if constexpr (kBits == 8) v = _mm256_xor_si256(lv, _mm256_set1_epi8(char(0x80))), u = _mm256_abs_epi8(v);
    __m256(&a)[T] = acc[kChunks == 1 ? G : c % 2];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const ActBlock32& xb = x[t][b];
      __m256i xs = loadu(xb.qs);
      if constexpr (kBits == 8) xs = _mm256_sign_epi8(xs, v);
      const __m256 p = _mm256_cvtepi32_ps(dot_bytes(u, xs));
      a[t] = _mm256_fmadd_ps(_mm256_set1_ps(scale * xb.d), p, a[t]);
      xsum[t] += xb.s;
    }
  }
  for (int t = 0; t < T; ++t) corr[G][t] += bias * xsum[t];
}

// Rows [r0, r1) for T tokens whose activation rows (ActBlock32, one per 32 columns) start at
// xq + t * xq_row_bytes; groups of 32 * kChunks.
template <int kBits, DType kParam, int kChunks, int T>
FM_SIMD void mlx_rows(const Mat& w, int64_t r0, int64_t r1, const std::byte* xq, uint64_t xq_row_bytes,
                      float* y, int64_t ldy) {
  const int64_t n_groups = w.cols / (32 * kChunks);
  const ActBlock32* x[T];
  for (int t = 0; t < T; ++t) x[t] = reinterpret_cast<const ActBlock32*>(xq + uint64_t(t) * xq_row_bytes);
  for (int64_t r = r0; r < r1; ++r) {
    const auto* row = reinterpret_cast<const uint8_t*>(w.data + uint64_t(r) * w.row_bytes);
    const std::byte* scales = w.mlx.scales + uint64_t(r) * w.mlx.row_bytes;
    const std::byte* biases = w.mlx.biases + uint64_t(r) * w.mlx.row_bytes;
    __m256 acc[2][T];
    float corr[2][T];
    for (int t = 0; t < T; ++t) acc[0][t] = acc[1][t] = _mm256_setzero_ps(), corr[0][t] = corr[1][t] = 0.0f;
    int64_t g = 0;
    for (; g + 2 <= n_groups; g += 2) {
      mlx_group<kBits, kParam, kChunks, 0, T>(row, scales, biases, g, x, acc, corr);
      mlx_group<kBits, kParam, kChunks, 1, T>(row, scales, biases, g + 1, x, acc, corr);
    }
    if (g < n_groups) mlx_group<kBits, kParam, kChunks, 0, T>(row, scales, biases, g, x, acc, corr);
    for (int t = 0; t < T; ++t)
      y[t * ldy + r] = hsum(_mm256_add_ps(acc[0][t], acc[1][t])) + (corr[0][t] + corr[1][t]);
  }
}

template <int kBits, DType kParam, int kChunks>
FM_SIMD void mlx_tile(const Mat& w, int64_t r0, int64_t r1, const std::byte* xq, uint64_t xq_row_bytes,
                      int n_tokens, float* y, int64_t ldy) {
  static_assert(kMaxTileTokens == 4);
  switch (n_tokens) {
    case 1:
      return mlx_rows<kBits, kParam, kChunks, 1>(w, r0, r1, xq, xq_row_bytes, y, ldy);
    case 2:
      return mlx_rows<kBits, kParam, kChunks, 2>(w, r0, r1, xq, xq_row_bytes, y, ldy);
    case 3:
      return mlx_rows<kBits, kParam, kChunks, 3>(w, r0, r1, xq, xq_row_bytes, y, ldy);
    case 4:
      return mlx_rows<kBits, kParam, kChunks, 4>(w, r0, r1, xq, xq_row_bytes, y, ldy);
  }
  FM_CHECK(false, "tile of {} tokens", n_tokens);
}

template <int kBits, DType kParam>
QuantTileKernel mlx_tile_for_group(int group) {
  switch (group) {
    case 32:
      return mlx_tile<kBits, kParam, 1>;
    case 64:
      return mlx_tile<kBits, kParam, 2>;
    case 128:
      return mlx_tile<kBits, kParam, 4>;
  }
  FM_CHECK(false, "MLX group size {}", group);
}

template <int kBits>
QuantTileKernel mlx_tile_for(DType param, int group) {
  switch (param) {
    case DType::BF16:
      return mlx_tile_for_group<kBits, DType::BF16>(group);
    case DType::F16:
      return mlx_tile_for_group<kBits, DType::F16>(group);
    case DType::F32:
      return mlx_tile_for_group<kBits, DType::F32>(group);
    default:
      break;
  }
  FM_CHECK(false, "MLX scales of type {}", dtype_name(param));
}

// The kernel of this instruction set for an MLX matrix (mlx_tile_supported).
QuantKernel simd_mlx_kernel(const Mat& w) {
  QuantTileKernel tile = nullptr;
  switch (w.dtype) {
    case DType::MLX2:
      tile = mlx_tile_for<2>(w.mlx.dtype, w.mlx.group);
      break;
    case DType::MLX3:
      tile = mlx_tile_for<3>(w.mlx.dtype, w.mlx.group);
      break;
    case DType::MLX4:
      tile = mlx_tile_for<4>(w.mlx.dtype, w.mlx.group);
      break;
    case DType::MLX6:
      tile = mlx_tile_for<6>(w.mlx.dtype, w.mlx.group);
      break;
    case DType::MLX8:
      tile = mlx_tile_for<8>(w.mlx.dtype, w.mlx.group);
      break;
    default:
      break;
  }
  FM_CHECK(tile != nullptr, "not an MLX type: {}", dtype_name(w.dtype));
  const QuantizeActFn quantize = w.dtype == DType::MLX4   ? mlx_quantize_act<4>
                                 : w.dtype == DType::MLX2 ? mlx_quantize_act<2>
                                                          : mlx_quantize_act<8>;
  return QuantKernel{quantize, tile};
}

}  // namespace
}  // namespace fm::cpu::detail
