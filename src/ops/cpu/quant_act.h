// Activations quantized to 8 bits for the integer dot products of matmul_quant*.cpp, as llama.cpp's
// CPU backend does (its Q8_0 / Q8_1 / Q8_K "vec_dot_type"): each row of x is quantized once per
// matmul call, then every weight block is dotted with it in integer arithmetic and scaled once.
//
// Every activation block is symmetric: x[i] ~= d * qs[i], d = max|x| / 127, |qs| <= 127 (never -128,
// so the AVX2 kernels may negate a value with _mm256_sign_epi8). The error of one value is at most
// d / 2 = max|x| / 254 of its block, which bounds the error of a dot product with weights w by
// sum_blocks (max|x_block| / 254) * sum |w| (the tolerance of tests/unit/test_matmul_quant.cpp).
//
// The scalar quantizer here and the AVX2 one (matmul_quant_avx2.cpp) give the same bytes: the same
// max, the same float multiply by 127 / max, rounding to nearest even.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace fm::cpu::detail {

// Blocks of 32 weights (Q4_0 .. MXFP4): s = d * sum(qs) serves the formats with an offset or a min.
struct ActBlock32 {
  int8_t qs[32];
  float d;
  float s;
};
static_assert(sizeof(ActBlock32) == 40);

// Super-blocks of 256 weights (K-quants, i-quants): the sum of qs per 16 serves the per-group mins
// and offsets.
struct ActBlock256 {
  int8_t qs[256];
  int16_t bsums[16];
  float d;
};
static_assert(sizeof(ActBlock256) == 292);

template <int N>
using ActBlockFor = std::conditional_t<N == 32, ActBlock32, ActBlock256>;

// The scale of a block and its inverse (0 for an all-zero block).
inline void act_scale(float amax, float& d, float& id) {
  d = amax / 127.0f;
  id = amax > 0.0f ? 127.0f / amax : 0.0f;
}

// q = round-to-nearest-even(v * id), clamped to [-127, 127] (NaN gives -127, never undefined).
inline int8_t act_round(float v, float id) {
  float q = std::nearbyint(v * id);
  q = q >= -127.0f ? q : -127.0f;
  q = q <= 127.0f ? q : 127.0f;
  return int8_t(q);
}

// Portable quantizer of n values (a multiple of N) into n / N blocks.
template <int N>
void quantize_act_row_scalar(const float* x, int64_t n, ActBlockFor<N>* out) {
  for (int64_t b = 0; b < n / N; ++b) {
    const float* xb = x + b * N;
    ActBlockFor<N>& a = out[b];
    float amax = 0.0f;
    for (int i = 0; i < N; ++i) amax = std::max(amax, std::fabs(xb[i]));
    float id;
    act_scale(amax, a.d, id);
    int sum = 0;
    for (int i = 0; i < N; ++i) {
      a.qs[i] = act_round(xb[i], id);
      sum += a.qs[i];
    }
    if constexpr (N == 32) {
      a.s = a.d * float(sum);
    } else {
      for (int g = 0; g < 16; ++g) {
        int gs = 0;
        for (int i = 0; i < 16; ++i) gs += a.qs[16 * g + i];
        a.bsums[g] = int16_t(gs);
      }
    }
  }
}

}  // namespace fm::cpu::detail
