// The tile kernels of cpu::matmul for MLX affine-quantized weights (DType::MLX2..MLX8, the scales
// and biases in Mat::mlx): matmul_mlx.cpp (portable) and matmul_mlx_avx2.cpp (vector path).
// matmul.cpp chooses between them. Each group of a row is dequantized once into registers or a small
// buffer (the same float32 values dequantize_mat_row gives, bit for bit) and dotted with up to
// kMaxTileTokens tokens.
#pragma once
#include "ops/cpu/kernels.h"

namespace fm::cpu::detail {

// Whether the MLX kernels can read this matrix (an MLX type with a group size of 32, 64 or 128 and
// BF16, F16 or F32 scales).
bool mlx_tile_supported(const Mat& w);

TileKernel scalar_mlx_tile_kernel(DType dtype);

// Call only when have_avx2().
TileKernel avx2_mlx_tile_kernel(DType dtype);

}  // namespace fm::cpu::detail
