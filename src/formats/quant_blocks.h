// GGML's block-quantized formats as traits: per format, the block layout (as ggml-common.h lays it
// out) and how one block turns into floats. Everything that reads quantized weights is written once
// as a template over these structs (dequantize_row in quant.cpp, the matmul tile kernels).
//
// Each trait has
//   kType                 the DType it describes
//   kBlock                elements per block
//   Block                 the stored layout, packed, sizeof == DTypeInfo.block_bytes (the constant
//                         here is GGML's; a test checks it against dtype_info())
//   dequantize_block(block, out)  writes kBlock floats
//
// dequantize_block follows gguf-py's quants.py (our bit-exact reference) operation by operation: it
// computes in float32 and rounds where numpy rounds, e.g. Q4_1 is (d * q) + m with two roundings and
// Q2_K is (d * sc) * q - (dmin * m). Translation units that must be bit-exact build with FP
// contraction off (see quant.cpp): a fused multiply-add would round once where numpy rounds twice.
//
// The traits live in an unnamed namespace on purpose: every translation unit gets its own copy,
// compiled with its own flags (the AVX2 kernels inline them under a target attribute, quant.cpp
// with contraction off), so the linker can never swap one TU's copy for another's.
//
// Blocks are read in place from mapped files, where they need not be aligned: the structs are packed
// (alignment 1) and multi-byte fields are little-endian, as on every machine we build for.
#pragma once
#include <bit>
#include <cstdint>
#include <cstring>

#include "formats/dtype.h"
#include "formats/iq_tables.h"
#include "util/half.h"

static_assert(std::endian::native == std::endian::little, "GGML blocks are little-endian");

namespace fm::quant {
namespace {

template <class B>
const B& as_block(const void* p) {
  return *static_cast<const B*>(p);
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// 32 values from 16 bytes of nibbles: low nibbles are elements 0..15, high nibbles 16..31.
template <class Level>
inline void unpack_nibbles16(const uint8_t* qs, Level level, float* out) {
  for (int j = 0; j < 16; ++j) {
    out[j] = level(qs[j] & 0xF);
    out[j + 16] = level(qs[j] >> 4);
  }
}

// The 16 products d * level[k] of a block: looking them up gives each value exactly as computing
// d * level[q] per value would, with one multiply per level instead of one per value.
struct LevelTable {
  float v[16];
  LevelTable(float d, const int8_t* levels) {
    for (int k = 0; k < 16; ++k) v[k] = d * float(levels[k]);
  }
  float operator()(int q) const { return v[q]; }
};

// ---- blocks of 32 -------------------------------------------------------------------------------

struct Q4_0 {
  static constexpr DType kType = DType::Q4_0;
  static constexpr int kBlock = 32;
  struct [[gnu::packed]] Block {
    uint16_t d;  // f16 scale
    uint8_t qs[16];
  };
  static_assert(sizeof(Block) == 18);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    unpack_nibbles16(
        b.qs, [d](int q) { return d * float(q - 8); }, out);
  }
};

struct Q4_1 {
  static constexpr DType kType = DType::Q4_1;
  static constexpr int kBlock = 32;
  struct [[gnu::packed]] Block {
    uint16_t d;  // f16 scale
    uint16_t m;  // f16 offset (the block minimum)
    uint8_t qs[16];
  };
  static_assert(sizeof(Block) == 20);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d), m = f16_to_f32(b.m);
    unpack_nibbles16(
        b.qs, [d, m](int q) { return d * float(q) + m; }, out);
  }
};

// Q5: the low four bits as Q4, bit 4 of element j is bit j of qh.
struct Q5_0 {
  static constexpr DType kType = DType::Q5_0;
  static constexpr int kBlock = 32;
  struct [[gnu::packed]] Block {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[16];
  };
  static_assert(sizeof(Block) == 22);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    const uint32_t qh = load_u32(b.qh);
    for (int j = 0; j < 16; ++j) {
      const int lo = (b.qs[j] & 0xF) | int((qh >> j) & 1) << 4;
      const int hi = (b.qs[j] >> 4) | int((qh >> (j + 16)) & 1) << 4;
      out[j] = d * float(lo - 16);
      out[j + 16] = d * float(hi - 16);
    }
  }
};

