// CPU kernels for the weight-reading operations (matmul, embed). Each has a portable scalar path
// and an AVX2/FMA/F16C path chosen at run time, so one binary runs on any x86-64.
#pragma once
#include <cstdint>
#include <cstring>

#include "ops/mat.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace fm::cpu {

// y[t][r] = sum_c w[r][c] * x[t][c] for t < n; x is [n][w.cols], y is [n][w.rows]. w is F32, F16
// or BF16; sums are float32. Rows are spread over the pool.
void matmul(const Mat& w, const float* x, int n, float* y, ThreadPool& pool);

// out[t] = row ids[t] of the table as float32, out is [n][table.cols].
void embed(const Mat& table, const int32_t* ids, int n, float* out);

// Whether this CPU has AVX2, FMA and F16C (the vector path needs all three).
bool have_avx2();

// The path matmul takes now: "avx512" (the quantized and MLX kernels' AVX-512 VNNI build), "avx2" or
// "scalar".
const char* matmul_isa();

// Test hook: take the scalar path even where AVX2 is present.
void set_force_scalar(bool force);

// Between matmul.cpp (blocking, threading, dispatch) and the per-ISA files; not for other callers.
namespace detail {

// Most tokens a tile kernel takes at once: each weight vector loaded is used this many times.
inline constexpr int kMaxTileTokens = 4;

// For rows [r0, r1) of w and tokens t < n_tokens (<= kMaxTileTokens) of x ([n_tokens][w.cols]):
// y[t * ldy + r] = sum_c w[r][c] * x[t][c].
using TileKernel = void (*)(const Mat& w, int64_t r0, int64_t r1, const float* x, int n_tokens, float* y,
                            int64_t ldy);

// Element c of a weight row as float, per stored type (rows need not be aligned).
inline float f32_at(const std::byte* row, int64_t c) {
  float v;
  std::memcpy(&v, row + c * 4, 4);
  return v;
}
inline float f16_at(const std::byte* row, int64_t c) {
  uint16_t h;
  std::memcpy(&h, row + c * 2, 2);
  return f16_to_f32(h);
}
inline float bf16_at(const std::byte* row, int64_t c) {
  uint16_t h;
  std::memcpy(&h, row + c * 2, 2);
  return bf16_to_f32(h);
}

// The AVX2 tile kernel for a float weight type; call only when have_avx2().
TileKernel avx2_tile_kernel(DType dtype);

// Whether this CPU has AVX-512 F, BW and VL (besides AVX2, FMA and F16C).
bool have_avx512_float();

// The AVX-512 tile kernel for F16 or BF16 weights (matmul_float_avx512.cpp); call only when
// have_avx512_float(). Float32 products and sums as the AVX2 kernel, in another order.
TileKernel avx512_tile_kernel(DType dtype);

}  // namespace detail

}  // namespace fm::cpu
