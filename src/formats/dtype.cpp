#include "formats/dtype.h"

#include <array>

namespace fm {

namespace {
constexpr std::array<DTypeInfo, 11> kInfo = {{
    {"F32", 1, 4},
    {"F16", 1, 2},
    {"BF16", 1, 2},
    {"F64", 1, 8},
    {"I64", 1, 8},
    {"I32", 1, 4},
    {"I16", 1, 2},
    {"I8", 1, 1},
    {"U8", 1, 1},
    {"U32", 1, 4},
    {"BOOL", 1, 1},
}};
}  // namespace

const DTypeInfo& dtype_info(DType t) { return kInfo[size_t(t)]; }

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  for (size_t i = 0; i < kInfo.size(); ++i)
    if (kInfo[i].name == name) return DType(i);
  return std::nullopt;
}

std::optional<uint64_t> dtype_row_bytes(DType t, uint64_t n) {
  const auto& info = dtype_info(t);
  if (n % uint64_t(info.block) != 0) return std::nullopt;
  return n / uint64_t(info.block) * uint64_t(info.block_bytes);
}

}  // namespace fm
