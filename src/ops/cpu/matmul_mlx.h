// The tile kernels of cpu::matmul for MLX affine-quantized weights (DType::MLX2..MLX8, the scales
// and biases in Mat::mlx); matmul.cpp chooses between them.
//
// - matmul_mlx.cpp, portable: each group of a row is dequantized into a small buffer (the float32
//   values dequantize_mat_row gives, bit for bit) and dotted with the float activations of up to
//   kMaxTileTokens tokens. This is the exact path, the reference of the others
//   (cpu::set_force_scalar takes it).
// - matmul_mlx_x86.h, AVX2 and AVX-512 VNNI: the activations quantized to 8-bit blocks of 32 once per
//   call, integer dot products with the levels, as llama.cpp runs Q4_1 (its error bound is there).
#pragma once
#include "ops/cpu/kernels.h"
#include "ops/cpu/matmul_quant.h"

namespace fm::cpu::detail {

// Whether the MLX kernels can read this matrix (an MLX type with a group size of 32, 64 or 128 and
// BF16, F16 or F32 scales).
bool mlx_tile_supported(const Mat& w);

TileKernel scalar_mlx_tile_kernel(DType dtype);

// Bytes of one quantized activation row of `cols` values for the vector MLX kernels (blocks of 32).
uint64_t mlx_act_row_bytes(int64_t cols);

// The vector kernels for an MLX matrix (mlx_tile_supported): AVX2 (call only when have_avx2()) and
// AVX-512 VNNI (only when have_avx512_vnni()). Both give the same bits.
QuantKernel avx2_mlx_kernel(const Mat& w);
QuantKernel avx512_mlx_kernel(const Mat& w);

}  // namespace fm::cpu::detail
