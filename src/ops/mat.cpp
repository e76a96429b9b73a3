// Reading one row of a Mat as float32, whatever its stored type.
#include "ops/mat.h"

#include "formats/quant.h"
#include "util/error.h"

namespace fm {

void dequantize_mat_row(const Mat& m, int64_t r, float* out) {
  FM_CHECK(r >= 0 && r < m.rows, "row {} of a matrix of {} rows", r, m.rows);
  const std::byte* row = m.data + uint64_t(r) * m.row_bytes;
  if (is_mlx(m.dtype)) {
    const uint64_t at = uint64_t(r) * m.mlx.row_bytes;
    dequantize_mlx_row(row, m.mlx.scales + at, m.mlx.biases + at, m.mlx.dtype, mlx_bits(m.dtype), m.mlx.group,
                       m.cols, out);
    return;
  }
  dequantize_row(m.dtype, row, m.cols, out);
}

}  // namespace fm
