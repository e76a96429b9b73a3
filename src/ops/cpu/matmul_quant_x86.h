// The x86 vector kernels of matmul over block-quantized weights: integer dot products of weight
// blocks with the 8-bit activation blocks of quant_act.h, as llama.cpp's CPU backend computes them.
// One source for two instruction sets: matmul_quant_avx2.cpp includes it for AVX2 and
// matmul_quant_avx512.cpp for AVX-512 (F, BW, VL, VNNI) on 256-bit vectors. Before the include the
// file defines FM_SIMD (the target attribute every function here carries; the file itself is built
// for plain x86-64) and FM_QUANT_AVX512 (0 or 1). Everything is in an anonymous namespace, so the two
// translation units never share a function compiled for the other's target.
//
// The core step is _mm256_maddubs_epi16 (32 unsigned x signed byte products, summed in pairs to 16
// int16) followed by _mm256_madd_epi16 with the sub-block scales (or ones), which gives 8 int32
// partial sums. Each format is decoded to unsigned bytes where it can be (offsets and mins are
// subtracted afterwards with the activation block sums), or to signed bytes whose signs are moved
// onto the activations (|w| * (x * sign w)). A weight block is decoded once and used for up to
// kMaxTileTokens activation rows. Products never saturate: unsigned weights stay below 64 (or
// |w| <= 128 with |x| <= 127, pair sums <= 32512).
//
// AVX-512 changes only the primitives: VNNI computes the whole byte dot product of a block of 32
// (vpdpbusd: exact int32 sums, the same numbers since nothing saturates), sign bits move onto
// activations through a mask (vpsubb under k), IQ2_XS signs are decoded for a whole block at once,
// and EVEX encoding gives 32 vector registers; IQ2_S and IQ3_S gather a chunk's grid rows, where
// AVX2 reads them by indices decoded for the whole block (GridCodec). All paths give the same
// integer sums, so the same results up to float summation order.
//
// The blocks of 32 share one driver (rows32) over a per-format decoder (Codec32); the i-quants
// share one block kernel over a per-format decoder of 32-value chunks (GridCodec); the K-quants
// each have a block kernel (scales and layouts differ too much to share more). All super-blocks go
// through one driver (rows256).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cstring>
#include <type_traits>

#include "formats/quant_blocks.h"
#include "ops/cpu/matmul_quant.h"
#include "ops/cpu/quant_act.h"
#include "util/error.h"

#if !defined(FM_SIMD) || !defined(FM_QUANT_AVX512)
#error "define FM_SIMD and FM_QUANT_AVX512 before including matmul_quant_x86.h"
#endif

// The per-block kernels go inline into the row loops: GCC had kept them as calls, so the
// accumulators went through memory and the constants were rebuilt for every block. Forced inline
// (together with madd + add in place of vpdpwssd, below), one core of a Xeon went from Q4_K 22.7 to
// 26.1 Gw/s, Q6_K 15.2 to 21.2, IQ2_XS 7.1 to 15.2.
#define FM_BLOCK FM_SIMD __attribute__((always_inline))

namespace fm::cpu::detail {

namespace {

using quant::tables::kGridIq2s;
using quant::tables::kGridIq2xs;
using quant::tables::kGridIq2xxs;
using quant::tables::kGridIq3s;
using quant::tables::kGridIq3xxs;

inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t load_u32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint16_t load_u16(const void* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

FM_SIMD inline float f16(uint16_t h) { return _cvtsh_ss(h); }

FM_SIMD inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

FM_SIMD inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

FM_SIMD inline __m256i loadu(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 32 values 0..15 in element order from 16 bytes: low nibbles are elements 0..15, high 16..31.
FM_SIMD inline __m256i nibbles32(const uint8_t* p) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

// ---- the primitives that differ between AVX2 and AVX-512 ----------------------------------------

// sumi + (the 16 int16 pair sums of u * x, unsigned by signed bytes) times the int16 lanes of
// `scales`, summed in pairs: 8 int32.
// (Not vpdpwssd on AVX-512: it puts its 4-5 cycle latency on the one chain of sums of a block,
// eight steps long, where vpaddd puts 1.)
FM_SIMD inline __m256i add_dot_scaled(__m256i sumi, __m256i u, __m256i x, __m256i scales) {
  return _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), scales));
}

// The 32 products u * x (unsigned by signed bytes) summed in fours: 8 int32.
FM_SIMD inline __m256i dot_bytes(__m256i u, __m256i x) {
#if FM_QUANT_AVX512
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
#endif
}

#if !FM_QUANT_AVX512
// 0xFF in byte i where bit i of `bits` is set, else 0.
FM_SIMD inline __m256i select_mask(uint32_t bits) {
  const __m256i spread =
      _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)),
                          _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}
#endif

// `value` in byte i where bit i of `bits` is set, else 0.
FM_SIMD inline __m256i select_bytes(uint32_t bits, char value) {
#if FM_QUANT_AVX512
  return _mm256_maskz_mov_epi8(__mmask32(bits), _mm256_set1_epi8(value));
#else
  return _mm256_and_si256(select_mask(bits), _mm256_set1_epi8(value));
#endif
}

// Activation bytes x with byte i negated where bit i of `bits` is set. (AVX2: (x ^ m) - m with m
// the byte mask, two operations per token once m is known; it had been a vpsign by m | 1, one more.)
FM_SIMD inline __m256i apply_signs(__m256i x, uint32_t bits) {
#if FM_QUANT_AVX512
  return _mm256_mask_sub_epi8(x, __mmask32(bits), _mm256_setzero_si256(), x);
#else
  const __m256i m = select_mask(bits);
  return _mm256_sub_epi8(_mm256_xor_si256(x, m), m);
#endif
}

// The sign byte ksigns_iq2xs[k] of each byte k < 128: k with the parity of its 7 bits as bit 7 (that
// of (k ^ k >> 4) & 15, looked up in a 16-entry table).
FM_SIMD inline __m256i sign_bytes(__m256i k) {
  const __m256i parity = _mm256_broadcastsi128_si256(
      _mm_setr_epi8(0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0));
  const __m256i fold = _mm256_and_si256(_mm256_xor_si256(k, _mm256_srli_epi16(k, 4)), _mm256_set1_epi8(0xF));
  return _mm256_or_si256(k, _mm256_shuffle_epi8(parity, fold));
}

// ---- scale shuffles ------------------------------------------------------------------------------

// On a vector holding the same 8 int16 in both lanes: broadcast16(v, j) gives int16 j in every
// lane; pair16(v, j) gives int16 j in the low lane and j + 1 in the high lane.
FM_SIMD inline __m256i broadcast16(__m256i v8, int j) {
  return _mm256_shuffle_epi8(v8, _mm256_set1_epi16(int16_t((2 * j + 1) << 8 | 2 * j)));
}
FM_SIMD inline __m256i pair16(__m256i v8, int j) {
  return _mm256_shuffle_epi8(v8, _mm256_set_m128i(_mm_set1_epi16(int16_t((2 * j + 3) << 8 | (2 * j + 2))),
                                                  _mm_set1_epi16(int16_t((2 * j + 1) << 8 | 2 * j))));
}

#if FM_QUANT_AVX512
// quad16(v, a, b, c, d) on a vector holding the same 8 int16 in both lanes: int16 a then b, four
// times each, in the low lane, c then d in the high lane: the scales of add_dot2 for a pair of chunks.
FM_SIMD inline __m256i quad16(__m256i v8, int a, int b, int c, int d) {
  const auto w = [](int j) { return int16_t((2 * j + 1) << 8 | 2 * j); };
  return _mm256_shuffle_epi8(v8, _mm256_setr_epi16(w(a), w(a), w(a), w(a), w(b), w(b), w(b), w(b), w(c), w(c),
                                                   w(c), w(c), w(d), w(d), w(d), w(d)));
}

// sumi + two chunks of 32 unsigned-by-signed byte products (u0 with x0, u1 with x1), each summed in
// fours by vpdpbusd (under 2^15 for u <= 63: the sums fit int16 unsaturated), packed to int16 (per
// 128-bit lane: four sums of chunk 0, then four of chunk 1) and multiplied by their int16 scales
// (quad16), summed in pairs: 8 int32. The same integers as add_dot_scaled on each chunk in 5
// instructions instead of 6, and one scale shuffle for the two chunks instead of two. (One core of a
// noisy 16-core Xeon, two rounds, G weights/s, with / without: Q4_K 26.3 / 23.3 against 21.8 /
// 22.7, Q2_K 26.3 / 21.1 against 25.0 / 23.7, Q6_K 19.0 / 10.9 against 17.5 / 21.4: ahead for
// Q4_K, within that instance's noise for the others.)
FM_SIMD inline __m256i add_dot2(__m256i sumi, __m256i u0, __m256i x0, __m256i u1, __m256i x1,
                                __m256i scales) {
  const __m256i z = _mm256_setzero_si256();
  const __m256i sums = _mm256_packs_epi32(_mm256_dpbusd_epi32(z, u0, x0), _mm256_dpbusd_epi32(z, u1, x1));
  return _mm256_add_epi32(sumi, _mm256_madd_epi16(sums, scales));
}
#endif

