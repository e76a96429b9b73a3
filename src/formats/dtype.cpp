#include "formats/dtype.h"

#include <array>
#include <cctype>

namespace fm {

namespace {
// Block sizes from GGML's type traits (ggml.c type_traits, ggml-common.h block structs).
constexpr std::array<DTypeInfo, kNumDTypes> kInfo = {{
    {"F32", 1, 4, 0},
    {"F16", 1, 2, 1},
    {"BF16", 1, 2, 30},
    {"F64", 1, 8, 28},
    {"I64", 1, 8, 27},
    {"I32", 1, 4, 26},
    {"I16", 1, 2, 25},
    {"I8", 1, 1, 24},
    {"U8", 1, 1, -1},
    {"U32", 1, 4, -1},
    {"BOOL", 1, 1, -1},
    {"Q4_0", 32, 18, 2},
    {"Q4_1", 32, 20, 3},
    {"Q5_0", 32, 22, 6},
    {"Q5_1", 32, 24, 7},
    {"Q8_0", 32, 34, 8},
    {"IQ4_NL", 32, 18, 20},
    {"MXFP4", 32, 17, 39},
    {"Q2_K", 256, 84, 10},
    {"Q3_K", 256, 110, 11},
    {"Q4_K", 256, 144, 12},
    {"Q5_K", 256, 176, 13},
    {"Q6_K", 256, 210, 14},
    {"Q8_K", 256, 292, 15},
    {"IQ2_XXS", 256, 66, 16},
    {"IQ2_XS", 256, 74, 17},
    {"IQ2_S", 256, 82, 22},
    {"IQ3_XXS", 256, 98, 18},
    {"IQ3_S", 256, 110, 21},
    {"IQ4_XS", 256, 136, 23},
    // MLX: 32 values of b bits are b uint32 words.
    {"MLX2", 32, 8, -1},
    {"MLX3", 32, 12, -1},
    {"MLX4", 32, 16, -1},
    {"MLX6", 32, 24, -1},
    {"MLX8", 32, 32, -1},
}};

bool iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::toupper(static_cast<unsigned char>(a[i])) != std::toupper(static_cast<unsigned char>(b[i]))) return false;
  return true;
}
}  // namespace

const DTypeInfo& dtype_info(DType t) { return kInfo[size_t(t)]; }

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  for (size_t i = 0; i <= size_t(DType::BOOL); ++i)
    if (kInfo[i].name == name) return DType(i);
  return std::nullopt;
}

std::optional<DType> dtype_from_ggml(uint32_t ggml_type) {
  for (size_t i = 0; i < kInfo.size(); ++i)
    if (kInfo[i].ggml_type == int64_t(ggml_type)) return DType(i);
  return std::nullopt;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (size_t i = 0; i < kInfo.size(); ++i)
    if (iequal(kInfo[i].name, name)) return DType(i);
  return std::nullopt;
}

int mlx_bits(DType t) { return is_mlx(t) ? dtype_info(t).block_bytes / 4 : 0; }

std::optional<DType> mlx_dtype(int bits) {
  switch (bits) {
    case 2: return DType::MLX2;
    case 3: return DType::MLX3;
    case 4: return DType::MLX4;
    case 6: return DType::MLX6;
    case 8: return DType::MLX8;
    default: return std::nullopt;
  }
}

std::optional<uint64_t> dtype_row_bytes(DType t, uint64_t n) {
  const auto& info = dtype_info(t);
  if (n % uint64_t(info.block) != 0) return std::nullopt;
  return n / uint64_t(info.block) * uint64_t(info.block_bytes);
}

}  // namespace fm
