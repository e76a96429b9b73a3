// Each block-quantized format as integers, for the dot products with 8-bit activations
// (quant_act.h): a block of formats/quant_blocks.h reads as
//
//   w[i] = d * sc[j] * v[i] + dm * mn[j]        i in sub-block j (kSub values each)
//
// with int8 values v, small integer scales sc and mins mn, and two floats d and dm. Its dot product
// with an activation block (x[i] = dx * q[i]) is then
//
//   dx * (d * sum_j sc[j] * sum_{i in j} v[i] q[i]  +  dm * sum_j mn[j] * sum_{i in j} q[i])
//
// in exact integer sums and three float products. The values are the ones dequantize_block decodes
// (test_matmul_quant checks the kernels against it), up to the float rounding of d * sc.
//
// This is the portable reading (matmul_quant.cpp); the AVX2 kernels decode the same numbers with
// vector instructions in their own layout.
#pragma once
#include <cstdint>

#include "formats/quant_blocks.h"

namespace fm::cpu::detail {
namespace {

// One block's integers: values, per-sub-block scales and mins, and the two float multipliers.
template <int kBlock, int kSub>
struct IntBlock {
  int8_t v[kBlock];
  int16_t sc[kBlock / kSub];
  int16_t mn[kBlock / kSub];
  float d = 0.0f;
  float dm = 0.0f;  // 0 where the format has no mins or offsets
};

template <class Q>
struct IntCodec;

// Blocks of 32: one sub-block with scale 1; mn = 1 carries an offset or min in dm. Per format,
// Int32<Q> gives the 32 values, d and dm (0 where the format has neither offset nor min).
template <class Q>
struct Int32;

template <class Q>
requires(Q::kBlock == 32) struct IntCodec<Q> {
  static constexpr int kSub = 32;
  static void decode(const void* p, IntBlock<32, 32>& o) {
    const auto& b = quant::as_block<typename Q::Block>(p);
    Int32<Q>::values(b, o.v);
    o.sc[0] = 1, o.mn[0] = 1, o.d = Int32<Q>::d(b), o.dm = Int32<Q>::dm(b);
  }
};

template <class Level>
void int_nibbles(const uint8_t* qs, Level level, int8_t* v) {
  for (int j = 0; j < 16; ++j) {
    v[j] = int8_t(level(qs[j] & 0xF));
    v[j + 16] = int8_t(level(qs[j] >> 4));
  }
}

// Q5: bit 4 of element j is bit j of qh.
inline void int_q5(const uint8_t* qs, uint32_t qh, int offset, int8_t* v) {
  for (int j = 0; j < 16; ++j) {
    v[j] = int8_t(((qs[j] & 0xF) | int((qh >> j) & 1) << 4) - offset);
    v[j + 16] = int8_t(((qs[j] >> 4) | int((qh >> (j + 16)) & 1) << 4) - offset);
  }
}

template <>
struct Int32<quant::Q4_0> {
  static void values(const quant::Q4_0::Block& b, int8_t* v) {
    int_nibbles(
        b.qs, [](int q) { return q - 8; }, v);
  }
  static float d(const quant::Q4_0::Block& b) { return f16_to_f32(b.d); }
  static float dm(const quant::Q4_0::Block&) { return 0.0f; }
};

template <>
struct Int32<quant::Q4_1> {
  static void values(const quant::Q4_1::Block& b, int8_t* v) {
    int_nibbles(
        b.qs, [](int q) { return q; }, v);
  }
  static float d(const quant::Q4_1::Block& b) { return f16_to_f32(b.d); }
  static float dm(const quant::Q4_1::Block& b) { return f16_to_f32(b.m); }
};

template <>
struct Int32<quant::Q5_0> {
  static void values(const quant::Q5_0::Block& b, int8_t* v) { int_q5(b.qs, quant::load_u32(b.qh), 16, v); }
  static float d(const quant::Q5_0::Block& b) { return f16_to_f32(b.d); }
  static float dm(const quant::Q5_0::Block&) { return 0.0f; }
};

template <>
struct Int32<quant::Q5_1> {
  static void values(const quant::Q5_1::Block& b, int8_t* v) { int_q5(b.qs, quant::load_u32(b.qh), 0, v); }
  static float d(const quant::Q5_1::Block& b) { return f16_to_f32(b.d); }
  static float dm(const quant::Q5_1::Block& b) { return f16_to_f32(b.m); }
};

template <>
struct Int32<quant::Q8_0> {
  static void values(const quant::Q8_0::Block& b, int8_t* v) {
    for (int j = 0; j < 32; ++j) v[j] = b.qs[j];
  }
  static float d(const quant::Q8_0::Block& b) { return f16_to_f32(b.d); }
  static float dm(const quant::Q8_0::Block&) { return 0.0f; }
};

template <>
struct Int32<quant::IQ4_NL> {
  static void values(const quant::IQ4_NL::Block& b, int8_t* v) {
    int_nibbles(
        b.qs, [](int q) { return quant::tables::kValuesIq4nl[q]; }, v);
  }
  static float d(const quant::IQ4_NL::Block& b) { return f16_to_f32(b.d); }
  static float dm(const quant::IQ4_NL::Block&) { return 0.0f; }
};

template <>
struct Int32<quant::MXFP4> {
  static void values(const quant::MXFP4::Block& b, int8_t* v) {
    int_nibbles(
        b.qs, [](int q) { return quant::tables::kValuesMxfp4[q]; }, v);
  }
  static float d(const quant::MXFP4::Block& b) { return quant::MXFP4::e8m0_half(b.e); }
  static float dm(const quant::MXFP4::Block&) { return 0.0f; }
};

// ---- K-quants ----------------------------------------------------------------------------------

// Q2_K and Q3_K: 16 groups of 16 two-bit values, group g at bits 2 * ((g % 8) / 2) of the 16 bytes
// qs + 32 * (g / 8) + 16 * (g % 2); value(g, l, low2) adds what else the format stores.
template <class Block, class Value>
void int_k2_groups(const Block& b, Value value, IntBlock<256, 16>& o) {
  for (int g = 0; g < 16; ++g) {
    const uint8_t* q = b.qs + 32 * (g / 8) + 16 * (g % 2);
    const int shift = 2 * ((g % 8) / 2);
    for (int l = 0; l < 16; ++l) o.v[16 * g + l] = int8_t(value(g, l, (q[l] >> shift) & 3));
  }
}

template <>
struct IntCodec<quant::Q2_K> {
  static constexpr int kSub = 16;
  static void decode(const void* p, IntBlock<256, 16>& o) {
    const auto& b = quant::as_block<quant::Q2_K::Block>(p);
    for (int g = 0; g < 16; ++g) o.sc[g] = int16_t(b.scales[g] & 0xF), o.mn[g] = int16_t(b.scales[g] >> 4);
    int_k2_groups(
        b, [](int, int, int low2) { return low2; }, o);
    o.d = f16_to_f32(b.d), o.dm = -f16_to_f32(b.dmin);
  }
};

template <>
struct IntCodec<quant::Q3_K> {
  static constexpr int kSub = 16;
  static void decode(const void* p, IntBlock<256, 16>& o) {
    const auto& b = quant::as_block<quant::Q3_K::Block>(p);
    for (int g = 0; g < 16; ++g) o.sc[g] = int16_t(quant::q3_k_scale(b.scales, g)), o.mn[g] = 0;
    int_k2_groups(
        b,
        [&](int g, int l, int low2) { return low2 - ((b.hmask[16 * (g % 2) + l] >> (g / 2)) & 1 ? 0 : 4); },
        o);
    o.d = f16_to_f32(b.d), o.dm = 0.0f;
  }
};

// Q4_K and Q5_K: 8 sub-blocks of 32 with six-bit scales and mins (k4_scale_min), four low bits of
// sub-block j at bits 4 * (j % 2) of qs + 32 * (j / 2); high(j, l) gives Q5_K's fifth bit.
template <class Block, class High>
void int_k4_groups(const Block& b, High high, IntBlock<256, 32>& o) {
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    quant::k4_scale_min(b.scales, j, sc, m);
    o.sc[j] = int16_t(sc), o.mn[j] = int16_t(m);
    const uint8_t* q = b.qs + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) o.v[32 * j + l] = int8_t(((q[l] >> shift) & 0xF) | high(j, l));
  }
  o.d = f16_to_f32(b.d), o.dm = -f16_to_f32(b.dmin);
}