// ---- prefetch ------------------------------------------------------------------------------------
// A single core reading a matrix row after row (each a few KB) waits on memory where the hardware
// prefetcher restarts at page boundaries; the kernels that are bound by memory ask for the bytes
// kPrefetchBytes ahead of those they read (every cache line of the next `bytes`). Measured on one
// core of an AMD EPYC VM (AVX2 kernels), 4096 x 14336 matvec, G weights/s, ahead 0 / 2048 / 4096 /
// 8192 bytes: Q4_K 20.3 / 28.7 / 24.8 / 25.5, Q6_K 14.2 / 20.6 / 18.9 / 17.3, Q5_K 16.5 / 22.0 / 21.0
// / 18.7; the grid i-quants lost (IQ2_XXS 12.5 / 9.8), their table loads compete with the prefetches.
inline constexpr uint64_t kPrefetchBytes = 2048;

template <uint64_t kBytes>
FM_SIMD inline void prefetch_ahead(const void* p) {
  const char* c = static_cast<const char*>(p) + kPrefetchBytes;
#pragma GCC unroll 16
  for (uint64_t l = 0; l < kBytes; l += 64) _mm_prefetch(c + l, _MM_HINT_T0);
}

// ---- blocks of 32 ----------------------------------------------------------------------------
// Per format: the 32 values as bytes (kSigned: signed, else unsigned 0..31), the scale d, and dm,
// the multiplier of the activation sum s for formats with a min or an offset (kMin).

template <class Q>
struct Codec32;

template <>
struct Codec32<quant::Q4_0> {
  static constexpr bool kSigned = false, kMin = true;
  using Block = quant::Q4_0::Block;
  FM_BLOCK static __m256i values(const Block& b) { return nibbles32(b.qs); }
  FM_SIMD static float d(const Block& b) { return f16(b.d); }
  FM_SIMD static float dm(const Block&, float d) { return -8.0f * d; }
};

template <>
struct Codec32<quant::Q4_1> {
  static constexpr bool kSigned = false, kMin = true;
  using Block = quant::Q4_1::Block;
  FM_BLOCK static __m256i values(const Block& b) { return nibbles32(b.qs); }
  FM_SIMD static float d(const Block& b) { return f16(b.d); }
  FM_SIMD static float dm(const Block& b, float) { return f16(b.m); }
};

FM_SIMD inline __m256i q5_values(const uint8_t* qs, const uint8_t* qh) {
  return _mm256_or_si256(nibbles32(qs), select_bytes(load_u32(qh), 0x10));
}

template <>
struct Codec32<quant::Q5_0> {
  static constexpr bool kSigned = false, kMin = true;
  using Block = quant::Q5_0::Block;
  FM_BLOCK static __m256i values(const Block& b) { return q5_values(b.qs, b.qh); }
  FM_SIMD static float d(const Block& b) { return f16(b.d); }
  FM_SIMD static float dm(const Block&, float d) { return -16.0f * d; }
};

template <>
struct Codec32<quant::Q5_1> {
  static constexpr bool kSigned = false, kMin = true;
  using Block = quant::Q5_1::Block;
  FM_BLOCK static __m256i values(const Block& b) { return q5_values(b.qs, b.qh); }
  FM_SIMD static float d(const Block& b) { return f16(b.d); }
  FM_SIMD static float dm(const Block& b, float) { return f16(b.m); }
};

template <>
struct Codec32<quant::Q8_0> {
  static constexpr bool kSigned = true, kMin = false;
  using Block = quant::Q8_0::Block;
  FM_BLOCK static __m256i values(const Block& b) { return loadu(b.qs); }
  FM_SIMD static float d(const Block& b) { return f16(b.d); }
  FM_SIMD static float dm(const Block&, float) { return 0.0f; }
};

FM_SIMD inline __m256i table16(const int8_t* levels) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(levels)));
}

template <>
struct Codec32<quant::IQ4_NL> {
  static constexpr bool kSigned = true, kMin = false;
  using Block = quant::IQ4_NL::Block;
  FM_BLOCK static __m256i values(const Block& b) {
    return _mm256_shuffle_epi8(table16(quant::tables::kValuesIq4nl), nibbles32(b.qs));
  }
  FM_SIMD static float d(const Block& b) { return f16(b.d); }
  FM_SIMD static float dm(const Block&, float) { return 0.0f; }
};

template <>
struct Codec32<quant::MXFP4> {
  static constexpr bool kSigned = true, kMin = false;
  using Block = quant::MXFP4::Block;
  FM_BLOCK static __m256i values(const Block& b) {
    return _mm256_shuffle_epi8(table16(quant::tables::kValuesMxfp4), nibbles32(b.qs));
  }
  FM_SIMD static float d(const Block& b) { return quant::MXFP4::e8m0_half(b.e); }
  FM_SIMD static float dm(const Block&, float) { return 0.0f; }
};

// One block of 32 for T tokens into accumulator set `acc`; corr collects dm * s.
template <class C, int T>
FM_BLOCK inline void step32(const typename C::Block& blk, const ActBlock32* const (&x)[T], int64_t b,
                            __m256 (&acc)[T], float (&corr)[T]) {
  const __m256i v = C::values(blk);
  const __m256i u = C::kSigned ? _mm256_sign_epi8(v, v) : v;
  const float d = C::d(blk);
  const float dm = C::dm(blk, d);
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) {
    const ActBlock32& a = x[t][b];
    __m256i xs = loadu(a.qs);
    if constexpr (C::kSigned) xs = _mm256_sign_epi8(xs, v);
    const __m256 p = _mm256_cvtepi32_ps(dot_bytes(u, xs));
    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), p, acc[t]);
    if constexpr (C::kMin) corr[t] += dm * a.s;
  }
}

template <class Q, int T>
FM_SIMD void rows32(const Mat& w, int64_t r0, int64_t r1, const std::byte* xq, uint64_t xq_row_bytes,
                    float* y, int64_t ldy) {
  using C = Codec32<Q>;
  using Block = typename C::Block;
  const int64_t n_blocks = w.cols / 32;
  const ActBlock32* x[T];
  for (int t = 0; t < T; ++t) x[t] = reinterpret_cast<const ActBlock32*>(xq + uint64_t(t) * xq_row_bytes);
  for (int64_t r = r0; r < r1; ++r) {
    const Block* blocks = reinterpret_cast<const Block*>(w.data + uint64_t(r) * w.row_bytes);
    __m256 acc0[T], acc1[T];
    float corr[T];
    for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps(), corr[t] = 0.0f;
    int64_t b = 0;
    for (; b + 2 <= n_blocks; b += 2) {  // two accumulator chains keep the FMAs in flight
      step32<C, T>(blocks[b], x, b, acc0, corr);
      step32<C, T>(blocks[b + 1], x, b + 1, acc1, corr);
    }
    if (b < n_blocks) step32<C, T>(blocks[b], x, b, acc0, corr);
    for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum(_mm256_add_ps(acc0[t], acc1[t])) + corr[t];
  }
}

// ---- eight rows at a time (blocks of 32) ----------------------------------------------
// For one token, the work around each row's integer dot product (its scale converted, multiplied and
// broadcast, the sums converted to float, an FMA, nibbles decoded into half-used vectors) cost more
// than the dot product itself. Eight rows go together instead: the value bytes of one block of each
// row are transposed in registers so that 32-bit lane i holds 4 bytes of row i (values 4k..4k+3 in
// vector k), each multiplied by the activation's 4 bytes broadcast to every lane. One vector of sums
// then holds the block of all eight rows, their scales arrive as one vector, and one FMA scales
// them. The loop reads the file's layout as it is, so streamed and memory-mapped tensors take it;
// resident weights can also be interleaved once at load (Mat::interleaved, the shape llama.cpp's
// repacked layouts have), which leaves the loop plain loads where the stored layout takes a load per
// row (or gathers) and a transposition, and prefetches ahead on its one stream (one core of the
// 2-core AMD EPYC VM, AVX2, G weights/s stored / interleaved: IQ4_NL 21.7 / 32.2, MXFP4 24.9 / 39.4,
// Q4_0 26.2 / 37.7; Q8_0, bound by memory, gains nothing and stays stored:
// CpuBackend::prepare_resident).

FM_SIMD inline __m256i load2x128(const uint8_t* lo, const uint8_t* hi) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo))),
                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)), 1);
}

// t[k] = bytes 4k..4k+3 of p[i] + off in lane i (16 bytes from each of 8 rows).
FM_BLOCK inline void transpose8x16(const uint8_t* const (&p)[8], uint64_t off, __m256i (&t)[4]) {
  const __m256i a0 = load2x128(p[0] + off, p[4] + off), a1 = load2x128(p[1] + off, p[5] + off),
                a2 = load2x128(p[2] + off, p[6] + off), a3 = load2x128(p[3] + off, p[7] + off);
  const __m256i u0 = _mm256_unpacklo_epi32(a0, a1), u1 = _mm256_unpackhi_epi32(a0, a1),
                u2 = _mm256_unpacklo_epi32(a2, a3), u3 = _mm256_unpackhi_epi32(a2, a3);
  t[0] = _mm256_unpacklo_epi64(u0, u2);
  t[1] = _mm256_unpackhi_epi64(u0, u2);
  t[2] = _mm256_unpacklo_epi64(u1, u3);
  t[3] = _mm256_unpackhi_epi64(u1, u3);
}

// The 32-bit word at p[i] + off in lane i (idx: the row offsets from p[0], as int32).
FM_SIMD inline __m256i gather_words(const uint8_t* const (&p)[8], uint64_t off, __m256i idx) {
  return _mm256_i32gather_epi32(reinterpret_cast<const int*>(p[0] + off), idx, 1);
}

