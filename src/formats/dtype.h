// Element types of stored tensors. Plain scalar types now; block-quantized types (GGUF, MLX) join
// this list with their block size and bytes per block, so sizes are always computed here.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

namespace fm {

enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, U32, BOOL };

struct DTypeInfo {
  std::string_view name;  // as safetensors spells it
  int block;              // elements per block (1 for scalar types)
  int block_bytes;        // bytes per block
};

const DTypeInfo& dtype_info(DType t);
inline std::string_view dtype_name(DType t) { return dtype_info(t).name; }
std::optional<DType> dtype_from_safetensors(std::string_view name);

// Bytes of a row of n elements; nullopt when n is not a whole number of blocks.
std::optional<uint64_t> dtype_row_bytes(DType t, uint64_t n);

// The types our float matmul kernels read directly.
inline bool is_float_weight(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

}  // namespace fm
