// Element types of stored tensors: plain scalar types and GGML's block-quantized types. Sizes are
// always computed here from (elements per block, bytes per block), so a row of n elements of a
// block type is n / block blocks.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

namespace fm {

enum class DType : uint8_t {
  // scalar
  F32, F16, BF16, F64, I64, I32, I16, I8, U8, U32, BOOL,
  // GGML blocks of 32 elements
  Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4,
  // GGML super-blocks of 256 elements
  Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_XS,
  // MLX affine quantization (mlx.core.quantize, mode "affine"): b-bit unsigned levels packed as a
  // little-endian bit stream in uint32 words; a "block" is 32 values = b words. The per-group scales
  // and biases live in separate tensors (Mat::mlx), so these types never stand alone in a file.
  MLX2, MLX3, MLX4, MLX6, MLX8,
};
inline constexpr int kNumDTypes = int(DType::MLX8) + 1;

struct DTypeInfo {
  std::string_view name;  // safetensors' spelling for scalar types, GGML's for the others
  int block;              // elements per block (1 for scalar types)
  int block_bytes;        // bytes per block
  int ggml_type;          // GGML's type id (ggml.h enum ggml_type), -1 where GGML has none
};

const DTypeInfo& dtype_info(DType t);
inline std::string_view dtype_name(DType t) { return dtype_info(t).name; }
std::optional<DType> dtype_from_safetensors(std::string_view name);
std::optional<DType> dtype_from_ggml(uint32_t ggml_type);
std::optional<DType> dtype_from_name(std::string_view name);  // any type by its name, case-insensitive
inline bool is_quantized(DType t) { return t >= DType::Q4_0; }

// Bytes of a row of n elements; nullopt when n is not a whole number of blocks.
std::optional<uint64_t> dtype_row_bytes(DType t, uint64_t n);

// MLX affine types: bits per value; and the type of a bit width (2, 3, 4, 6, 8), nullopt for others.
inline bool is_mlx(DType t) { return t >= DType::MLX2 && t <= DType::MLX8; }
int mlx_bits(DType t);
std::optional<DType> mlx_dtype(int bits);

// The types our float matmul kernels read directly.
inline bool is_float_weight(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

}  // namespace fm