// The low (and high) halves of 8 words as floats from f16.
FM_SIMD inline __m256 f16_low_halves(__m256i w) {
#if FM_QUANT_AVX512
  return _mm256_cvtph_ps(_mm256_cvtepi32_epi16(w));
#else
  const __m256i lo = _mm256_shuffle_epi8(
      w, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13, -1,
                          -1, -1, -1, -1, -1, -1, -1));
  return _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(lo, 0x08)));
#endif
}
FM_SIMD inline void f16_halves(__m256i w, __m256& low, __m256& high) {
  const __m256i s = _mm256_permute4x64_epi64(
      _mm256_shuffle_epi8(w, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8,
                                              9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15)),
      0xD8);  // 64-bit words 0 2 1 3: the low halves of both 128-bit lanes, then the high halves
  low = _mm256_cvtph_ps(_mm256_castsi256_si128(s));
  high = _mm256_cvtph_ps(_mm256_extracti128_si256(s, 1));
}

// Where a block of the eight rows comes from. FileRows8: the stored layout, row pointers p[i] and
// the block's byte offset; fields are gathered (idx: the row offsets from p[0] as int32) or loaded
// row by row into the lanes (kGatherFields), and value bytes transposed in registers. PackedRows8:
// rows interleaved at load (Mat::interleaved, interleave_rows8), where each of those is a plain load.
// Both give, for a field at byte X of the block: word32 (a 4-byte field, lane i: row i's), f16 (a
// 2-byte f16, as floats), f16x2 (two adjacent ones, as floats), byte (a 1-byte field, lane i: row
// i's), chunk16 (16 value bytes: t[k] = bytes 4k..4k+3 of row i in lane i).
// AVX2 loads the eight rows' scales and other fields one by one into the lanes: one core of the AMD
// EPYC VM, 4096 x 14336, best of 5 short timings in 3 rounds, G weights/s against one gather:
// IQ4_NL 21.5 / 19.0, MXFP4 25.4 / 21.8, Q4_0 27.6 / 25.2, Q4_1 26.2 / 23.1, Q5_0 18.1 / 15.3, Q5_1
// 17.5 / 14.9, Q8_0 19.8 / 18.9.
inline constexpr bool kGatherFields = FM_QUANT_AVX512;

struct FileRows8 {
  const uint8_t* const (&p)[8];
  uint64_t off;
  __m256i idx;
  FM_SIMD __m256i word32(int x) const {
    if constexpr (kGatherFields) return gather_words(p, off + x, idx);
    const uint64_t o = off + x;
    return _mm256_setr_epi32(int(load_u32(p[0] + o)), int(load_u32(p[1] + o)), int(load_u32(p[2] + o)),
                             int(load_u32(p[3] + o)), int(load_u32(p[4] + o)), int(load_u32(p[5] + o)),
                             int(load_u32(p[6] + o)), int(load_u32(p[7] + o)));
  }
  FM_SIMD __m256 f16(int x) const {
    if constexpr (kGatherFields) return f16_low_halves(word32(x));
    const auto h = [&](int i) FM_SIMD { return short(load_u16(p[i] + off + x)); };
    return _mm256_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7)));
  }
  FM_SIMD void f16x2(int x, __m256& a, __m256& b) const { f16_halves(word32(x), a, b); }
  FM_SIMD __m256i byte(int x) const { return _mm256_and_si256(word32(x), _mm256_set1_epi32(0xFF)); }
  FM_BLOCK void chunk16(int x, __m256i (&t)[4]) const { transpose8x16(p, off + x, t); }
};

struct PackedRows8 {
  const uint8_t* base;  // block b of the group: 8 * block bytes
  FM_SIMD __m128i load128(int x) const {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + 8 * x));
  }
  FM_SIMD __m256i word32(int x) const { return loadu(base + 8 * x); }
  FM_SIMD __m256 f16(int x) const { return _mm256_cvtph_ps(load128(x)); }
  FM_SIMD void f16x2(int x, __m256& a, __m256& b) const { a = f16(x), b = f16(x + 2); }
  FM_SIMD __m256i byte(int x) const {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(base + 8 * x)));
  }
  FM_BLOCK void chunk16(int x, __m256i (&t)[4]) const {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) t[k] = loadu(base + 8 * x + 32 * k);
  }
};

// Per format, Codec32x8 gives: kOffset, the constant c with w = d * (u - c) for the unsigned bytes u
// it decodes (or kMin: w = d * u + m); values(src, v) -> v[k] as above from a source of the rows'
// block (FileRows8 or PackedRows8); scales(src, d, m) -> the rows' scales (and mins) as floats.

// v[k] and v[k + 4] from the low and high nibbles of t[k] (the qs layout of the 4-bit formats:
// byte j holds values j and j + 16).
FM_BLOCK inline void split_nibbles(const __m256i (&t)[4], __m256i (&v)[8]) {
  const __m256i low = _mm256_set1_epi8(0x0F);
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm256_and_si256(t[k], low);
    v[k + 4] = _mm256_and_si256(_mm256_srli_epi16(t[k], 4), low);
  }
}

// Q5's fifth bits: value j of a row has bit j of its 32-bit qh (lane i: row i's) as bit 4.
FM_BLOCK inline void add_q5_high(__m256i qh, __m256i (&v)[8]) {
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) {
    // Bits 4k..4k+3 sit in byte k / 2 of each lane, at 4 (k % 2); byte j of the lane tests one.
    const char b = char(k / 2);
    const __m256i rep = _mm256_shuffle_epi8(qh, _mm256_setr_epi8(b, b, b, b, b + 4, b + 4, b + 4, b + 4, b + 8, b + 8,
                                                                 b + 8, b + 8, b + 12, b + 12, b + 12, b + 12, b, b,
                                                                 b, b, b + 4, b + 4, b + 4, b + 4, b + 8, b + 8,
                                                                 b + 8, b + 8, b + 12, b + 12, b + 12, b + 12));
    const int64_t bits = k % 2 == 0 ? 0x0804020108040201 : int64_t(0x8040201080402010);
    const __m256i m = _mm256_set1_epi64x(bits);
    v[k] = _mm256_or_si256(v[k], _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(rep, m), m),
                                                  _mm256_set1_epi8(0x10)));
  }
}

// The 16-level tables (IQ4_NL, MXFP4) looked up by nibble.
FM_BLOCK inline void lookup_levels(__m256i table, __m256i (&v)[8]) {
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) v[k] = _mm256_shuffle_epi8(table, v[k]);
}

// Signed formats: AVX-512 dots v + 128 (unsigned) and subtracts 128 times the activation sum;
// AVX2 moves the signs onto the activation (|v| * (x * sign v)).
constexpr float kSignedOffset = FM_QUANT_AVX512 ? 128.0f : 0.0f;

template <class Q>
struct Codec32x8;

// The scale as an f16 at the start of each block.
struct F16Scales32x8 {
  template <class S>
  FM_BLOCK static void scales(const S& src, __m256& d, __m256&) {
    d = src.f16(0);
  }
};

// The 4- and 5-bit formats: nibbles at byte kQs of the block, the fifth bits (Q5) as a 32-bit word
// at kQh (none: -1), the f16 scale at 0 and, with kHasMin, the f16 min at 2; w = d (u - kOff) (+ m).
template <int kQs, int kQh, bool kHasMin, float kOff>
struct Nibbles32x8 {
  static constexpr bool kSigned = false, kMin = kHasMin;
  static constexpr float kOffset = kOff;
  static constexpr int kMaxU = kQh < 0 ? 15 : 31;
  template <class S>
  FM_BLOCK static void values(const S& src, __m256i (&v)[8]) {
    __m256i t[4];
    src.chunk16(kQs, t);
    split_nibbles(t, v);
    if constexpr (kQh >= 0) add_q5_high(src.word32(kQh), v);
  }
  template <class S>
  FM_BLOCK static void scales(const S& src, __m256& d, __m256& m) {
    if constexpr (kHasMin)
      src.f16x2(0, d, m);
    else
      d = src.f16(0);
  }
};

template <>
struct Codec32x8<quant::Q4_0> : Nibbles32x8<2, -1, false, 8.0f> {};
template <>
struct Codec32x8<quant::Q4_1> : Nibbles32x8<4, -1, true, 0.0f> {};
template <>
struct Codec32x8<quant::Q5_0> : Nibbles32x8<6, 2, false, 16.0f> {};
template <>
struct Codec32x8<quant::Q5_1> : Nibbles32x8<8, 4, true, 0.0f> {};

struct Signed32x8 {
  static constexpr bool kSigned = true, kMin = false;
  static constexpr float kOffset = kSignedOffset;
  static constexpr int kMaxU = 255;
};

template <>
struct Codec32x8<quant::Q8_0> : Signed32x8, F16Scales32x8 {
  template <class S>
  FM_BLOCK static void values(const S& src, __m256i (&v)[8]) {
    __m256i t[4], u[4];
    src.chunk16(2, t);
    src.chunk16(18, u);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
#if FM_QUANT_AVX512
      v[k] = _mm256_xor_si256(t[k], _mm256_set1_epi8(char(0x80)));
      v[k + 4] = _mm256_xor_si256(u[k], _mm256_set1_epi8(char(0x80)));
#else
      v[k] = t[k], v[k + 4] = u[k];
#endif
    }
  }
};

