// A weight matrix as the kernels see it: row-major [rows][cols] in its stored type, rows
// contiguous (row r starts at data + r * row_bytes). It points into a mapped model file or an
// expert buffer; the kernels never know which.
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/dtype.h"

namespace fm {

// The per-group parameters of an MLX-quantized matrix (DType::MLX2..MLX8): value c of row r is
// level(r, c) * scale[r][c / group] + bias[r][c / group], computed in float32.
struct MlxGroups {
  const std::byte* scales = nullptr;  // [rows][cols / group] of `dtype`
  const std::byte* biases = nullptr;  // [rows][cols / group] of `dtype`
  uint64_t row_bytes = 0;             // bytes of one row of scales (the same for biases)
  DType dtype = DType::BF16;          // BF16, F16 or F32
  int group = 0;                      // 32, 64 or 128
};

struct Mat {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const std::byte* data = nullptr;
  uint64_t row_bytes = 0;
  MlxGroups mlx = {};  // MLX types only

  // Rows [first, first + count).
  Mat slice_rows(int64_t first, int64_t count) const {
    Mat m{dtype, count, cols, data + uint64_t(first) * row_bytes, row_bytes, mlx};
    if (mlx.scales) {
      m.mlx.scales += uint64_t(first) * mlx.row_bytes;
      m.mlx.biases += uint64_t(first) * mlx.row_bytes;
    }
    return m;
  }
  uint64_t nbytes() const { return uint64_t(rows) * row_bytes; }  // the packed values only
};

// out[0..cols) = row r of m as float32, for every type formats/quant.h dequantizes and the MLX
// types (ops/mat.cpp).
void dequantize_mat_row(const Mat& m, int64_t r, float* out);

}  // namespace fm
