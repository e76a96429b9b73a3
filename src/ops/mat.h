// A weight matrix as the kernels see it: row-major [rows][cols] in its stored type, rows
// contiguous (row r starts at data + r * row_bytes), or interleaved by eight (`interleaved`, a copy
// the CPU backend makes at load). It points into a mapped model file, an expert buffer or such a
// copy; the kernels never know which.
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
  // Rows interleaved by eight (interleave_rows8): the rows of each group of eight share their
  // 8 * row_bytes block by block instead of following one another; rows past the last whole group
  // keep the stored layout. The group of row r still starts at data + r * row_bytes (r % 8 == 0).
  bool interleaved = false;

  // Rows [first, first + count); first % 8 == 0 if interleaved.
  Mat slice_rows(int64_t first, int64_t count) const {
    Mat m{dtype, count, cols, data + uint64_t(first) * row_bytes, row_bytes, mlx, interleaved};
    if (mlx.scales) {
      m.mlx.scales += uint64_t(first) * mlx.row_bytes;
      m.mlx.biases += uint64_t(first) * mlx.row_bytes;
    }
    return m;
  }
  uint64_t nbytes() const { return uint64_t(rows) * row_bytes; }  // the packed values only
};

// Whether interleave_rows8 takes this type: the blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL,
// MXFP4).
bool can_interleave_rows8(DType dtype);

// w (stored layout, can_interleave_rows8, rows of whole blocks) copied to out (w.nbytes() bytes)
// with its rows interleaved by eight, the layout of the CPU kernels' eight-row loop: each block is
// cut into its fields (the f16 scale and min, the byte exponent, Q5's 32 high bits, the values in
// runs of 4 bytes), and a group's block b becomes, field by field, that field of its eight rows
// side by side, row i's at 8 * (field offset) + i * (field size). The same bytes as the stored
// matrix, in another order. Returns the matrix over out.
Mat interleave_rows8(const Mat& w, std::byte* out);

// Block b of row r (dtype_info(m.dtype).block_bytes bytes): in place for the stored layout, else
// gathered into scratch (at least that many bytes).
const std::byte* mat_block(const Mat& m, int64_t r, int64_t b, std::byte* scratch);

// out[0..cols) = row r of m as float32, for every type formats/quant.h dequantizes and the MLX
// types (ops/mat.cpp).
void dequantize_mat_row(const Mat& m, int64_t r, float* out);

}  // namespace fm