struct Q5_1 {
  static constexpr DType kType = DType::Q5_1;
  static constexpr int kBlock = 32;
  struct [[gnu::packed]] Block {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[16];
  };
  static_assert(sizeof(Block) == 24);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d), m = f16_to_f32(b.m);
    const uint32_t qh = load_u32(b.qh);
    for (int j = 0; j < 16; ++j) {
      const int lo = (b.qs[j] & 0xF) | int((qh >> j) & 1) << 4;
      const int hi = (b.qs[j] >> 4) | int((qh >> (j + 16)) & 1) << 4;
      out[j] = d * float(lo) + m;
      out[j + 16] = d * float(hi) + m;
    }
  }
};

struct Q8_0 {
  static constexpr DType kType = DType::Q8_0;
  static constexpr int kBlock = 32;
  struct [[gnu::packed]] Block {
    uint16_t d;
    int8_t qs[32];
  };
  static_assert(sizeof(Block) == 34);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    for (int j = 0; j < 32; ++j) out[j] = float(b.qs[j]) * d;
  }
};

// Non-linear 4-bit: a nibble picks one of 16 fixed levels.
struct IQ4_NL {
  static constexpr DType kType = DType::IQ4_NL;
  static constexpr int kBlock = 32;
  struct [[gnu::packed]] Block {
    uint16_t d;
    uint8_t qs[16];
  };
  static_assert(sizeof(Block) == 18);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    unpack_nibbles16(b.qs, LevelTable(d, tables::kValuesIq4nl), out);
  }
};

// OCP microscaling FP4: E2M1 values (stored doubled) times a power of two held as an E8M0 byte.
struct MXFP4 {
  static constexpr DType kType = DType::MXFP4;
  static constexpr int kBlock = 32;
  struct [[gnu::packed]] Block {
    uint8_t e;  // E8M0 exponent
    uint8_t qs[16];
  };
  static_assert(sizeof(Block) == 17);
  // 2^(e - 127) / 2, which undoes the doubling of the table (ggml_e8m0_to_fp32_half): e = 0 and 1
  // land below float32's normal range and are built as subnormal bit patterns.
  static float e8m0_half(uint8_t e) {
    return bits_to_f32(e < 2 ? uint32_t(0x00200000) << e : uint32_t(e - 1) << 23);
  }
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = e8m0_half(b.e);
    unpack_nibbles16(b.qs, LevelTable(d, tables::kValuesMxfp4), out);
  }
};

// ---- K-quants: super-blocks of 256 ---------------------------------------------------------------

// Q2_K: 16 groups of 16, each with a 4-bit scale and a 4-bit min; 2-bit values.
struct Q2_K {
  static constexpr DType kType = DType::Q2_K;
  static constexpr int kBlock = 256;
  struct [[gnu::packed]] Block {
    uint8_t scales[16];  // low nibble scale, high nibble min
    uint8_t qs[64];      // element e: bits 2*((e%128)/32) of qs[32*(e/128) + e%32]
    uint16_t d;
    uint16_t dmin;
  };
  static_assert(sizeof(Block) == 84);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
    for (int g = 0; g < 16; ++g) {
      const float dl = d * float(b.scales[g] & 0xF);
      const float ml = dmin * float(b.scales[g] >> 4);
      const uint8_t* q = b.qs + 32 * (g / 8) + 16 * (g % 2);
      const int shift = 2 * ((g % 8) / 2);
      for (int l = 0; l < 16; ++l) out[16 * g + l] = dl * float((q[l] >> shift) & 3) - ml;
    }
  }
};

// The 6-bit scales of Q3_K: 16 of them, low four bits in nibbles of bytes 0..7, high two bits in
// bytes 8..11; stored with an offset of 32.
inline int q3_k_scale(const uint8_t* scales, int i) {
  const int lo = i < 8 ? scales[i] & 0xF : scales[i - 8] >> 4;
  const int hi = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
  return int(int8_t(uint8_t(lo | hi << 4))) - 32;
}