// The 16-level formats: nibbles at byte kQs of the block, looked up in kLevels, whose magnitudes go
// to kMax. AVX-512 takes the levels + 128 as unsigned bytes, as Signed32x8. AVX2 takes small levels
// (MXFP4's, up to 12) + kMax as unsigned bytes, whose maddubs pair sums (at most 4 kMax 127) add in
// int16 several at a time, and larger ones (IQ4_NL's) signed, their signs moved onto the activation
// (two more instructions a vector, and one int16 step per vector). (One core of the AMD EPYC VM,
// MXFP4, 4096 x 14336, best of 5 short timings in 3 rounds, G weights/s, unsigned / signed: file
// layout 21.7 / 19.1, interleaved 36.4-37.6 / 28.9-31.3.)
template <const int8_t* kLevels, int kQs, int kMax>
struct Levels32x8 {
  static constexpr int kLevelOffset = FM_QUANT_AVX512 ? 128 : 4 * kMax * 127 <= 32767 ? kMax : 0;
  static constexpr bool kSigned = kLevelOffset == 0, kMin = false;
  static constexpr float kOffset = float(kLevelOffset);
  static constexpr int kMaxU = kLevelOffset == 128 ? 255 : 2 * kMax;
  template <class S>
  FM_BLOCK static void values(const S& src, __m256i (&v)[8]) {
    __m256i t[4];
    src.chunk16(kQs, t);
    split_nibbles(t, v);
    // + 128 is ^ 0x80 on bytes.
    lookup_levels(_mm256_add_epi8(table16(kLevels), _mm256_set1_epi8(char(kLevelOffset))), v);
  }
};

template <>
struct Codec32x8<quant::IQ4_NL> : Levels32x8<quant::tables::kValuesIq4nl, 2, 127>, F16Scales32x8 {};

template <>
struct Codec32x8<quant::MXFP4> : Levels32x8<quant::tables::kValuesMxfp4, 1, 12> {
  // e8m0_half: 2^(e - 128) as float bits, (e - 1) << 23 for e >= 2, else the subnormal 0x200000 << e.
  template <class S>
  FM_BLOCK static void scales(const S& src, __m256& d, __m256&) {
    const __m256i e = src.byte(0);
    const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
    const __m256i tiny = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
    const __m256i small = _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e);
    d = _mm256_castsi256_ps(_mm256_blendv_epi8(normal, tiny, small));
  }
};

// The 8 rows' dot products of one block with activation block a (lane i: row i), in int32.
template <class C>
FM_BLOCK inline __m256i dot32x8(const __m256i (&v)[8], const int8_t* xq) {
#if FM_QUANT_AVX512
  __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
#pragma GCC unroll 4
  for (int k = 0; k < 8; k += 2) {
    s0 = _mm256_dpbusd_epi32(s0, v[k], _mm256_set1_epi32(int(load_u32(xq + 4 * k))));
    s1 = _mm256_dpbusd_epi32(s1, v[k + 1], _mm256_set1_epi32(int(load_u32(xq + 4 * k + 4))));
  }
  return _mm256_add_epi32(s0, s1);
#else
  const __m256i ones = _mm256_set1_epi16(1);
  // int16 pair sums of maddubs are at most 2 * kMaxU * 127: add as many as int16 holds first (a
  // power of two, dividing 8).
  constexpr int kGroup =
      C::kSigned ? 1 : int(std::bit_floor(unsigned(std::min(8, 32767 / (2 * C::kMaxU * 127)))));
  __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
  for (int k = 0; k < 8; k += kGroup) {
    __m256i s16 = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int j = k; j < k + kGroup; ++j) {
      __m256i x = _mm256_set1_epi32(int(load_u32(xq + 4 * j)));
      __m256i u = v[j];
      if constexpr (C::kSigned) x = _mm256_sign_epi8(x, u), u = _mm256_sign_epi8(u, u);
      s16 = j == k ? _mm256_maddubs_epi16(u, x) : _mm256_add_epi16(s16, _mm256_maddubs_epi16(u, x));
    }
    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(s16, ones));
  }
  return sum;
#endif
}

// Rows [r0, r0 + 8k) for T tokens, eight at a time; the caller takes any rest. A block's values and
// scales are decoded once for the T tokens, and each token's sums go the same way whatever T is,
// so a sequence gets the same bits decoded alone or in a batch. (One accumulator per token: the
// FMA chain of 4-8 cycles a block is far shorter than the block's other work.)
template <class Q, int T, bool kPacked>
FM_SIMD int64_t rows32x8(const Mat& w, int64_t r0, int64_t r1, const std::byte* xq, uint64_t xq_row_bytes,
                         float* y, int64_t ldy) {
  using C = Codec32x8<Q>;
  constexpr uint64_t kBytes = sizeof(typename Q::Block);
  const int64_t n_blocks = w.cols / 32;
  // Interleaved rows come in groups of eight from a multiple of 8 (the callers' row ranges start at
  // multiples of 16). The gathers of the stored layout address the rows by 32-bit offsets from the
  // first of the eight.
  if (kPacked)
    FM_CHECK(r0 % 8 == 0 && (r1 % 8 == 0 || r1 == w.rows), "interleaved rows [{}, {}) of {}", r0, r1, w.rows);
  if (!kPacked && w.row_bytes * 7 > uint64_t(INT32_MAX)) return r0;
  const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                         _mm256_set1_epi32(int32_t(w.row_bytes)));
  const ActBlock32* x[T];
  for (int t = 0; t < T; ++t) x[t] = reinterpret_cast<const ActBlock32*>(xq + uint64_t(t) * xq_row_bytes);
  int64_t r = r0;
  for (; r + 8 <= r1; r += 8) {
    const uint8_t* p[8];
    for (int i = 0; i < 8; ++i) p[i] = reinterpret_cast<const uint8_t*>(w.data + uint64_t(r + i) * w.row_bytes);
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n_blocks; ++b) {
      const uint64_t off = uint64_t(b) * kBytes;
      __m256i v[8];
      __m256 d, m;
      if constexpr (kPacked) {
        prefetch_ahead<8 * kBytes>(p[0] + 8 * off);
        const PackedRows8 src{p[0] + 8 * off};
        C::values(src, v);
        C::scales(src, d, m);
      } else {
        const FileRows8 src{p, off, idx};
        C::values(src, v);
        C::scales(src, d, m);
      }
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const ActBlock32& a = x[t][b];
        const __m256 sum = _mm256_cvtepi32_ps(dot32x8<C>(v, a.qs));
        if constexpr (C::kMin) {
          acc[t] = _mm256_fmadd_ps(d, _mm256_mul_ps(sum, _mm256_set1_ps(a.d)), acc[t]);
          acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(a.s), acc[t]);
        } else if constexpr (C::kOffset != 0.0f) {
          // w = d (u - c): d (dx sum_u - c s), s = dx sum x.
          acc[t] = _mm256_fmadd_ps(
              d, _mm256_fmadd_ps(sum, _mm256_set1_ps(a.d), _mm256_set1_ps(-C::kOffset * a.s)), acc[t]);
        } else {
          acc[t] = _mm256_fmadd_ps(d, _mm256_mul_ps(sum, _mm256_set1_ps(a.d)), acc[t]);
        }
      }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + t * ldy + r, acc[t]);
  }
  return r;
}

// ---- super-blocks of 256 -------------------------------------------------------------------------
// Per format, dot<T>(block, x, b, acc): acc[t] += its dot product with activation block b of token t
// (8 lanes to be summed at the end).

// acc += d * dx * sumi.
template <int T>
FM_BLOCK inline void plain_finish(const ActBlock256* const (&x)[T], int64_t b, float d,
                                  const __m256i (&sumi)[T], __m256 (&acc)[T]) {
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t)
    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x[t][b].d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
}

// The grid i-quants, per chunk of 32 values (sub-block ib of 8): magnitudes u as unsigned
// bytes, their signs (bit i for value i, see apply_signs) and the block's int16 scales, of
// which broadcast16(scales, ib) are chunk ib's for its two halves (the same scale in both for
// 32-value sub-blocks). prepare() decodes what the chunks of a block share; the block's float scale
// is d(block).
template <class Q>
struct GridCodec;

// Grid rows of 8 magnitudes (IQ2): four rows as one vector.
FM_SIMD inline __m256i grid8x4(const uint8_t (*grid)[8], int i0, int i1, int i2, int i3) {
  return _mm256_set_epi64x(int64_t(load_u64(grid[i3])), int64_t(load_u64(grid[i2])),
                           int64_t(load_u64(grid[i1])), int64_t(load_u64(grid[i0])));
}

// Grid rows of 4 magnitudes (IQ3): eight rows as one vector.
FM_SIMD inline __m256i grid4x8(const uint8_t (*grid)[4], const int (&i)[8]) {
  return _mm256_setr_epi32(int(load_u32(grid[i[0]])), int(load_u32(grid[i[1]])), int(load_u32(grid[i[2]])),
                           int(load_u32(grid[i[3]])), int(load_u32(grid[i[4]])), int(load_u32(grid[i[5]])),
                           int(load_u32(grid[i[6]])), int(load_u32(grid[i[7]])));
}

