// Row conversions for the stored weight formats: the dispatch over formats/quant_blocks.h, the
// quantizers and MLX affine dequantization.
#include "formats/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "util/error.h"
#include "util/half.h"

// gguf-py computes every step in float32 numpy, which never fuses a multiply with an add. C++ lets
// the compiler contract a * b + c into one FMA (GCC does by default wherever FMA is enabled, e.g.
// with -march=native), which rounds once where numpy rounds twice. Contraction is off for the rest
// of this file, including the block traits included below.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "formats/quant_blocks.h"

namespace fm {

namespace {

using namespace quant;

template <class Q>
void dequantize_blocks(const std::byte* src, int64_t n_blocks, float* out) {
  for (int64_t i = 0; i < n_blocks; ++i)
    Q::dequantize_block(src + i * int64_t(sizeof(typename Q::Block)), out + i * Q::kBlock);
}

// ---- quantizers that follow gguf-py bit for bit ---------------------------------------------------

// gguf-py's reciprocal: np.where(d == 0, 0, 1 / d).
float inverse_or_zero(float d) { return d == 0.0f ? 0.0f : 1.0f / d; }

// np.trunc(v).astype(np.uint8).clip(0, hi) for the v >= 0 these quantizers produce from finite input.
int trunc_level(float v, int hi) {
  if (!(v > 0.0f)) return 0;
  return v >= float(hi) ? hi : int(v);
}

// The element of largest magnitude, sign kept; the first of equals (numpy's argmax).
float signed_absmax(const float* x, int n) {
  float amax = std::fabs(x[0]), max = x[0];
  for (int j = 1; j < n; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void quantize_block(const float* x, Q8_0::Block& b) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = inverse_or_zero(d);
  // np_roundf rounds half away from zero, as std::round does; |x * id| <= 127 for finite input.
  for (int j = 0; j < 32; ++j) b.qs[j] = int8_t(std::clamp(std::round(x[j] * id), -127.0f, 127.0f));
  b.d = f32_to_f16(d);
}

// Q4_0 / Q5_0: d maps the signed extreme to level 0; levels = trunc(x / d + offset + 0.5). Returns
// d as f16.
template <int kLevels>
uint16_t quantize_symmetric(const float* x, int* q) {
  constexpr float offset = kLevels / 2;
  const float d = signed_absmax(x, 32) / -offset;
  const float id = inverse_or_zero(d);
  for (int j = 0; j < 32; ++j) q[j] = trunc_level(x[j] * id + (offset + 0.5f), kLevels - 1);
  return f32_to_f16(d);
}

struct ScaleMin16 {
  uint16_t d, m;  // f16
};

// Q4_1 / Q5_1: levels = trunc((x - min) / d + 0.5) with d = (max - min) / (levels - 1).
template <int kLevels>
ScaleMin16 quantize_affine(const float* x, int* q) {
  float min = x[0], max = x[0];
  for (int j = 1; j < 32; ++j) {
    min = std::min(min, x[j]);
    max = std::max(max, x[j]);
  }
  const float d = (max - min) / float(kLevels - 1);
  const float id = inverse_or_zero(d);
  for (int j = 0; j < 32; ++j) q[j] = trunc_level((x[j] - min) * id + 0.5f, kLevels - 1);
  return {f32_to_f16(d), f32_to_f16(min)};
}

void pack_nibbles(const int* q, uint8_t* qs) {
  for (int j = 0; j < 16; ++j) qs[j] = uint8_t((q[j] & 0xF) | (q[j + 16] & 0xF) << 4);
}

void pack_high_bits(const int* q, uint8_t* qh) {
  uint32_t bits = 0;
  for (int j = 0; j < 32; ++j) bits |= uint32_t(q[j] >> 4) << j;
  std::memcpy(qh, &bits, 4);
}

void quantize_block(const float* x, Q4_0::Block& b) {
  int q[32];
  b.d = quantize_symmetric<16>(x, q);
  pack_nibbles(q, b.qs);
}

void quantize_block(const float* x, Q4_1::Block& b) {
  int q[32];
  const ScaleMin16 dm = quantize_affine<16>(x, q);
  b.d = dm.d;
  b.m = dm.m;
  pack_nibbles(q, b.qs);
}

void quantize_block(const float* x, Q5_0::Block& b) {
  int q[32];
  b.d = quantize_symmetric<32>(x, q);
  pack_nibbles(q, b.qs);
  pack_high_bits(q, b.qh);
}

void quantize_block(const float* x, Q5_1::Block& b) {
  int q[32];
  const ScaleMin16 dm = quantize_affine<32>(x, q);
  b.d = dm.d;
  b.m = dm.m;
  pack_nibbles(q, b.qs);
  pack_high_bits(q, b.qh);
}

// ---- llama.cpp's reference quantizers (ggml-quants.c, quantize_row_*_ref) --------------------------
// gguf-py does not implement these; they follow llama.cpp's algorithms and are tested by round-trip
// error, not bit for bit.

constexpr float kGroupMaxEps = 1e-15f;

// Round to nearest, ties to even (ggml's nearest_int).
int nearest_int(float v) { return int(std::lrint(v)); }

// make_qkx2_quants: levels 0..nmax with a scale and a min (returned as -min) for n values, fitted
// by weighted least squares over a sweep of candidate scales around (max - min) / nmax.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float& the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = weights[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += weights[i];
    sum_x += weights[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(L, L + n, uint8_t(0));
    the_min = -min;
    return 0.0f;
  }
  float iscale = float(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = uint8_t(std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
    const float diff = scale * L[i] + min - x[i];
    best_error += weights[i] * diff * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * float(is) + float(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = uint8_t(l);
      const float w = weights[i];
      sum_l += w * float(l);
      sum_l2 += w * float(l * l);
      sum_xl += w * float(l) * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * Laux[i] + this_min - x[i];
        cur_error += weights[i] * diff * diff;
      }
      if (cur_error < best_error) {
        std::copy(Laux, Laux + n, L);
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  the_min = -min;
  return scale;
}

// Q4_K and Q5_K share everything but the number of levels and the sweep (make_qkx2_quants'
// rmin, rdelta, nstep as llama.cpp sets them per type).
// Returns d and dmin as f16; packed gets the 12 bytes of 6-bit scales and mins, L the levels.
template <int kMaxLevel>
ScaleMin16 quantize_k_scales_mins(const float* x, uint8_t* packed, uint8_t* L, float rmin, float rdelta,
                                  int nstep) {
  float scales[8], mins[8], weights[32];
  uint8_t Laux[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xb = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xb[l] * xb[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xb[l]);
    scales[j] = make_qkx2_quants(32, kMaxLevel, xb, weights, L + 32 * j, mins[j], Laux, rmin, rdelta, nstep);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  for (int j = 0; j < 8; ++j) {
    const uint8_t ls = uint8_t(std::min(63, nearest_int(inv_scale * scales[j])));
    const uint8_t lm = uint8_t(std::min(63, nearest_int(inv_min * mins[j])));
    if (j < 4) {
      packed[j] = ls;
      packed[j + 4] = lm;
    } else {
      packed[j + 4] = uint8_t((ls & 0xF) | (lm & 0xF) << 4);
      packed[j - 4] |= uint8_t((ls >> 4) << 6);
      packed[j] |= uint8_t((lm >> 4) << 6);
    }
  }
  const uint16_t d16 = f32_to_f16(max_scale / 63.0f), dmin16 = f32_to_f16(max_min / 63.0f);
  // Final levels against the scales as stored (6-bit, times the f16 super-scales).
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    k4_scale_min(packed, j, sc, m);
    const float d = f16_to_f32(d16) * float(sc);
    if (d == 0.0f) continue;
    const float dm = f16_to_f32(dmin16) * float(m);
    for (int l = 0; l < 32; ++l)
      L[32 * j + l] = uint8_t(std::clamp(nearest_int((x[32 * j + l] + dm) / d), 0, kMaxLevel));
  }
  return {d16, dmin16};
}

// ---- Q4_K / Q5_K with an importance matrix (quantize_row_q4_K_impl / q5_K_impl) --------------------

// make_qkx3_quants without use_mad: make_qkx2_quants' sweep with llama.cpp's summation order.
float make_qkx3_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float& the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = weights[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += weights[i];
    sum_x += weights[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max <= min) {
    std::fill(L, L + n, uint8_t(0));
    the_min = -min;
    return 0.0f;
  }
  float iscale = float(nmax) / (max - min);
  float scale = 1 / iscale;
  float best = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = uint8_t(std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
    const float diff = scale * float(L[i]) + min - x[i];
    best += weights[i] * (diff * diff);
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * float(is) + float(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = uint8_t(l);
      const float w = weights[i];
      sum_l += w * float(l);
      sum_l2 += w * float(l) * float(l);
      sum_xl += w * float(l) * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * float(Laux[i]) + this_min - x[i];
        cur += weights[i] * (diff * diff);
      }
      if (cur < best) {
        std::copy(Laux, Laux + n, L);
        best = cur;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  the_min = -min;
  return scale;
}

// make_qp_quants: non-negative levels 0..nmax for n non-negative values, weighted by quant_weights:
// a sweep of scales around max / nmax, then up to 5 rounds of moving single levels while that
// raises the fit.
float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* quant_weights) {
  float max = 0;
  for (int i = 0; i < n; ++i) max = std::max(max, x[i]);
  if (max < kGroupMaxEps) {
    std::fill(L, L + n, uint8_t(0));
    return 0.0f;
  }
  float iscale = float(nmax) / max;
  for (int i = 0; i < n; ++i) L[i] = uint8_t(nearest_int(iscale * x[i]));
  const float scale = 1 / iscale;
  float best_mse = 0;
  for (int i = 0; i < n; ++i) {
    const float diff = x[i] - scale * float(L[i]);
    best_mse += quant_weights[i] * diff * diff;
  }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    const float iscale_is = (0.1f * float(is) + float(nmax)) / max;
    const float scale_is = 1 / iscale_is;
    float mse = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::min(nmax, nearest_int(iscale_is * x[i]));
      const float diff = x[i] - scale_is * float(l);
      mse += quant_weights[i] * diff * diff;
    }
    if (mse < best_mse) {
      best_mse = mse;
      iscale = iscale_is;
    }
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::min(nmax, nearest_int(iscale * x[i]));
    L[i] = uint8_t(l);
    const float w = quant_weights[i];
    sumlx += w * x[i] * float(l);
    suml2 += w * float(l) * float(l);
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = quant_weights[i];
      float slx = sumlx - w * x[i] * float(L[i]);
      float sl2 = suml2 - w * float(L[i]) * float(L[i]);
      if (slx > 0 && sl2 > 0) {
        const int new_l = std::min(nmax, nearest_int(x[i] * sl2 / slx));
        if (new_l != L[i]) {
          slx += w * x[i] * float(new_l);
          sl2 += w * float(new_l) * float(new_l);
          if (slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = uint8_t(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// The scales, mins and levels of a Q4_K / Q5_K super-block with the importance matrix qw: per 32
// values weights qw * sqrt(sigma2 + x^2), a weighted scale-and-min fit, then the 6-bit scales and
// mins by make_qp_quants weighted by each group's total weight.
template <int kMaxLevel>
ScaleMin16 quantize_k_weighted(const float* x, const float* qw, uint8_t* packed, uint8_t* L) {
  float scales[8], mins[8], sw[8], weights[32];
  uint8_t Laux[32], Ls[8], Lm[8];
  float sum_x2 = 0;
  for (int l = 0; l < 256; ++l) sum_x2 += x[l] * x[l];
  const float sigma2 = 2 * sum_x2 / 256;
  for (int j = 0; j < 8; ++j) {
    for (int l = 0; l < 32; ++l)
      weights[l] = qw[32 * j + l] * std::sqrt(sigma2 + x[32 * j + l] * x[32 * j + l]);
    float sumw = 0;
    for (int l = 0; l < 32; ++l) sumw += weights[l];
    sw[j] = sumw;
    scales[j] =
        make_qkx3_quants(32, kMaxLevel, x + 32 * j, weights, L + 32 * j, mins[j], Laux, -0.9f, 0.05f, 36);
  }
  const float d_block = make_qp_quants(8, 63, scales, Ls, sw);
  const float m_block = make_qp_quants(8, 63, mins, Lm, sw);
  std::memset(packed, 0, 12);
  for (int j = 0; j < 8; ++j) {
    const uint8_t ls = std::min<uint8_t>(63, Ls[j]), lm = std::min<uint8_t>(63, Lm[j]);
    if (j < 4) {
      packed[j] = ls;
      packed[j + 4] = lm;
    } else {
      packed[j + 4] = uint8_t((ls & 0xF) | (lm & 0xF) << 4);
      packed[j - 4] |= uint8_t((ls >> 4) << 6);
      packed[j] |= uint8_t((lm >> 4) << 6);
    }
  }
  const uint16_t d16 = f32_to_f16(d_block), dmin16 = f32_to_f16(m_block);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    k4_scale_min(packed, j, sc, m);
    const float d = f16_to_f32(d16) * float(sc);
    if (d == 0.0f) continue;
    const float dm = f16_to_f32(dmin16) * float(m);
    for (int l = 0; l < 32; ++l)
      L[32 * j + l] = uint8_t(std::clamp(nearest_int((x[32 * j + l] + dm) / d), 0, kMaxLevel));
  }
  return {d16, dmin16};
}

void quantize_block(const float* x, const float* qw, Q4_K::Block& b) {
  uint8_t L[256];
  const ScaleMin16 dm = qw ? quantize_k_weighted<15>(x, qw, b.scales, L)
                           : quantize_k_scales_mins<15>(x, b.scales, L, -1.0f, 0.1f, 20);
  b.d = dm.d;
  b.dmin = dm.m;
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < 32; ++l) b.qs[32 * j + l] = uint8_t(L[64 * j + l] | L[64 * j + 32 + l] << 4);
}

void quantize_block(const float* x, Q4_K::Block& b) { quantize_block(x, nullptr, b); }

void quantize_block(const float* x, const float* qw, Q5_K::Block& b) {
  uint8_t L[256];
  const ScaleMin16 dm = qw ? quantize_k_weighted<31>(x, qw, b.scales, L)
                           : quantize_k_scales_mins<31>(x, b.scales, L, -0.5f, 0.1f, 15);
  b.d = dm.d;
  b.dmin = dm.m;
  std::memset(b.qh, 0, sizeof(b.qh));
  for (int j = 0; j < 8; ++j)
    for (int l = 0; l < 32; ++l) b.qh[l] |= uint8_t((L[32 * j + l] >> 4) << j);
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < 32; ++l)
      b.qs[32 * j + l] = uint8_t((L[64 * j + l] & 0xF) | (L[64 * j + 32 + l] & 0xF) << 4);
}

void quantize_block(const float* x, Q5_K::Block& b) { quantize_block(x, nullptr, b); }

// make_qx_quants with rmse_type 1 (weights x^2, or the importance qw when given): signed levels
// -nmax..nmax-1, stored + nmax, for the best of a sweep of scales around max / -nmax. The sums
// accumulate in llama.cpp's order ((w * x) * l, (w * l) * l).
float make_qx_quants(int n, int nmax, const float* x, int8_t* L, const float* qw = nullptr) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, int8_t(0));
    return 0.0f;
  }
  const auto level = [&](float iscale, int i) {
    return std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
  };
  float iscale = -float(nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = level(iscale, i);
    L[i] = int8_t(l + nmax);
    const float w = qw ? qw[i] : x[i] * x[i];
    sumlx += w * x[i] * float(l);
    suml2 += w * float(l) * float(l);
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(float(nmax) + 0.1f * float(is)) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = level(iscale, i);
      const float w = qw ? qw[i] : x[i] * x[i];
      sumlx += w * x[i] * float(l);
      suml2 += w * float(l) * float(l);
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = int8_t(nmax + level(iscale, i));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// quantize_row_q6_K_impl: with an importance matrix qw, its values weigh the scale fit of each 16
// (nullptr: quantize_row_q6_K_ref's x^2).
void quantize_block(const float* x, const float* qw, Q6_K::Block& b) {
  int8_t L[256];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int g = 0; g < 16; ++g) {
    scales[g] = make_qx_quants(16, 32, x + 16 * g, L + 16 * g, qw ? qw + 16 * g : nullptr);
    if (std::fabs(scales[g]) > max_abs_scale) {
      max_abs_scale = std::fabs(scales[g]);
      max_scale = scales[g];
    }
  }
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(&b, 0, sizeof(b));
    return;
  }
  const float iscale = -128.0f / max_scale;
  b.d = f32_to_f16(1 / iscale);
  for (int g = 0; g < 16; ++g) b.scales[g] = int8_t(std::min(127, nearest_int(iscale * scales[g])));
  for (int g = 0; g < 16; ++g) {
    const float d = f16_to_f32(b.d) * float(b.scales[g]);
    if (d == 0.0f) continue;
    for (int l = 0; l < 16; ++l)
      L[16 * g + l] = int8_t(std::clamp(nearest_int(x[16 * g + l] / d), -32, 31) + 32);
  }
  for (int h = 0; h < 2; ++h) {
    const int8_t* Lh = L + 128 * h;
    for (int l = 0; l < 32; ++l) {
      b.ql[64 * h + l] = uint8_t((Lh[l] & 0xF) | (Lh[l + 64] & 0xF) << 4);
      b.ql[64 * h + l + 32] = uint8_t((Lh[l + 32] & 0xF) | (Lh[l + 96] & 0xF) << 4);
      b.qh[32 * h + l] =
          uint8_t((Lh[l] >> 4) | (Lh[l + 32] >> 4) << 2 | (Lh[l + 64] >> 4) << 4 | (Lh[l + 96] >> 4) << 6);
    }
  }
}

void quantize_block(const float* x, Q6_K::Block& b) { quantize_block(x, nullptr, b); }

// best_index_int8: the nearest of the 16 sorted IQ4 levels.
int best_index_iq4(float x) {
  const int8_t* v = tables::kValuesIq4nl;
  if (x <= v[0]) return 0;
  if (x >= v[15]) return 15;
  int ml = 0, mu = 15;
  while (mu - ml > 1) {
    const int mid = (ml + mu) / 2;
    if (x < v[mid])
      mu = mid;
    else
      ml = mid;
  }
  return x - v[mu - 1] < v[mu] - x ? mu - 1 : mu;
}

// The per-value weights of the IQ quantizers with an importance matrix qw (its 256 values for this
// super-block): qw[j] * sqrt(sigma2 + x[j]^2), sigma2 = 2 * mean(x^2) over the super-block; without
// one, x[j]^2.
void iq_weights(const float* x, const float* qw, float* weight) {
  if (!qw) {
    for (int j = 0; j < 256; ++j) weight[j] = x[j] * x[j];
    return;
  }
  float sumx2 = 0;
  for (int j = 0; j < 256; ++j) sumx2 += x[j] * x[j];
  const float sigma2 = 2 * sumx2 / 256;
  for (int j = 0; j < 256; ++j) weight[j] = qw[j] * std::sqrt(sigma2 + x[j] * x[j]);
}

// quantize_row_iq4_nl_impl for IQ4_XS (ntry = 7), with the importance matrix qw or without (nullptr):
// per 32 values the scale that best fits the non-linear levels (weighted least squares), then 6-bit
// scales under one f16 scale.
void quantize_block(const float* x, const float* qw, IQ4_XS::Block& b) {
  constexpr int kTry = 7;
  const int8_t* values = tables::kValuesIq4nl;
  uint8_t L[256];
  float scales[8], weights[256];
  iq_weights(x, qw, weights);
  float max_scale = 0, amax_scale = 0;
  for (int ib = 0; ib < 8; ++ib) {
    const float* xb = x + 32 * ib;
    const float* wb = weights + 32 * ib;
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
      if (std::fabs(xb[j]) > amax) {
        amax = std::fabs(xb[j]);
        max = xb[j];
      }
    }
    if (amax < kGroupMaxEps) {
      scales[ib] = 0;
      continue;
    }
    const auto fit = [&](float id, float& sumqx, float& sumq2) {
      sumqx = sumq2 = 0;
      for (int j = 0; j < 32; ++j) {
        const float q = values[best_index_iq4(id * xb[j])];
        const float w = wb[j];
        sumqx += w * q * xb[j];
        sumq2 += w * q * q;
      }
    };
    float sumqx, sumq2;
    fit(1 / (-max / values[0]), sumqx, sumq2);
    float d = sumq2 > 0 ? sumqx / sumq2 : 0.0f;
    float best = d * sumqx;
    for (int itry = -kTry; itry <= kTry; ++itry) {
      fit(float(itry + values[0]) / max, sumqx, sumq2);
      if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
        d = sumqx / sumq2;
        best = d * sumqx;
      }
    }
    scales[ib] = d;
    if (std::fabs(d) > amax_scale) {
      amax_scale = std::fabs(d);
      max_scale = d;
    }
  }
  const float d = -max_scale / 32;
  b.d = f32_to_f16(d);
  b.scales_h = 0;
  std::memset(b.scales_l, 0, sizeof(b.scales_l));
  const float id = d != 0 ? 1 / d : 0.0f;
  for (int ib = 0; ib < 8; ++ib) {
    int l = std::clamp(nearest_int(id * scales[ib]), -32, 31);
    const float dl = d * float(l);
    const float idl = dl != 0 ? 1 / dl : 0.0f;
    for (int j = 0; j < 32; ++j) L[32 * ib + j] = uint8_t(best_index_iq4(idl * x[32 * ib + j]));
    l += 32;
    b.scales_l[ib / 2] |= uint8_t((l & 0xF) << (4 * (ib % 2)));
    b.scales_h = uint16_t(b.scales_h | (l >> 4) << (2 * ib));
  }
  for (int ib = 0; ib < 8; ++ib)
    for (int j = 0; j < 16; ++j) b.qs[16 * ib + j] = uint8_t(L[32 * ib + j] | L[32 * ib + 16 + j] << 4);
}

void quantize_block(const float* x, IQ4_XS::Block& b) { quantize_block(x, nullptr, b); }

// ---- IQ3_XXS (quantize_row_iq3_xxs_impl with grid size 256, no importance matrix) -----------------
// Each group of 4 magnitudes is one of 256 grid points with 3-bit levels l (magnitude 2l + 1 in the
// quantizer's units); each group of 8 values has 7 stored sign bits (the eighth makes the number of
// minus signs even); each 32 values a 4-bit scale under the block's f16 scale.

struct Iq3Grid {
  uint8_t levels[256][4];     // the grid points as levels 0..7
  int16_t map[4096];          // point (l0 | l1 << 3 | l2 << 6 | l3 << 9) -> grid index, -1 off the grid
  std::vector<uint16_t> near[4096];  // off-grid points: the grid points at the two smallest distances
};

// llama.cpp's iq3xs_init_impl: the levels are those of the dequantization grid (magnitudes 4, 12,
// ..., 52, 62 are levels 0..7), the neighbours of an off-grid point every grid point at its nearest
// and second-nearest squared distance, ordered by (distance, index).
const Iq3Grid& iq3_grid() {
  static const Iq3Grid grid = [] {
    Iq3Grid g;
    std::fill(std::begin(g.map), std::end(g.map), int16_t(-1));
    for (int i = 0; i < 256; ++i) {
      int u = 0;
      for (int k = 0; k < 4; ++k) {
        g.levels[i][k] = uint8_t(tables::kGridIq3xxs[i][k] / 8);
        u |= g.levels[i][k] << 3 * k;
      }
      g.map[u] = int16_t(i);
    }
    std::vector<std::pair<int, int>> dist(256);
    for (int u = 0; u < 4096; ++u) {
      if (g.map[u] >= 0) continue;
      for (int j = 0; j < 256; ++j) {
        int d2 = 0;
        for (int k = 0; k < 4; ++k) {
          const int diff = 2 * g.levels[j][k] - 2 * ((u >> 3 * k) & 7);
          d2 += diff * diff;
        }
        dist[size_t(j)] = {d2, j};
      }
      std::sort(dist.begin(), dist.end());
      int d2 = dist[0].first, distances = 1;
      for (const auto& [dd, j] : dist) {
        if (dd > d2) {
          if (distances == 2) break;
          d2 = dd;
          ++distances;
        }
        g.near[u].push_back(uint16_t(j));
      }
    }
    return g;
  }();
  return grid;
}

// iq3_find_best_neighbour: the neighbour of least weighted error at `scale`; its levels into L.
int iq3_best_neighbour(const Iq3Grid& g, int u, const float* xval, const float* weight, float scale, int8_t* L) {
  float best_d2 = std::numeric_limits<float>::max();
  int index = -1;
  for (uint16_t j : g.near[u]) {
    float d2 = 0;
    for (int i = 0; i < 4; ++i) {
      const float diff = scale * float(2 * g.levels[j][i] + 1) - xval[i];
      d2 += weight[i] * diff * diff;
    }
    if (d2 < best_d2) {
      best_d2 = d2;
      index = j;
    }
  }
  FM_CHECK(index >= 0, "IQ3 point {} has no neighbours", u);
  for (int i = 0; i < 4; ++i) L[i] = int8_t(g.levels[index][i]);
  return index;
}

// With the importance matrix qw (nullptr: none), whose weights replace x^2 (iq_weights).
void quantize_block(const float* x, const float* qw, IQ3_XXS::Block& b) {
  constexpr int kMaxQ = 8;
  constexpr float kGroupMaxEps = 1e-8f;
  const Iq3Grid& g = iq3_grid();
  std::memset(&b, 0, sizeof(b));
  float scales[8], weights[256];
  iq_weights(x, qw, weights);
  float max_scale = 0;
  uint32_t signs_and_scales[8] = {};
  for (int ib = 0; ib < 8; ++ib) {
    const float* xb = x + 32 * ib;
    float weight[32], waux[32], xval[32];
    int8_t L[32] = {}, Laux[32];
    uint8_t block_signs[4];
    for (int i = 0; i < 32; ++i) {
      weight[i] = weights[32 * ib + i];
      waux[i] = std::sqrt(weight[i]);
    }
    // Signs per 8 values, an even number of them: with an odd count, the value that costs least to
    // flip (smallest w x^2) is taken with the wrong sign.
    for (int k = 0; k < 4; ++k) {
      int nflip = 0;
      uint8_t sbits = 0;
      for (int i = 0; i < 8; ++i) {
        const float v = xb[8 * k + i];
        xval[8 * k + i] = v >= 0 ? v : -v;
        if (v < 0) {
          ++nflip;
          sbits = uint8_t(sbits | 1 << i);
        }
      }
      if (nflip % 2) {
        int imin = 0;
        float min = weight[8 * k] * xb[8 * k] * xb[8 * k];
        for (int i = 1; i < 8; ++i) {
          const float ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
          if (ax < min) {
            min = ax;
            imin = i;
          }
        }
        xval[8 * k + imin] = -xval[8 * k + imin];
        sbits = uint8_t(sbits ^ 1 << imin);
      }
      block_signs[k] = sbits & 127;
    }
    float max = xval[0];
    for (int i = 1; i < 32; ++i) max = std::max(max, xval[i]);
    if (max < kGroupMaxEps) {
      scales[ib] = 0;
      continue;  // grid index 0, signs 0, scale 0
    }
    // The scale sweep: levels by rounding, off-grid points to their best neighbour, the least-squares
    // scale of the result; keep the best.
    float best = 0, scale = max / (2 * kMaxQ - 1);
    bool on_grid[8], on_grid_aux[8];
    std::fill(on_grid, on_grid + 8, true);
    for (int is = -15; is <= 15; ++is) {
      const float id = (2 * kMaxQ - 1 + float(is) * 0.2f) / max;
      const float this_scale = 1 / id;
      for (int k = 0; k < 8; ++k) {
        int u = 0;
        for (int i = 0; i < 4; ++i) {
          Laux[4 * k + i] = int8_t(std::clamp(nearest_int(0.5f * (id * xval[4 * k + i] - 1)), 0, kMaxQ - 1));
          u |= Laux[4 * k + i] << 3 * i;
        }
        on_grid_aux[k] = g.map[u] >= 0;
        if (!on_grid_aux[k]) iq3_best_neighbour(g, u, xval + 4 * k, waux + 4 * k, this_scale, Laux + 4 * k);
      }
      float sumqx = 0, sumq2 = 0;
      for (int i = 0; i < 32; ++i) {
        const float q = float(2 * Laux[i] + 1);
        sumqx += weight[i] * xval[i] * q;
        sumq2 += weight[i] * q * q;
      }
      if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
        scale = sumqx / sumq2;
        best = scale * sumqx;
        std::copy(Laux, Laux + 32, L);
        std::copy(on_grid_aux, on_grid_aux + 8, on_grid);
      }
    }
    // Points still off the grid: again at the final scale, then refit the scale.
    if (std::count(on_grid, on_grid + 8, false) > 0 && scale > 0) {
      const float id = 1 / scale;
      for (int k = 0; k < 8; ++k) {
        if (on_grid[k]) continue;
        int u = 0;
        for (int i = 0; i < 4; ++i)
          u |= std::clamp(nearest_int(0.5f * (id * xval[4 * k + i] - 1)), 0, kMaxQ - 1) << 3 * i;
        const int index = g.map[u] >= 0 ? g.map[u] : iq3_best_neighbour(g, u, xval + 4 * k, waux + 4 * k, scale, L + 4 * k);
        for (int i = 0; i < 4; ++i) L[4 * k + i] = int8_t(g.levels[index][i]);
      }
      float sumqx = 0, sumq2 = 0;
      for (int i = 0; i < 32; ++i) {
        const float q = float(2 * L[i] + 1);
        sumqx += weight[i] * xval[i] * q;
        sumq2 += weight[i] * q * q;
      }
      if (sumq2 > 0) scale = sumqx / sumq2;
    }
    if (scale < 0) {  // cannot happen with these weights; kept as llama.cpp has it
      scale = -scale;
      for (uint8_t& sb : block_signs) sb = uint8_t(~sb & 127);
    }
    for (int k = 0; k < 8; ++k) {
      int u = 0;
      for (int i = 0; i < 4; ++i) u |= L[4 * k + i] << 3 * i;
      FM_CHECK(g.map[u] >= 0, "IQ3_XXS point {} is not on the grid", u);
      b.qs[8 * ib + k] = uint8_t(g.map[u]);
    }
    signs_and_scales[ib] = uint32_t(block_signs[0]) | uint32_t(block_signs[1]) << 7 |
                           uint32_t(block_signs[2]) << 14 | uint32_t(block_signs[3]) << 21;
    scales[ib] = scale;
    max_scale = std::max(max_scale, scale);
  }
  if (max_scale == 0) {
    std::memset(&b, 0, sizeof(b));
    return;
  }
  const float d = max_scale / 31;
  b.d = f32_to_f16(d * 1.0125f);  // llama.cpp's fudge factor
  const float id = 1 / d;
  for (int ib = 0; ib < 8; ++ib) {
    const int l = std::clamp(nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15);
    const uint32_t word = signs_and_scales[ib] | uint32_t(l) << 28;
    std::memcpy(b.scales_and_signs + 4 * ib, &word, 4);
  }
}

void quantize_block(const float* x, IQ3_XXS::Block& b) { quantize_block(x, nullptr, b); }

template <class Q>
concept Quantizable = requires(const float* x, typename Q::Block& b) {
  quantize_block(x, b);
};

// ---- Q4_0, Q4_1, Q5_0, Q5_1 with an importance matrix (quantize_row_q4_0_impl, ...) ------------------
// Per 32 values weights qw * sqrt(sigma2 + x^2), sigma2 = mean(x^2) over the whole row; the symmetric
// types fit their scale with make_qx_quants, the affine ones scale and min with make_qkx3_quants.
// Without a matrix these types keep gguf-py's (= llama.cpp's reference) quantizers above.

void row_weights(const float* x, const float* qw, float sigma2, float* weight) {
  for (int j = 0; j < 32; ++j) weight[j] = qw[j] * std::sqrt(sigma2 + x[j] * x[j]);
}

template <int kLevels>
uint16_t quantize_symmetric_weighted(const float* x, const float* qw, float sigma2, int* q) {
  float weight[32];
  int8_t L[32];
  row_weights(x, qw, sigma2, weight);
  const float d = make_qx_quants(32, kLevels / 2, x, L, weight);
  for (int j = 0; j < 32; ++j) q[j] = L[j];
  return f32_to_f16(d);
}

template <int kLevels>
ScaleMin16 quantize_affine_weighted(const float* x, const float* qw, float sigma2, int* q) {
  float weight[32], min;
  uint8_t L[32], Laux[32];
  row_weights(x, qw, sigma2, weight);
  const float d = make_qkx3_quants(32, kLevels - 1, x, weight, L, min, Laux, -0.9f, 0.05f, 36);
  for (int j = 0; j < 32; ++j) q[j] = L[j];
  return {f32_to_f16(d), f32_to_f16(-min)};
}

void quantize_block(const float* x, const float* qw, float sigma2, Q4_0::Block& b) {
  int q[32];
  b.d = quantize_symmetric_weighted<16>(x, qw, sigma2, q);
  pack_nibbles(q, b.qs);
}

void quantize_block(const float* x, const float* qw, float sigma2, Q4_1::Block& b) {
  int q[32];
  const ScaleMin16 dm = quantize_affine_weighted<16>(x, qw, sigma2, q);
  b.d = dm.d;
  b.m = dm.m;
  pack_nibbles(q, b.qs);
}

void quantize_block(const float* x, const float* qw, float sigma2, Q5_0::Block& b) {
  int q[32];
  b.d = quantize_symmetric_weighted<32>(x, qw, sigma2, q);
  pack_nibbles(q, b.qs);
  pack_high_bits(q, b.qh);
}

void quantize_block(const float* x, const float* qw, float sigma2, Q5_1::Block& b) {
  int q[32];
  const ScaleMin16 dm = quantize_affine_weighted<32>(x, qw, sigma2, q);
  b.d = dm.d;
  b.m = dm.m;
  pack_nibbles(q, b.qs);
  pack_high_bits(q, b.qh);
}

// The types whose quantizer takes an importance matrix: quantize_block(x, qw, block), or with the
// row's mean square as well (RowWeighted).
template <class Q>
concept Weighted = requires(const float* x, const float* qw, typename Q::Block& b) {
  quantize_block(x, qw, b);
};
template <class Q>
concept RowWeighted = requires(const float* x, const float* qw, float sigma2, typename Q::Block& b) {
  quantize_block(x, qw, sigma2, b);
};

template <class Q>
void quantize_blocks(const float* src, int64_t n_blocks, std::byte* dst, const float* importance) {
  float sigma2 = 0;
  if constexpr (RowWeighted<Q>) {
    if (importance) {
      const int64_t n = n_blocks * Q::kBlock;
      for (int64_t j = 0; j < n; ++j) sigma2 += src[j] * src[j];
      sigma2 /= float(n);
    }
  }
  for (int64_t i = 0; i < n_blocks; ++i) {
    typename Q::Block b{};
    if constexpr (RowWeighted<Q>) {
      if (importance)
        quantize_block(src + i * Q::kBlock, importance + i * Q::kBlock, sigma2, b);
      else
        quantize_block(src + i * Q::kBlock, b);
    } else if constexpr (Weighted<Q>)
      quantize_block(src + i * Q::kBlock, importance ? importance + i * Q::kBlock : nullptr, b);
    else
      quantize_block(src + i * Q::kBlock, b);
    std::memcpy(dst + i * int64_t(sizeof(b)), &b, sizeof(b));
  }
}

void check_row(DType t, int64_t n) {
  FM_CHECK(n >= 0 && n % dtype_info(t).block == 0, "{} values are not whole {} blocks", n, dtype_name(t));
}

}  // namespace

