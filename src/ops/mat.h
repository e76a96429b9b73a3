// A weight matrix as the kernels see it: row-major [rows][cols] in its stored type, rows
// contiguous (row r starts at data + r * row_bytes). It points into a mapped model file or an
// expert buffer; the kernels never know which.
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/dtype.h"

namespace fm {

struct Mat {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const std::byte* data = nullptr;
  uint64_t row_bytes = 0;

  // Rows [first, first + count).
  Mat slice_rows(int64_t first, int64_t count) const {
    return Mat{dtype, count, cols, data + uint64_t(first) * row_bytes, row_bytes};
  }
  uint64_t nbytes() const { return uint64_t(rows) * row_bytes; }
};

}  // namespace fm