// IQ2_XS / IQ2_S keep 16 four-bit scales, group 2i in the low nibble of byte i and 2i + 1 in the
// high one: all 16 as 2s + 1 in int16 lanes, the even groups in the low 128 bits and the odd ones in
// the high 128 bits, so that broadcast16(scales, ib) is the pair of chunk ib (group 2ib in the low
// lane, 2ib + 1 in the high lane) in one byte shuffle. (Decoded per chunk from the scale byte, this
// had been eight scalar and vector operations per chunk of IQ2_S and IQ2_XS on AVX2.)
FM_SIMD inline __m256i iq2_scales(const uint8_t* s) {
  const uint64_t b = load_u64(s), low = 0x0F0F0F0F0F0F0F0F;
  const __m256i n = _mm256_cvtepu8_epi16(_mm_set_epi64x(int64_t((b >> 4) & low), int64_t(b & low)));
  return _mm256_add_epi16(_mm256_slli_epi16(n, 1), _mm256_set1_epi16(1));
}

// The per-block state of the codecs whose signs come as 7-bit indices into ksigns_iq2xs (IQ2_XXS,
// IQ2_XS, IQ3_XXS): the block's int16 scales and the sign bits of chunk ib in signs[ib].
struct SignState {
  __m256i scales;
  alignas(32) uint32_t signs[8];
};

// IQ2_XXS and IQ3_XXS keep a 32-bit word per chunk: four 7-bit indices k into ksigns_iq2xs (the
// sign bits of four groups of 8; the entry is k with the parity of its bits as bit 7) and the
// four-bit scale s in bits 28-31. xxs_state decodes the 8 words of a block at once, in vectors: the
// sign bits of chunk ib in signs[ib], the scales as 2s + 1 in 8 int16 (both lanes). Per chunk
// they had been four table loads and a scalar scale (on AVX2 sign bytes for vpsign from a table of
// 128 x 8): one core of the AMD EPYC VM, 4096 x 14336, best of 5 short timings in 4 rounds, G
// weights/s, IQ2_XXS 14.6-14.9 against 12.8-13.8, IQ3_XXS 10.8-11.4 against 9.7-9.8 (two cores
// 29.2 / 24.5 and 21.9 / 18.2).
FM_SIMD inline SignState xxs_state(__m256i aux) {
  SignState st;
  const __m256i m7 = _mm256_set1_epi32(0x7F);
  // Index j of each word to byte j.
  __m256i k = _mm256_and_si256(aux, m7);
  k = _mm256_or_si256(k, _mm256_and_si256(_mm256_slli_epi32(aux, 1), _mm256_slli_epi32(m7, 8)));
  k = _mm256_or_si256(k, _mm256_and_si256(_mm256_slli_epi32(aux, 2), _mm256_slli_epi32(m7, 16)));
  k = _mm256_or_si256(k, _mm256_and_si256(_mm256_slli_epi32(aux, 3), _mm256_slli_epi32(m7, 24)));
  _mm256_store_si256(reinterpret_cast<__m256i*>(st.signs), sign_bytes(k));
  const __m256i s = _mm256_add_epi32(_mm256_slli_epi32(_mm256_srli_epi32(aux, 28), 1), _mm256_set1_epi32(1));
  st.scales =
      _mm256_broadcastsi128_si256(_mm_packs_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1)));
  return st;
}

template <>
struct GridCodec<quant::IQ2_XXS> {
  using Block = quant::IQ2_XXS::Block;
  // The words are bytes 8ib + 4 of qs: the odd dwords of its two halves.
  FM_BLOCK static SignState prepare(const Block& blk) {
    const __m256 a = _mm256_castsi256_ps(loadu(blk.qs)), b = _mm256_castsi256_ps(loadu(blk.qs + 32));
    // Chunks 0 1 4 5 | 2 3 6 7, then in order.
    const __m256i odd = _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    return xxs_state(_mm256_permute4x64_epi64(odd, _MM_SHUFFLE(3, 1, 2, 0)));
  }
  FM_SIMD static float d(const Block& blk) { return f16(blk.d) * 0.125f; }
  template <class F>
  FM_BLOCK static void chunk(const Block& blk, const SignState& st, int ib, F&& f) {
    const uint8_t* idx = blk.qs + 8 * ib;
    f(grid8x4(kGridIq2xxs, idx[0], idx[1], idx[2], idx[3]), st.signs[ib], st.scales);
  }
};

template <>
struct GridCodec<quant::IQ2_XS> {
  using Block = quant::IQ2_XS::Block;
  // The sign byte of a value q is ksigns_iq2xs[q >> 9], for the whole block in vectors. (On AVX2,
  // one core of the AMD EPYC VM, 4096 x 14336, best of 5 short timings in 4 rounds, G weights/s:
  // 14.2-15.5 against 13.1-13.6 with sign bytes for vpsign from a table of 128 x 8 per group of 8;
  // two cores 31.0 / 26.2.)
  FM_BLOCK static SignState prepare(const Block& blk) {
    SignState st;
    st.scales = iq2_scales(blk.scales);
    for (int h = 0; h < 2; ++h) {
      const __m256i signs = sign_bytes(_mm256_srli_epi16(loadu(blk.qs + 16 * h), 9));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(st.signs + 4 * h),
                       _mm_packus_epi16(_mm256_castsi256_si128(signs), _mm256_extracti128_si256(signs, 1)));
    }
    return st;
  }
  FM_SIMD static float d(const Block& blk) { return f16(blk.d) * 0.125f; }
  template <class F>
  FM_BLOCK static void chunk(const Block& blk, const SignState& st, int ib, F&& f) {
    const uint16_t* q = blk.qs + 4 * ib;
    f(grid8x4(kGridIq2xs, q[0] & 511, q[1] & 511, q[2] & 511, q[3] & 511), st.signs[ib], st.scales);
  }
};

// The grid indices of IQ2_S and IQ3_S, for a whole block in vectors: index j is qs[j] with, as bits
// 8 up, the 8 / kPerByte bits of qh[j / kPerByte] at (j % kPerByte) * 8 / kPerByte, into out[j] for
// j < 16 kGroups. The qh byte goes to each 16-bit lane by a byte shuffle (high byte zero) and its
// bits into place by a multiply.
template <int kPerByte, int kGroups>
FM_BLOCK inline void grid_indices(const uint8_t* qs, const uint8_t* qh, uint16_t* out) {
  constexpr int kBits = 8 / kPerByte;
  struct Tables {
    int8_t spread[kGroups][32];
    int16_t mul[16];
  };
  static constexpr Tables kTables = [] {
    Tables t{};
    for (int h = 0; h < kGroups; ++h)
      for (int l = 0; l < 16; ++l)
        t.spread[h][2 * l] = int8_t((16 * h + l) / kPerByte), t.spread[h][2 * l + 1] = -1;
    for (int l = 0; l < 16; ++l) t.mul[l] = int16_t(1 << (8 - kBits * (l % kPerByte)));
    return t;
  }();
  const __m256i bytes = _mm256_set1_epi64x(int64_t(load_u64(qh))), mul = loadu(kTables.mul);
  const __m256i mask = _mm256_set1_epi16(int16_t(((1 << kBits) - 1) << 8));
#pragma GCC unroll 4
  for (int h = 0; h < kGroups; ++h) {
    const __m256i low = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + 16 * h)));
    const __m256i high =
        _mm256_and_si256(_mm256_mullo_epi16(_mm256_shuffle_epi8(bytes, loadu(kTables.spread[h])), mul), mask);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * h), _mm256_or_si256(low, high));
  }
}

// A block's int16 scales and its N grid indices (grid_indices).
template <int N>
struct IndexedState {
  __m256i scales;
  alignas(32) uint16_t idx[N];
};

template <int kPerByte, int N>
FM_BLOCK inline IndexedState<N> indexed_state(__m256i scales, const uint8_t* qs, const uint8_t* qh) {
  IndexedState<N> st;
  st.scales = scales;
  grid_indices<kPerByte, N / 16>(qs, qh, st.idx);
  return st;
}

#if FM_QUANT_AVX512
template <>
struct GridCodec<quant::IQ2_S> {
  using Block = quant::IQ2_S::Block;
  FM_BLOCK static __m256i prepare(const Block& blk) { return iq2_scales(blk.scales); }
  FM_SIMD static float d(const Block& blk) { return f16(blk.d) * 0.125f; }
  // The four grid rows of chunk ib by one gather: row index k is qs[4ib + k] with bits 2k, 2k + 1
  // of qh[ib] as bits 8-9 (shifted left by 8 - 2k). One core of a 16-core Xeon, 4096 x 14336, best of
  // 5 short timings in 3 rounds, G weights/s: 15.7 against 8.9 with the block-wide indices of the
  // AVX2 path read back as load addresses (sixteen cores 145 / 108). (A Zen 4 core had given the
  // block-wide indices 15.7 against 13.4 for a per-chunk gather.)
  template <class F>
  FM_BLOCK static void chunk(const Block& blk, __m256i scales, int ib, F&& f) {
    const __m128i low = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(int(load_u32(blk.qs + 4 * ib))));
    const __m128i shifts = _mm_setr_epi32(8, 6, 4, 2);
    const __m128i high =
        _mm_and_si128(_mm_sllv_epi32(_mm_set1_epi32(blk.qh[ib]), shifts), _mm_set1_epi32(0x300));
    const __m256i grid =
        _mm256_i32gather_epi64(reinterpret_cast<const long long*>(kGridIq2s), _mm_or_si128(low, high), 8);
    f(grid, load_u32(blk.signs + 4 * ib), scales);
  }
};
#else
template <>
struct GridCodec<quant::IQ2_S> {
  using Block = quant::IQ2_S::Block;
  // Row index j: qs[j] and bits 2(j % 4), 2(j % 4) + 1 of qh[j / 4] as bits 8-9, for the whole block
  // in vectors (grid_indices), read back by the chunks as load addresses. One core of the AMD EPYC VM
  // about 14 G weights/s, as per-chunk scalar indices (as llama.cpp computes them, about 20
  // instructions a chunk), against 9.9 with a per-chunk index vector stored and read back at once.
  // Grid row k of chunk ib: idx[4ib + k].
  FM_BLOCK static IndexedState<32> prepare(const Block& blk) {
    return indexed_state<4, 32>(iq2_scales(blk.scales), blk.qs, blk.qh);
  }
  FM_SIMD static float d(const Block& blk) { return f16(blk.d) * 0.125f; }
  template <class F>
  FM_BLOCK static void chunk(const Block& blk, const IndexedState<32>& st, int ib, F&& f) {
    const uint16_t* i = st.idx + 4 * ib;
    f(grid8x4(kGridIq2s, i[0], i[1], i[2], i[3]), load_u32(blk.signs + 4 * ib), st.scales);
  }
};
#endif