bool can_dequantize(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || visit_format(t, [](auto) {});
}

bool can_quantize(DType t) {
  bool can = t == DType::F32 || t == DType::F16 || t == DType::BF16;
  visit_format(t, [&](auto q) { can = Quantizable<decltype(q)>; });
  return can;
}

void dequantize_row(DType t, const std::byte* src, int64_t n, float* out) {
  check_row(t, n);
  switch (t) {
    case DType::F32:
      std::memcpy(out, src, size_t(n) * 4);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = f16_to_f32(h);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = bf16_to_f32(h);
      }
      return;
    default:
      break;
  }
  const bool known = visit_format(t, [&](auto q) { dequantize_blocks<decltype(q)>(src, n / q.kBlock, out); });
  if (!known) fail("cannot dequantize {} values", dtype_name(t));
}

ImportanceUse importance_use(DType t) {
  if (!can_quantize(t)) return ImportanceUse::Unsupported;
  // llama.cpp's Q8_0 quantizer ignores the importance matrix; floats have nothing to weigh.
  if (t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Q8_0) return ImportanceUse::Ignored;
  ImportanceUse use = ImportanceUse::Unsupported;
  visit_format(t, [&](auto q) {
    if constexpr (Weighted<decltype(q)> || RowWeighted<decltype(q)>) use = ImportanceUse::Used;
  });
  return use;
}