template <>
struct IntCodec<quant::Q4_K> {
  static constexpr int kSub = 32;
  static void decode(const void* p, IntBlock<256, 32>& o) {
    int_k4_groups(
        quant::as_block<quant::Q4_K::Block>(p), [](int, int) { return 0; }, o);
  }
};

template <>
struct IntCodec<quant::Q5_K> {
  static constexpr int kSub = 32;
  static void decode(const void* p, IntBlock<256, 32>& o) {
    const auto& b = quant::as_block<quant::Q5_K::Block>(p);
    int_k4_groups(
        b, [&](int j, int l) { return ((b.qh[l] >> j) & 1) << 4; }, o);
  }
};

template <>
struct IntCodec<quant::Q6_K> {
  static constexpr int kSub = 16;
  static void decode(const void* p, IntBlock<256, 16>& o) {
    const auto& b = quant::as_block<quant::Q6_K::Block>(p);
    for (int g = 0; g < 16; ++g) {
      o.sc[g] = b.scales[g], o.mn[g] = 0;
      const int e0 = 16 * g, h = e0 / 128, r = e0 % 128;
      const uint8_t* ql = b.ql + 64 * h + r % 64;
      const uint8_t* qh = b.qh + 32 * h + r % 32;
      const int lshift = 4 * (r / 64), hshift = 2 * (r / 32);
      for (int l = 0; l < 16; ++l)
        o.v[e0 + l] = int8_t((((ql[l] >> lshift) & 0xF) | ((qh[l] >> hshift) & 3) << 4) - 32);
    }
    o.d = f16_to_f32(b.d), o.dm = 0.0f;
  }
};