template <>
struct GridCodec<quant::IQ3_XXS> {
  using Block = quant::IQ3_XXS::Block;
  FM_BLOCK static SignState prepare(const Block& blk) { return xxs_state(loadu(blk.scales_and_signs)); }
  FM_SIMD static float d(const Block& blk) { return f16(blk.d) * 0.25f; }
  template <class F>
  FM_BLOCK static void chunk(const Block& blk, const SignState& st, int ib, F&& f) {
    const uint8_t* q = blk.qs + 8 * ib;
    // (A gather here measured 2x slower than these byte-indexed loads on a Zen 4 core, and even with
    // them on a Xeon.)
    const int idx[8] = {q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]};
    f(grid4x8(kGridIq3xxs, idx), st.signs[ib], st.scales);
  }
};

// IQ3_S: grid row index i of chunk ib is qs[8ib + i] with bit i of qh[ib] as bit 8; scales are 8
// four-bit s (chunk 2i in the low nibble of byte i, 2i + 1 in the high one), as 2s + 1 in 8 int16,
// the same in both lanes, once per block (per chunk, they had been 4-5 scalar and vector operations).
FM_SIMD inline __m256i iq3s_scales(const uint8_t* scales) {
  const __m128i b = _mm_cvtsi32_si128(int(load_u32(scales)));
  const __m128i low = _mm_set1_epi8(0x0F);
  const __m128i s =
      _mm_cvtepu8_epi16(_mm_unpacklo_epi8(_mm_and_si128(b, low), _mm_and_si128(_mm_srli_epi16(b, 4), low)));
  return _mm256_broadcastsi128_si256(_mm_add_epi16(_mm_add_epi16(s, s), _mm_set1_epi16(1)));
}

#if FM_QUANT_AVX512
template <>
struct GridCodec<quant::IQ3_S> {
  using Block = quant::IQ3_S::Block;
  FM_BLOCK static __m256i prepare(const Block& blk) { return iq3s_scales(blk.scales); }
  FM_SIMD static float d(const Block& blk) { return f16(blk.d); }
  template <class F>
  FM_BLOCK static void chunk(const Block& blk, __m256i scales, int ib, F&& f) {
    // The 8 indices at once. (qh[ib] goes to every byte by one broadcast from memory: bit 8 of a
    // lane shifted left by 8 - i is bit i of its low byte whatever the others hold.)
    const __m256i low =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.qs + 8 * ib)));
    const __m256i high = _mm256_and_si256(
        _mm256_sllv_epi32(_mm256_set1_epi8(char(blk.qh[ib])), _mm256_setr_epi32(8, 7, 6, 5, 4, 3, 2, 1)),
        _mm256_set1_epi32(256));
    // The eight grid rows by one gather: one core of a Xeon, 4096 x 14336, G weights/s, gather
    // against the index vector stored and read back for scalar loads: AVX-512 8.1 / 4.7, AVX2 5.4 /
    // 3.3 and 5.0 / 2.8 in two runs.
    const __m256i grid =
        _mm256_i32gather_epi32(reinterpret_cast<const int*>(kGridIq3s), _mm256_or_si256(low, high), 4);
    f(grid, load_u32(blk.signs + 4 * ib), scales);
  }
};
#else
template <>
struct GridCodec<quant::IQ3_S> {
  using Block = quant::IQ3_S::Block;
  // The block's 64 indices in four vectors of 16 (the qh byte spread to 16-bit lanes, bit i moved to
  // bit 8 by a multiply), read back by the chunks as load addresses, as IQ2_S does. One core of the
  // AMD EPYC VM, 4096 x 14336, best of 5 short timings in 3-4 rounds, G weights/s: 8.4-8.6 against
  // 7.1-7.4 with the indices made per chunk in a vector for one gather, and 7.1-7.3 with this
  // block-wide index vector gathered from (two cores 15.3-16.9 / 13.0-14.6).
  // Grid row i of chunk ib: idx[8ib + i].
  FM_BLOCK static IndexedState<64> prepare(const Block& blk) {
    return indexed_state<8, 64>(iq3s_scales(blk.scales), blk.qs, blk.qh);
  }
  FM_SIMD static float d(const Block& blk) { return f16(blk.d); }
  template <class F>
  FM_BLOCK static void chunk(const Block& blk, const IndexedState<64>& st, int ib, F&& f) {
    const uint16_t* i = st.idx + 8 * ib;
    const int idx[8] = {i[0], i[1], i[2], i[3], i[4], i[5], i[6], i[7]};
    f(grid4x8(kGridIq3s, idx), load_u32(blk.signs + 4 * ib), st.scales);
  }
};
#endif

// The block kernel of every GridCodec format. (Chunks in pairs by add_dot2 on AVX-512, as the
// K-quants go, measured worse on one core of a noisy 16-core Xeon in both of two rounds for IQ2_XS
// and IQ3_XXS, 11.1 / 9.0 and 7.7 / 5.7 G weights/s against 13.3 / 12.9 and 9.6 / 10.0, and even
// for IQ2_XXS and IQ3_S: not taken.)
template <class Q>
struct Block256 {
  using G = GridCodec<Q>;
  template <int T>
  FM_BLOCK static void dot(const std::byte* p, const ActBlock256* const (&x)[T], int64_t b,
                           __m256 (&acc)[T]) {
    const auto& blk = quant::as_block<typename G::Block>(p);
    const auto state = G::prepare(blk);
    __m256i sumi[T];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int ib = 0; ib < 8; ++ib) {
      G::chunk(blk, state, ib, [&](__m256i u, uint32_t signs, __m256i scales) FM_BLOCK {
        const __m256i s = broadcast16(scales, ib);
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t)
          sumi[t] = add_dot_scaled(sumi[t], u, apply_signs(loadu(x[t][b].qs + 32 * ib), signs), s);
      });
    }
    plain_finish<T>(x, b, G::d(blk), sumi, acc);
  }
};

// IQ4_XS: the 16 non-uniform levels of IQ4_NL (never 0, so the values serve as their own signs) and
// 8 six-bit scales minus 32. Two chunks at a time: the 32 bytes of qs of chunks ib and ib + 1 hold,
// as low nibbles, values 0-15 of chunk ib (low lane) and of chunk ib + 1 (high lane), as high
// nibbles values 16-31, so the activations are read in the same halves (two 16-byte loads each)
// and one scale shuffle serves both vectors. (One core of the AMD EPYC VM, 4096 x 14336, best of 5
// short timings in 4 rounds: 23.4-24.0 G weights/s against 19.7-21.1 a chunk at a time, whose
// nibbles took a 16-byte load, a shift and a lane insert.)
template <>
struct Block256<quant::IQ4_XS> {
  // Scale j: nibble j of scales_l, two bits 2j of scales_h, minus 32; as 8 int16 in both lanes.
  FM_BLOCK static __m256i scales(const quant::IQ4_XS::Block& blk) {
    const __m256i nib = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(load_u32(blk.scales_l))),
                                                           _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                         _mm256_set1_epi32(0xF));
    const __m256i hi2 = _mm256_and_si256(
        _mm256_srlv_epi32(_mm256_set1_epi32(blk.scales_h), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
        _mm256_set1_epi32(3));
    const __m256i ls =
        _mm256_sub_epi32(_mm256_or_si256(nib, _mm256_slli_epi32(hi2, 4)), _mm256_set1_epi32(32));
    return _mm256_broadcastsi128_si256(
        _mm_packs_epi32(_mm256_castsi256_si128(ls), _mm256_extracti128_si256(ls, 1)));
  }
  template <int T>
  FM_BLOCK static void dot(const std::byte* p, const ActBlock256* const (&x)[T], int64_t b,
                           __m256 (&acc)[T]) {
    const auto& blk = quant::as_block<quant::IQ4_XS::Block>(p);
    const __m256i sc = scales(blk), table = table16(quant::tables::kValuesIq4nl);
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256i sumi[T];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int ib = 0; ib < 8; ib += 2) {
      const __m256i q = loadu(blk.qs + 16 * ib);
      const __m256i v_lo = _mm256_shuffle_epi8(table, _mm256_and_si256(q, low));
      const __m256i v_hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(q, 4), low));
      const __m256i u_lo = _mm256_sign_epi8(v_lo, v_lo), u_hi = _mm256_sign_epi8(v_hi, v_hi);
      const __m256i s = pair16(sc, ib);
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const int8_t* xs = x[t][b].qs + 32 * ib;
        const __m256i x_lo = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(xs + 32),
                                                 reinterpret_cast<const __m128i*>(xs));
        const __m256i x_hi = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(xs + 48),
                                                 reinterpret_cast<const __m128i*>(xs + 16));
        sumi[t] = add_dot_scaled(add_dot_scaled(sumi[t], u_lo, _mm256_sign_epi8(x_lo, v_lo), s), u_hi,
                                 _mm256_sign_epi8(x_hi, v_hi), s);
      }
    }
    plain_finish<T>(x, b, f16(blk.d), sumi, acc);
  }
};

