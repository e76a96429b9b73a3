// The kernels of cpu::matmul for block-quantized weights (matmul_quant.cpp, and matmul_quant_avx2.cpp
// for the vector path); matmul.cpp chooses between them and the float ones.
//
// A call quantizes its activation rows once (quant_act.h: 8-bit blocks of 32 or 256 values, the
// block size of the weight format) into scratch, then every tile dots weight blocks with them in
// integer arithmetic (quant_int.h describes each format as integers).
#pragma once
#include <cstddef>

#include "ops/cpu/kernels.h"

namespace fm::cpu::detail {

// Whether the quantized kernels read this type (every type formats/quant_blocks.h describes).
bool quant_tile_supported(DType dtype);

// Bytes of one quantized activation row of `cols` values for weights of this type.
uint64_t quant_act_row_bytes(DType dtype, int64_t cols);

// x (cols floats) -> one quantized activation row (quant_act_row_bytes bytes, any alignment).
using QuantizeActFn = void (*)(const float* x, int64_t cols, std::byte* out);

// For rows [r0, r1) of w and tokens t < n_tokens (<= kMaxTileTokens), whose quantized activation
// rows start at xq + t * xq_row_bytes: y[t * ldy + r] = sum_c w[r][c] * x[t][c].
using QuantTileKernel = void (*)(const Mat& w, int64_t r0, int64_t r1, const std::byte* xq,
                                 uint64_t xq_row_bytes, int n_tokens, float* y, int64_t ldy);

struct QuantKernel {
  QuantizeActFn quantize_act;
  QuantTileKernel tile;
};

// The portable kernel for a quantized type.
QuantKernel scalar_quant_kernel(DType dtype);

// The AVX2/FMA kernel for a quantized type; call only when have_avx2().
QuantKernel avx2_quant_kernel(DType dtype);

// Whether this CPU has AVX-512 F, BW, VL and VNNI (besides AVX2, FMA and F16C).
bool have_avx512_vnni();

// The AVX-512 (VNNI) kernel for a quantized type; call only when have_avx512_vnni(). It computes
// the same integer sums as the AVX2 and portable kernels.
QuantKernel avx512_quant_kernel(DType dtype);

}  // namespace fm::cpu::detail