// Q3_K: 16 groups of 16 with signed 6-bit scales; values are 2 low bits plus a high bit whose
// absence subtracts 4.
struct Q3_K {
  static constexpr DType kType = DType::Q3_K;
  static constexpr int kBlock = 256;
  struct [[gnu::packed]] Block {
    uint8_t hmask[32];  // element e: bit e/32 of hmask[e%32]
    uint8_t qs[64];     // low two bits, laid out as in Q2_K
    uint8_t scales[12];
    uint16_t d;
  };
  static_assert(sizeof(Block) == 110);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    for (int g = 0; g < 16; ++g) {
      const float dl = d * float(q3_k_scale(b.scales, g));
      const uint8_t* q = b.qs + 32 * (g / 8) + 16 * (g % 2);
      const uint8_t* hm = b.hmask + 16 * (g % 2);
      const int shift = 2 * ((g % 8) / 2), hbit = g / 2;
      for (int l = 0; l < 16; ++l) {
        const int v = ((q[l] >> shift) & 3) - (((hm[l] >> hbit) & 1) ? 0 : 4);
        out[16 * g + l] = dl * float(v);
      }
    }
  }
};

// The 6-bit scale and min of sub-block j (0..7) of Q4_K / Q5_K (get_scale_min_k4).
inline void k4_scale_min(const uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins.
struct Q4_K {
  static constexpr DType kType = DType::Q4_K;
  static constexpr int kBlock = 256;
  struct [[gnu::packed]] Block {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qs[128];  // sub-block j: nibble j%2 of qs[32*(j/2) .. +32]
  };
  static_assert(sizeof(Block) == 144);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      k4_scale_min(b.scales, j, sc, m);
      const float dl = d * float(sc), ml = dmin * float(m);
      const uint8_t* q = b.qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      for (int l = 0; l < 32; ++l) out[32 * j + l] = dl * float((q[l] >> shift) & 0xF) - ml;
    }
  }
};

struct Q5_K {
  static constexpr DType kType = DType::Q5_K;
  static constexpr int kBlock = 256;
  struct [[gnu::packed]] Block {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qh[32];   // bit 4 of sub-block j's element l: bit j of qh[l]
    uint8_t qs[128];  // low four bits, as Q4_K
  };
  static_assert(sizeof(Block) == 176);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      k4_scale_min(b.scales, j, sc, m);
      const float dl = d * float(sc), ml = dmin * float(m);
      const uint8_t* q = b.qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      for (int l = 0; l < 32; ++l) {
        const int v = ((q[l] >> shift) & 0xF) | ((b.qh[l] >> j) & 1) << 4;
        out[32 * j + l] = dl * float(v) - ml;
      }
    }
  }
};

// Q6_K: 16 groups of 16 with signed 8-bit scales; 6-bit values offset by 32.
struct Q6_K {
  static constexpr DType kType = DType::Q6_K;
  static constexpr int kBlock = 256;
  struct [[gnu::packed]] Block {
    uint8_t ql[128];  // element e = 128h + 64k + l: nibble k of ql[64h + l]
    uint8_t qh[64];   // element e = 128h + 32s + l: bits 2s..2s+1 of qh[32h + l]
    int8_t scales[16];
    uint16_t d;
  };
  static_assert(sizeof(Block) == 210);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    for (int g = 0; g < 16; ++g) {
      const float dl = d * float(b.scales[g]);
      const int e0 = 16 * g, h = e0 / 128, r = e0 % 128;
      const uint8_t* ql = b.ql + 64 * h + r % 64;
      const uint8_t* qh = b.qh + 32 * h + r % 32;
      const int lshift = 4 * (r / 64), hshift = 2 * (r / 32);
      for (int l = 0; l < 16; ++l) {
        const int v = ((ql[l] >> lshift) & 0xF) | ((qh[l] >> hshift) & 3) << 4;
        out[e0 + l] = dl * float(v - 32);
      }
    }
  }
};

// ---- i-quants: super-blocks of 256 ----------------------------------------------------------------
// Values are grid rows (8 or 4 magnitudes each, picked by an index) with per-value signs.

// kSignRows[s][i] = -1 where bit i of s is set, else +1.
struct SignRows {
  float v[256][8];
  constexpr SignRows() : v() {
    for (int s = 0; s < 256; ++s)
      for (int i = 0; i < 8; ++i) v[s][i] = (s >> i) & 1 ? -1.0f : 1.0f;
  }
};
inline constexpr SignRows kSignRows;

