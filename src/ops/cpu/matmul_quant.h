// The tile kernels of cpu::matmul for block-quantized weights (matmul_quant.cpp, and
// matmul_quant_avx2.cpp for the vector path); matmul.cpp chooses between them and the float ones.
#pragma once
#include "ops/cpu/kernels.h"

namespace fm::cpu::detail {

// Whether the quantized kernels read this type (every type formats/quant_blocks.h describes).
bool quant_tile_supported(DType dtype);

// The portable kernel for a quantized type.
TileKernel scalar_quant_tile_kernel(DType dtype);

// The AVX2/FMA kernel for a quantized type; call only when have_avx2().
TileKernel avx2_quant_tile_kernel(DType dtype);

}  // namespace fm::cpu::detail