// Q4_K / Q5_K scales and mins: 8 six-bit values each, packed in 12 bytes (k4_scale_min). Returns
// them as 8 int16 in both lanes.
FM_SIMD inline void k4_scales(const uint8_t* s, __m256i& scales, __m128i& mins) {
  const uint32_t a = load_u32(s), b = load_u32(s + 4), c = load_u32(s + 8);
  const uint32_t sc_lo = a & 0x3f3f3f3f, sc_hi = (c & 0x0f0f0f0f) | ((a >> 6) & 0x03030303) << 4;
  const uint32_t m_lo = b & 0x3f3f3f3f, m_hi = ((c >> 4) & 0x0f0f0f0f) | ((b >> 6) & 0x03030303) << 4;
  scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_set_epi32(0, 0, int(sc_hi), int(sc_lo))));
  mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, int(m_hi), int(m_lo)));
}

// acc += d * dx * sumi - dmin * dx * sum_j mins[j] * (activation sum of sub-block j of 32).
template <int T>
FM_BLOCK inline void k4_finish(const ActBlock256* const (&x)[T], int64_t b, float d, float dmin, __m128i mins,
                               const __m256i (&sumi)[T], __m256 (&acc)[T]) {
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) {
    const ActBlock256& a = x[t][b];
    const __m128i sums32 = _mm_hadd_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.bsums)),
                                          _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.bsums + 8)));
    const __m256 m = _mm256_castps128_ps256(_mm_cvtepi32_ps(_mm_madd_epi16(mins, sums32)));
    const __m256 s = _mm256_cvtepi32_ps(sumi[t]);
    acc[t] =
        _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), s, _mm256_fmadd_ps(_mm256_set1_ps(-dmin * a.d), m, acc[t]));
  }
}

// Q4_K and Q5_K: 8 sub-blocks of 32 with k4 scales and mins; the low nibbles of qs + 32k are
// sub-block 2k, the high ones 2k + 1; Q5_K's bit 4 of element l of sub-block j is bit j of qh[l].
template <class Q>
requires(std::is_same_v<Q, quant::Q4_K> || std::is_same_v<Q, quant::Q5_K>) struct Block256<Q> {
  static constexpr bool kHigh = std::is_same_v<Q, quant::Q5_K>;
  template <int T>
  FM_BLOCK static void dot(const std::byte* p, const ActBlock256* const (&x)[T], int64_t b,
                           __m256 (&acc)[T]) {
    const auto& blk = quant::as_block<typename Q::Block>(p);
    __m256i scales;
    __m128i mins;
    k4_scales(blk.scales, scales, mins);
    const __m256i low = _mm256_set1_epi8(0x0F), bit4 = _mm256_set1_epi8(0x10);
    __m256i qh;
    if constexpr (kHigh) qh = loadu(blk.qh);
    __m256i sumi[T];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const __m256i q = loadu(blk.qs + 32 * k);
      __m256i lo = _mm256_and_si256(q, low), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
      if constexpr (kHigh) {
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), bit4));
        qh = _mm256_srli_epi16(qh, 2);
      }
#if FM_QUANT_AVX512
      const __m256i s_lohi = quad16(scales, 2 * k, 2 * k + 1, 2 * k, 2 * k + 1);
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const int8_t* xs = x[t][b].qs + 64 * k;
        sumi[t] = add_dot2(sumi[t], lo, loadu(xs), hi, loadu(xs + 32), s_lohi);
      }
#else
      const __m256i s_lo = broadcast16(scales, 2 * k), s_hi = broadcast16(scales, 2 * k + 1);
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) {
        const int8_t* xs = x[t][b].qs + 64 * k;
        sumi[t] = add_dot_scaled(add_dot_scaled(sumi[t], lo, loadu(xs), s_lo), hi, loadu(xs + 32), s_hi);
      }
#endif
    }
    k4_finish<T>(x, b, f16(blk.d), f16(blk.dmin), mins, sumi, acc);
  }
};

// Shift of 16-bit lanes by a signed amount (left where positive); the callers mask the bits they keep.
template <int S>
FM_SIMD inline __m256i shift16(__m256i v) {
  if constexpr (S > 0) return _mm256_slli_epi16(v, S);
  if constexpr (S < 0) return _mm256_srli_epi16(v, -S);
  return v;
}

// The K-quants of 16-value sub-blocks (Q2_K, Q3_K, Q6_K) decode 32 values at a time from two of
// them: sumi[t] += chunks s = 0..3 (u[s], elements at + 32s ..) times their int16 scales, groups 2s
// and 2s + 1 of sc (8 int16 in both lanes).
template <int T>
FM_BLOCK inline void chunks16x8(const __m256i (&u)[4], __m256i sc, const ActBlock256* const (&x)[T],
                                int64_t b, int at, __m256i (&sumi)[T]) {
#if FM_QUANT_AVX512
#pragma GCC unroll 2
  for (int s = 0; s < 4; s += 2) {
    const __m256i scales = quad16(sc, 2 * s, 2 * s + 2, 2 * s + 1, 2 * s + 3);
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const int8_t* xs = x[t][b].qs + at + 32 * s;
      sumi[t] = add_dot2(sumi[t], u[s], loadu(xs), u[s + 1], loadu(xs + 32), scales);
    }
  }
#else
#pragma GCC unroll 4
  for (int s = 0; s < 4; ++s) {
    const __m256i scales = pair16(sc, 2 * s);
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t)
      sumi[t] = add_dot_scaled(sumi[t], u[s], loadu(x[t][b].qs + at + 32 * s), scales);
  }
#endif
}

// acc += d * dx * (sumi - offset * sum_g scales[g] * bsums[g]) for the formats with signed 16-value
// scales (16 int8 at sc16) and values stored with an offset (2^shift).
template <int T>
FM_BLOCK inline void offset_finish(const ActBlock256* const (&x)[T], int64_t b, float d, __m128i sc16,
                                   int shift, const __m256i (&sumi)[T], __m256 (&acc)[T]) {
  const __m256i scales = _mm256_cvtepi8_epi16(sc16);
#pragma GCC unroll 4
  for (int t = 0; t < T; ++t) {
    const ActBlock256& a = x[t][b];
    const __m256i off = _mm256_sll_epi32(_mm256_madd_epi16(scales, loadu(a.bsums)), _mm_cvtsi32_si128(shift));
    acc[t] =
        _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[t], off)), acc[t]);
  }
}

template <>
struct Block256<quant::Q6_K> {
  // Chunk s (elements 128h + 32s ..) of half h: low bits from ql0 / ql1, high bits 2s of qh.
  template <int S>
  FM_BLOCK static __m256i values(__m256i ql0, __m256i ql1, __m256i qh) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i ql = S % 2 == 0 ? ql0 : ql1;
    const __m256i lo = S < 2 ? _mm256_and_si256(ql, low) : _mm256_and_si256(_mm256_srli_epi16(ql, 4), low);
    return _mm256_or_si256(lo, _mm256_and_si256(shift16<4 - 2 * S>(qh), _mm256_set1_epi8(0x30)));
  }
  template <int T>
  FM_BLOCK static void dot(const std::byte* p, const ActBlock256* const (&x)[T], int64_t b,
                           __m256 (&acc)[T]) {
    const auto& blk = quant::as_block<quant::Q6_K::Block>(p);
    __m256i sumi[T];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m256i sc = _mm256_broadcastsi128_si256(
          _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.scales + 8 * h))));
      const __m256i ql0 = loadu(blk.ql + 64 * h), ql1 = loadu(blk.ql + 64 * h + 32),
                    qh = loadu(blk.qh + 32 * h);
      const __m256i u[4] = {values<0>(ql0, ql1, qh), values<1>(ql0, ql1, qh), values<2>(ql0, ql1, qh),
                            values<3>(ql0, ql1, qh)};
      chunks16x8<T>(u, sc, x, b, 128 * h, sumi);
    }
    const __m128i sc16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales));
    offset_finish<T>(x, b, f16(blk.d), sc16, 5, sumi, acc);  // values are stored + 32
  }
};