// out[i] = (db * grid[i]) * sign[i] for N values, as gguf-py multiplies by +-1 (exactly). Table
// lookups instead of bit tests and branches keep it branch-free, so it vectorizes.
template <int N>
inline void signed_grid(float db, const uint8_t* grid, const float* sign, float* out) {
  for (int i = 0; i < N; ++i) out[i] = db * float(grid[i]) * sign[i];
}

// IQ2_XXS: per 32 values two words: four 8-bit grid indices, then four 7-bit sign indices and a
// 4-bit scale.
struct IQ2_XXS {
  static constexpr DType kType = DType::IQ2_XXS;
  static constexpr int kBlock = 256;
  struct [[gnu::packed]] Block {
    uint16_t d;
    uint8_t qs[64];
  };
  static_assert(sizeof(Block) == 66);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* idx = b.qs + 8 * ib;
      const uint32_t aux = load_u32(b.qs + 8 * ib + 4);
      const float db = d * (0.5f + float(aux >> 28)) * 0.25f;
      for (int k = 0; k < 4; ++k) {
        const float* sign = kSignRows.v[tables::kSignsIq2xs[(aux >> (7 * k)) & 127]];
        signed_grid<8>(db, tables::kGridIq2xxs[idx[k]], sign, out + 32 * ib + 8 * k);
      }
    }
  }
};

// IQ2_XS: per 8 values a 16-bit word: 9-bit grid index, 7-bit sign index; 4-bit scale per 16.
struct IQ2_XS {
  static constexpr DType kType = DType::IQ2_XS;
  static constexpr int kBlock = 256;
  struct [[gnu::packed]] Block {
    uint16_t d;
    uint16_t qs[32];
    uint8_t scales[8];
  };
  static_assert(sizeof(Block) == 74);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    for (int g = 0; g < 16; ++g) {
      const float db = d * (0.5f + float((b.scales[g / 2] >> (4 * (g % 2))) & 0xF)) * 0.25f;
      for (int k = 0; k < 2; ++k) {
        const uint16_t q = b.qs[2 * g + k];
        const float* sign = kSignRows.v[tables::kSignsIq2xs[q >> 9]];
        signed_grid<8>(db, tables::kGridIq2xs[q & 511], sign, out + 16 * g + 8 * k);
      }
    }
  }
};

// IQ2_S: 10-bit grid indices (8 bits in qs, 2 in qh) and explicit sign bytes; 4-bit scale per 16.
struct IQ2_S {
  static constexpr DType kType = DType::IQ2_S;
  static constexpr int kBlock = 256;
  struct [[gnu::packed]] Block {
    uint16_t d;
    uint8_t qs[32];
    uint8_t signs[32];
    uint8_t qh[8];
    uint8_t scales[8];
  };
  static_assert(sizeof(Block) == 82);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    for (int g = 0; g < 16; ++g) {
      const float db = d * (0.5f + float((b.scales[g / 2] >> (4 * (g % 2))) & 0xF)) * 0.25f;
      for (int k = 0; k < 2; ++k) {
        const int i = 2 * g + k;
        const int index = b.qs[i] | ((b.qh[i / 4] >> (2 * (i % 4))) & 3) << 8;
        signed_grid<8>(db, tables::kGridIq2s[index], kSignRows.v[b.signs[i]], out + 8 * i);
      }
    }
  }
};

// IQ3_XXS: 8-bit indices into a grid of 4 magnitudes; per 32 values a word of four 7-bit sign
// indices and a 4-bit scale.
struct IQ3_XXS {
  static constexpr DType kType = DType::IQ3_XXS;
  static constexpr int kBlock = 256;
  struct [[gnu::packed]] Block {
    uint16_t d;
    uint8_t qs[64];                // grid indices
    uint8_t scales_and_signs[32];  // 8 words
  };
  static_assert(sizeof(Block) == 98);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    for (int ib = 0; ib < 8; ++ib) {
      const uint32_t aux = load_u32(b.scales_and_signs + 4 * ib);
      const float db = d * (0.5f + float(aux >> 28)) * 0.5f;
      for (int k = 0; k < 4; ++k) {
        const float* sign = kSignRows.v[tables::kSignsIq2xs[(aux >> (7 * k)) & 127]];
        float* o = out + 32 * ib + 8 * k;
        signed_grid<4>(db, tables::kGridIq3xxs[b.qs[8 * ib + 2 * k]], sign, o);
        signed_grid<4>(db, tables::kGridIq3xxs[b.qs[8 * ib + 2 * k + 1]], sign + 4, o + 4);
      }
    }
  }
};