std::string importance_types() {
  std::string names;
  for (int i = 0; i < kNumDTypes; ++i)
    if (importance_use(DType(i)) == ImportanceUse::Used)
      names += (names.empty() ? "" : ", ") + std::string(dtype_name(DType(i)));
  return names;
}

void quantize_row(DType t, const float* src, int64_t n, std::byte* dst) { quantize_row(t, src, n, dst, nullptr); }

void quantize_row(DType t, const float* src, int64_t n, std::byte* dst, const float* importance) {
  check_row(t, n);
  if (importance && importance_use(t) == ImportanceUse::Unsupported)
    fail("quantizing to {} with an importance matrix is not supported (types that use one: {})", dtype_name(t),
         importance_types());
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_f16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    default:
      break;
  }
  bool done = false;
  visit_format(t, [&](auto q) {
    using Q = decltype(q);
    if constexpr (Quantizable<Q>) {
      quantize_blocks<Q>(src, n / Q::kBlock, dst, importance);
      done = true;
    }
  });
  if (!done) fail("cannot quantize to {}", dtype_name(t));
}

void dequantize_mlx_row(const uint32_t* packed, const uint16_t* scales_bf16, const uint16_t* biases_bf16,
                        int bits, int group_size, int64_t n, float* out) {
  FM_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 6 || bits == 8, "MLX quantization with {} bits",
           bits);
  FM_CHECK(group_size == 32 || group_size == 64 || group_size == 128, "MLX group size {}", group_size);
  FM_CHECK(n >= 0 && n % group_size == 0, "{} values are not whole MLX groups of {}", n, group_size);
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t g = 0; g < n / group_size; ++g) {
    const float scale = bf16_to_f32(scales_bf16[g]), bias = bf16_to_f32(biases_bf16[g]);
    for (int64_t j = g * group_size; j < (g + 1) * group_size; ++j) {
      const uint64_t bit = uint64_t(j) * uint64_t(bits);
      const uint64_t word = bit / 32, shift = bit % 32;
      // A value that straddles two words takes its high bits from the next one.
      uint64_t v = packed[word] >> shift;
      if (shift + uint64_t(bits) > 32) v |= uint64_t(packed[word + 1]) << (32 - shift);
      out[j] = float(uint32_t(v) & mask) * scale + bias;
    }
  }
}