template <>
struct Block256<quant::Q3_K> {
  // The 16 six-bit scales (q3_k_scale) as signed bytes.
  FM_BLOCK static __m128i scales(const uint8_t* s) {
    const uint32_t a = load_u32(s), b = load_u32(s + 4), c = load_u32(s + 8);
    const uint32_t w0 = (a & 0x0f0f0f0f) | (c & 0x03030303) << 4;
    const uint32_t w1 = (b & 0x0f0f0f0f) | ((c >> 2) & 0x03030303) << 4;
    const uint32_t w2 = ((a >> 4) & 0x0f0f0f0f) | ((c >> 4) & 0x03030303) << 4;
    const uint32_t w3 = ((b >> 4) & 0x0f0f0f0f) | ((c >> 6) & 0x03030303) << 4;
    return _mm_sub_epi8(_mm_set_epi32(int(w3), int(w2), int(w1), int(w0)), _mm_set1_epi8(32));
  }
  // Chunk c = 4h + s: two low bits at 2s of q, the high bit c of hmask; value + 4 in 0..7.
  template <int H, int S>
  FM_BLOCK static __m256i values(__m256i q, __m256i hm) {
    return _mm256_or_si256(_mm256_and_si256(shift16<-2 * S>(q), _mm256_set1_epi8(3)),
                           _mm256_and_si256(shift16<2 - (4 * H + S)>(hm), _mm256_set1_epi8(4)));
  }
  template <int T, int H>
  FM_BLOCK static void half(const quant::Q3_K::Block& blk, __m128i sc16, __m256i hm,
                            const ActBlock256* const (&x)[T], int64_t b, __m256i (&sumi)[T]) {
    const __m256i sc =
        _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(H == 0 ? sc16 : _mm_srli_si128(sc16, 8)));
    const __m256i q = loadu(blk.qs + 32 * H);
    const __m256i u[4] = {values<H, 0>(q, hm), values<H, 1>(q, hm), values<H, 2>(q, hm), values<H, 3>(q, hm)};
    chunks16x8<T>(u, sc, x, b, 128 * H, sumi);
  }
  template <int T>
  FM_BLOCK static void dot(const std::byte* p, const ActBlock256* const (&x)[T], int64_t b,
                           __m256 (&acc)[T]) {
    const auto& blk = quant::as_block<quant::Q3_K::Block>(p);
    const __m128i sc16 = scales(blk.scales);
    const __m256i hm = loadu(blk.hmask);
    __m256i sumi[T];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    half<T, 0>(blk, sc16, hm, x, b, sumi);
    half<T, 1>(blk, sc16, hm, x, b, sumi);
    offset_finish<T>(x, b, f16(blk.d), sc16, 2, sumi, acc);  // values are stored + 4
  }
};

template <>
struct Block256<quant::Q2_K> {
  template <int T, int H>
  FM_BLOCK static void half(const quant::Q2_K::Block& blk, const ActBlock256* const (&x)[T], int64_t b,
                            __m256i (&sumi)[T]) {
    const __m128i s8 = _mm_and_si128(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk.scales + 8 * H)),
                                     _mm_set1_epi8(0x0F));
    const __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(s8));
    const __m256i q = loadu(blk.qs + 32 * H), m3 = _mm256_set1_epi8(3);
    const __m256i u[4] = {_mm256_and_si256(q, m3), _mm256_and_si256(_mm256_srli_epi16(q, 2), m3),
                          _mm256_and_si256(_mm256_srli_epi16(q, 4), m3),
                          _mm256_and_si256(_mm256_srli_epi16(q, 6), m3)};
    chunks16x8<T>(u, sc, x, b, 128 * H, sumi);
  }
  template <int T>
  FM_BLOCK static void dot(const std::byte* p, const ActBlock256* const (&x)[T], int64_t b,
                           __m256 (&acc)[T]) {
    const auto& blk = quant::as_block<quant::Q2_K::Block>(p);
    __m256i sumi[T];
    for (int t = 0; t < T; ++t) sumi[t] = _mm256_setzero_si256();
    half<T, 0>(blk, x, b, sumi);
    half<T, 1>(blk, x, b, sumi);
    const __m128i s16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales));
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s16, 4), _mm_set1_epi8(0x0F)));
    const float d = f16(blk.d), dmin = f16(blk.dmin);
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      const ActBlock256& a = x[t][b];
      const __m256 m = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, loadu(a.bsums)));
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(sumi[t]),
                               _mm256_fmadd_ps(_mm256_set1_ps(-dmin * a.d), m, acc[t]));
    }
  }
};

// Rows [r0, r1) for T tokens; consecutive super-blocks alternate between two accumulator sets, so
// the float FMAs of one block need not wait for the previous block's.
template <class Q, int T>
FM_SIMD void rows256(const Mat& w, int64_t r0, int64_t r1, const std::byte* xq, uint64_t xq_row_bytes,
                     float* y, int64_t ldy) {
  constexpr uint64_t kBytes = sizeof(typename Q::Block);
  // The K-quants and IQ4_XS are bound by memory on one core (rows of a few KB, one after another);
  // the grid i-quants are bound by their table loads, which prefetches would compete with.
  constexpr bool kPrefetch = !(std::is_same_v<Q, quant::IQ2_XXS> || std::is_same_v<Q, quant::IQ2_XS> ||
                               std::is_same_v<Q, quant::IQ2_S> || std::is_same_v<Q, quant::IQ3_XXS> ||
                               std::is_same_v<Q, quant::IQ3_S>);
  const int64_t n_blocks = w.cols / 256;
  const ActBlock256* x[T];
  for (int t = 0; t < T; ++t) x[t] = reinterpret_cast<const ActBlock256*>(xq + uint64_t(t) * xq_row_bytes);
  for (int64_t r = r0; r < r1; ++r) {
    const std::byte* row = w.data + uint64_t(r) * w.row_bytes;
    __m256 acc0[T], acc1[T];
    for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= n_blocks; b += 2) {
      if constexpr (kPrefetch) prefetch_ahead<2 * kBytes>(row + uint64_t(b) * kBytes);
      Block256<Q>::template dot<T>(row + uint64_t(b) * kBytes, x, b, acc0);
      Block256<Q>::template dot<T>(row + uint64_t(b + 1) * kBytes, x, b + 1, acc1);
    }
    if (b < n_blocks) Block256<Q>::template dot<T>(row + uint64_t(b) * kBytes, x, b, acc0);
    for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum(_mm256_add_ps(acc0[t], acc1[t]));
  }
}

template <class Q>
FM_SIMD void quant_tile(const Mat& w, int64_t r0, int64_t r1, const std::byte* xq, uint64_t xq_row_bytes,
                        int n_tokens, float* y, int64_t ldy) {
  static_assert(kMaxTileTokens == 4);
  const auto rows = [&]<int T>() FM_SIMD {
    if constexpr (Q::kBlock == 32) {  // eight rows at a time, the rest (under eight) one by one
      const int64_t r = w.interleaved ? rows32x8<Q, T, true>(w, r0, r1, xq, xq_row_bytes, y, ldy)
                                      : rows32x8<Q, T, false>(w, r0, r1, xq, xq_row_bytes, y, ldy);
      rows32<Q, T>(w, r, r1, xq, xq_row_bytes, y, ldy);
    }
    else
      rows256<Q, T>(w, r0, r1, xq, xq_row_bytes, y, ldy);
  };
  switch (n_tokens) {
    case 1:
      return rows.template operator()<1>();
    case 2:
      return rows.template operator()<2>();
    case 3:
      return rows.template operator()<3>();
    case 4:
      return rows.template operator()<4>();
  }
  FM_CHECK(false, "tile of {} tokens", n_tokens);
}

// ---- activation quantization (the same bytes as quantize_act_row_scalar) -------------------------

FM_SIMD inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// 8 values rounded as act_round: x * id to nearest even, NaN to -127, clamped to +-127.
FM_SIMD inline __m256i round8(const float* x, __m256 id) {
  __m256 v =
      _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x), id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
  return _mm256_cvtps_epi32(v);
}

template <int N>
FM_SIMD void simd_quantize_act(const float* x, int64_t cols, std::byte* out) {
  auto* blocks = reinterpret_cast<ActBlockFor<N>*>(out);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t bi = 0; bi < cols / N; ++bi) {
    const float* xb = x + bi * N;
    ActBlockFor<N>& a = blocks[bi];
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < N; i += 8) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xb + i), abs_mask), m);
    float id;
    act_scale(hmax(m), a.d, id);
    const __m256 vid = _mm256_set1_ps(id);
    int total = 0;
    for (int i = 0; i < N; i += 32) {
      const __m256i q0 = round8(xb + i, vid), q1 = round8(xb + i + 8, vid), q2 = round8(xb + i + 16, vid),
                    q3 = round8(xb + i + 24, vid);
      // packs interleave the lanes: 0 4 1 5 2 6 3 7 in units of 4 values; undo it.
      const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.qs + i),
                          _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      if constexpr (N == 32) {
        total = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3)));
      } else {
        a.bsums[i / 16] = int16_t(hsum_i32(_mm256_add_epi32(q0, q1)));
        a.bsums[i / 16 + 1] = int16_t(hsum_i32(_mm256_add_epi32(q2, q3)));
      }
    }
    if constexpr (N == 32) a.s = a.d * float(total);
  }
}

// The kernel of this instruction set for a quantized type.
QuantKernel simd_quant_kernel(DType dtype, const char* isa) {
  QuantKernel kernel{nullptr, nullptr};
  quant::visit_format(dtype, [&](auto q) {
    using Q = decltype(q);
    kernel = QuantKernel{simd_quantize_act<Q::kBlock>, quant_tile<Q>};
  });
  FM_CHECK(kernel.tile != nullptr, "no {} matmul kernel for {}", isa, dtype_name(dtype));
  return kernel;
}

}  // namespace
}  // namespace fm::cpu::detail