// IQ3_S: 9-bit indices (8 in qs, 1 in qh) into a grid of 4 magnitudes, explicit sign bytes, odd
// 4-bit scales (1 + 2s) per 32.
struct IQ3_S {
  static constexpr DType kType = DType::IQ3_S;
  static constexpr int kBlock = 256;
  struct [[gnu::packed]] Block {
    uint16_t d;
    uint8_t qs[64];
    uint8_t qh[8];
    uint8_t signs[32];
    uint8_t scales[4];
  };
  static_assert(sizeof(Block) == 110);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    for (int ib = 0; ib < 8; ++ib) {
      const float db = d * float(1 + 2 * ((b.scales[ib / 2] >> (4 * (ib % 2))) & 0xF));
      for (int k = 0; k < 4; ++k) {
        const int s = 4 * ib + k;  // 8 values: grid indices 2s and 2s + 1, sign byte s
        float* o = out + 8 * s;
        for (int half = 0; half < 2; ++half) {
          const int i = 2 * s + half;
          const int index = b.qs[i] | ((b.qh[i / 8] >> (i % 8)) & 1) << 8;
          signed_grid<4>(db, tables::kGridIq3s[index], kSignRows.v[b.signs[s]] + 4 * half, o + 4 * half);
        }
      }
    }
  }
};

// IQ4_XS: IQ4_NL's levels with a 6-bit scale (offset 32) per 32 values.
struct IQ4_XS {
  static constexpr DType kType = DType::IQ4_XS;
  static constexpr int kBlock = 256;
  struct [[gnu::packed]] Block {
    uint16_t d;
    uint16_t scales_h;    // high two bits of scale j: bits 2j..2j+1
    uint8_t scales_l[4];  // low four bits of scale j: nibble j%2 of scales_l[j/2]
    uint8_t qs[128];      // sub-block j: nibbles of qs[16j .. +16], as IQ4_NL
  };
  static_assert(sizeof(Block) == 136);
  static void dequantize_block(const void* block, float* out) {
    const auto& b = as_block<Block>(block);
    const float d = f16_to_f32(b.d);
    for (int j = 0; j < 8; ++j) {
      const int ls = ((b.scales_l[j / 2] >> (4 * (j % 2))) & 0xF) | ((b.scales_h >> (2 * j)) & 3) << 4;
      const float dl = d * float(ls - 32);
      unpack_nibbles16(b.qs + 16 * j, LevelTable(dl, tables::kValuesIq4nl), out + 32 * j);
    }
  }
};

// Calls f(Traits{}) for the traits of a quantized type; returns false for types without traits.
template <class F>
bool visit_format(DType t, F&& f) {
  switch (t) {
    case DType::Q4_0:
      f(Q4_0{});
      return true;
    case DType::Q4_1:
      f(Q4_1{});
      return true;
    case DType::Q5_0:
      f(Q5_0{});
      return true;
    case DType::Q5_1:
      f(Q5_1{});
      return true;
    case DType::Q8_0:
      f(Q8_0{});
      return true;
    case DType::IQ4_NL:
      f(IQ4_NL{});
      return true;
    case DType::MXFP4:
      f(MXFP4{});
      return true;
    case DType::Q2_K:
      f(Q2_K{});
      return true;
    case DType::Q3_K:
      f(Q3_K{});
      return true;
    case DType::Q4_K:
      f(Q4_K{});
      return true;
    case DType::Q5_K:
      f(Q5_K{});
      return true;
    case DType::Q6_K:
      f(Q6_K{});
      return true;
    case DType::IQ2_XXS:
      f(IQ2_XXS{});
      return true;
    case DType::IQ2_XS:
      f(IQ2_XS{});
      return true;
    case DType::IQ2_S:
      f(IQ2_S{});
      return true;
    case DType::IQ3_XXS:
      f(IQ3_XXS{});
      return true;
    case DType::IQ3_S:
      f(IQ3_S{});
      return true;
    case DType::IQ4_XS:
      f(IQ4_XS{});
      return true;
    default:
      return false;
  }
}

}  // namespace
}  // namespace fm::quant