float mlx_group_param(const std::byte* params, DType scale_type, int64_t g) {
  switch (scale_type) {
    case DType::BF16: {
      uint16_t h;
      std::memcpy(&h, params + 2 * g, 2);
      return bf16_to_f32(h);
    }
    case DType::F16: {
      uint16_t h;
      std::memcpy(&h, params + 2 * g, 2);
      return f16_to_f32(h);
    }
    case DType::F32: {
      float f;
      std::memcpy(&f, params + 4 * g, 4);
      return f;
    }
    default:
      break;
  }
  FM_CHECK(false, "MLX scales of type {}", dtype_name(scale_type));
}

void dequantize_mlx_row(const std::byte* packed, const std::byte* scales, const std::byte* biases,
                        DType scale_type, int bits, int group_size, int64_t n, float* out) {
  FM_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 6 || bits == 8, "MLX quantization with {} bits",
           bits);
  FM_CHECK(group_size == 32 || group_size == 64 || group_size == 128, "MLX group size {}", group_size);
  FM_CHECK(n >= 0 && n % group_size == 0, "{} values are not whole MLX groups of {}", n, group_size);
  // The uint32 words are little-endian, so the bit stream is the same read byte by byte: value j
  // has its low bit at bit (j * bits) % 8 of byte (j * bits) / 8 and spans at most two bytes.
  const auto* p = reinterpret_cast<const uint8_t*>(packed);
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t g = 0; g < n / group_size; ++g) {
    const float scale = mlx_group_param(scales, scale_type, g), bias = mlx_group_param(biases, scale_type, g);
    for (int64_t j = g * group_size; j < (g + 1) * group_size; ++j) {
      const uint64_t bit = uint64_t(j) * uint64_t(bits);
      const uint64_t byte = bit / 8, shift = bit % 8;
      uint32_t v = uint32_t(p[byte]) >> shift;
      if (shift + uint64_t(bits) > 8) v |= uint32_t(p[byte + 1]) << (8 - shift);
      out[j] = float(v & mask) * scale + bias;
    }
  }
}

}  // namespace fm
