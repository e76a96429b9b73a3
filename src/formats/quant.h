// Converting rows between float32 and the stored weight formats: GGML's block-quantized types (and
// F32/F16/BF16 through the same entry points), and MLX's affine quantization.
//
// Dequantization matches gguf-py's gguf.quants.dequantize bit for bit (tests/unit/test_quant.cpp,
// vectors from tools/make_quant_vectors.py). The block layouts are in formats/quant_blocks.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "formats/dtype.h"

namespace fm {

// Whether dequantize_row / quantize_row handle this type.
bool can_dequantize(DType t);
bool can_quantize(DType t);

// out[0..n) = the n values stored at src. n must be a whole number of blocks of t; src holds
// dtype_row_bytes(t, n) bytes, any alignment. Throws fm::Error for a type it does not read.
void dequantize_row(DType t, const std::byte* src, int64_t n, float* out);

// dst (dtype_row_bytes(t, n) bytes) = the n floats of src stored as t.
//  - Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16, BF16: gguf-py's quantizers (gguf.quants.quantize), bit for
//    bit, for finite inputs.
//  - Q4_K, Q5_K, Q6_K, IQ4_XS, IQ3_XXS: llama.cpp's reference quantizers (quantize_row_*_ref, no importance
//    matrix); gguf-py has none for these.
//  - F32: a copy.
// Throws fm::Error for other types.
void quantize_row(DType t, const float* src, int64_t n, std::byte* dst);

// How quantize_row treats an importance matrix (llama.cpp's imatrix: per column of the row, the
// mean squared activation it meets) for type t.
enum class ImportanceUse {
  Used,         // weighs the fit as llama.cpp's ggml_quantize_chunk does with the same matrix, bit for bit
  Ignored,      // F32, F16, BF16, Q8_0 (llama.cpp's Q8_0 ignores it too)
  Unsupported,  // quantize_row refuses an importance matrix for t
};
ImportanceUse importance_use(DType t);
// "IQ3_XXS, IQ4_XS, ..." (the Used types), for messages.
std::string importance_types();

// quantize_row with `importance` (n non-negative values, one per column; nullptr: none). Throws
// fm::Error when t is Unsupported and importance is not null.
void quantize_row(DType t, const float* src, int64_t n, std::byte* dst, const float* importance);

// MLX affine quantization (mlx.core.quantize / mlx.core.dequantize with mode="affine", as in the
// mlx-community checkpoints; https://ml-explore.github.io/mlx/build/html/python/_autosummary/
// mlx.core.dequantize.html). A row of n values is a little-endian bit stream of `bits`-bit unsigned
// integers packed into uint32 words (element j starts at bit j * bits, so with 3 and 6 bits a value
// may straddle two words), with one bf16 scale and bias per group of group_size consecutive values:
//   out[j] = q[j] * scale[j / group_size] + bias[j / group_size]
// computed in float32, product rounded before the add. bits is 2, 3, 4, 6 or 8; group_size 32, 64
// or 128; n a multiple of group_size.
void dequantize_mlx_row(const uint32_t* packed, const uint16_t* scales_bf16, const uint16_t* biases_bf16,
                        int bits, int group_size, int64_t n, float* out);

// The same over bytes at any alignment (a row of a mapped checkpoint), with scales and biases of
// scale_type: BF16, F16 or F32 (mlx_lm stores them in the model's dtype).
void dequantize_mlx_row(const std::byte* packed, const std::byte* scales, const std::byte* biases,
                        DType scale_type, int bits, int group_size, int64_t n, float* out);

// A scale or bias of an MLX group as float32.
float mlx_group_param(const std::byte* params, DType scale_type, int64_t g);

}  // namespace fm