// ---- i-quants: v = grid magnitude with its sign; the scale (0.5 + s) / 4 is (2s + 1) / 8 --------

template <int N>
void int_signed_grid(const uint8_t* grid, uint8_t signs, int8_t* v) {
  for (int i = 0; i < N; ++i) v[i] = int8_t((signs >> i) & 1 ? -int(grid[i]) : int(grid[i]));
}

template <>
struct IntCodec<quant::IQ2_XXS> {
  static constexpr int kSub = 32;
  static void decode(const void* p, IntBlock<256, 32>& o) {
    const auto& b = quant::as_block<quant::IQ2_XXS::Block>(p);
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* idx = b.qs + 8 * ib;
      const uint32_t aux = quant::load_u32(b.qs + 8 * ib + 4);
      o.sc[ib] = int16_t(2 * (aux >> 28) + 1), o.mn[ib] = 0;
      for (int k = 0; k < 4; ++k)
        int_signed_grid<8>(quant::tables::kGridIq2xxs[idx[k]],
                           quant::tables::kSignsIq2xs[(aux >> (7 * k)) & 127], o.v + 32 * ib + 8 * k);
    }
    o.d = f16_to_f32(b.d) * 0.125f, o.dm = 0.0f;
  }
};

// IQ2_XS and IQ2_S: 16 groups of 16 with four-bit scales (group 2i in the low nibble of scales[i]),
// two grid rows of 8 per group; row(i, grid, signs) gives row i's grid magnitudes and sign byte.
template <class Block, class Row>
void int_iq2_groups(const Block& b, Row row, IntBlock<256, 16>& o) {
  for (int g = 0; g < 16; ++g) {
    o.sc[g] = int16_t(2 * ((b.scales[g / 2] >> (4 * (g % 2))) & 0xF) + 1), o.mn[g] = 0;
    for (int i = 2 * g; i < 2 * g + 2; ++i) {
      const uint8_t* grid;
      uint8_t signs;
      row(i, grid, signs);
      int_signed_grid<8>(grid, signs, o.v + 8 * i);
    }
  }
  o.d = f16_to_f32(b.d) * 0.125f, o.dm = 0.0f;
}

template <>
struct IntCodec<quant::IQ2_XS> {
  static constexpr int kSub = 16;
  static void decode(const void* p, IntBlock<256, 16>& o) {
    const auto& b = quant::as_block<quant::IQ2_XS::Block>(p);
    int_iq2_groups(
        b,
        [&](int i, const uint8_t*& grid, uint8_t& signs) {
          grid = quant::tables::kGridIq2xs[b.qs[i] & 511], signs = quant::tables::kSignsIq2xs[b.qs[i] >> 9];
        },
        o);
  }
};

template <>
struct IntCodec<quant::IQ2_S> {
  static constexpr int kSub = 16;
  static void decode(const void* p, IntBlock<256, 16>& o) {
    const auto& b = quant::as_block<quant::IQ2_S::Block>(p);
    int_iq2_groups(
        b,
        [&](int i, const uint8_t*& grid, uint8_t& signs) {
          grid = quant::tables::kGridIq2s[b.qs[i] | ((b.qh[i / 4] >> (2 * (i % 4))) & 3) << 8],
          signs = b.signs[i];
        },
        o);
  }
};

template <>
struct IntCodec<quant::IQ3_XXS> {
  static constexpr int kSub = 32;
  static void decode(const void* p, IntBlock<256, 32>& o) {
    const auto& b = quant::as_block<quant::IQ3_XXS::Block>(p);
    for (int ib = 0; ib < 8; ++ib) {
      const uint32_t aux = quant::load_u32(b.scales_and_signs + 4 * ib);
      o.sc[ib] = int16_t(2 * (aux >> 28) + 1), o.mn[ib] = 0;
      for (int k = 0; k < 4; ++k) {
        const uint8_t signs = quant::tables::kSignsIq2xs[(aux >> (7 * k)) & 127];
        int8_t* v = o.v + 32 * ib + 8 * k;
        int_signed_grid<4>(quant::tables::kGridIq3xxs[b.qs[8 * ib + 2 * k]], signs, v);
        int_signed_grid<4>(quant::tables::kGridIq3xxs[b.qs[8 * ib + 2 * k + 1]], uint8_t(signs >> 4), v + 4);
      }
    }
    o.d = f16_to_f32(b.d) * 0.25f, o.dm = 0.0f;
  }
};

template <>
struct IntCodec<quant::IQ3_S> {
  static constexpr int kSub = 32;
  static void decode(const void* p, IntBlock<256, 32>& o) {
    const auto& b = quant::as_block<quant::IQ3_S::Block>(p);
    for (int ib = 0; ib < 8; ++ib) {
      o.sc[ib] = int16_t(1 + 2 * ((b.scales[ib / 2] >> (4 * (ib % 2))) & 0xF)), o.mn[ib] = 0;
      for (int k = 0; k < 4; ++k) {
        const int s = 4 * ib + k;
        for (int half = 0; half < 2; ++half) {
          const int i = 2 * s + half;
          const int index = b.qs[i] | ((b.qh[i / 8] >> (i % 8)) & 1) << 8;
          int_signed_grid<4>(quant::tables::kGridIq3s[index], uint8_t(b.signs[s] >> (4 * half)),
                             o.v + 8 * s + 4 * half);
        }
      }
    }
    o.d = f16_to_f32(b.d), o.dm = 0.0f;
  }
};

template <>
struct IntCodec<quant::IQ4_XS> {
  static constexpr int kSub = 32;
  static void decode(const void* p, IntBlock<256, 32>& o) {
    const auto& b = quant::as_block<quant::IQ4_XS::Block>(p);
    for (int j = 0; j < 8; ++j) {
      const int ls = ((b.scales_l[j / 2] >> (4 * (j % 2))) & 0xF) | ((b.scales_h >> (2 * j)) & 3) << 4;
      o.sc[j] = int16_t(ls - 32), o.mn[j] = 0;
      int_nibbles(
          b.qs + 16 * j, [](int q) { return quant::tables::kValuesIq4nl[q]; }, o.v + 32 * j);
    }
    o.d = f16_to_f32(b.d), o.dm = 0.0f;
  }
};

}  // namespace
}  // namespace fm::cpu::detail
