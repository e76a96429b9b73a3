// Reading one row of a Mat as float32, whatever its stored type.
#include "ops/mat.h"

#include <cstring>
#include <span>

#include "formats/quant.h"
#include "util/error.h"

namespace fm {

namespace {

// The fields of a block of 32 as interleave_rows8 cuts it: their sizes in bytes, in order.
std::span<const uint8_t> block_fields(DType dtype) {
  static constexpr uint8_t kQ4_0[] = {2, 4, 4, 4, 4};              // d, qs
  static constexpr uint8_t kQ4_1[] = {2, 2, 4, 4, 4, 4};           // d, m, qs
  static constexpr uint8_t kQ5_0[] = {2, 4, 4, 4, 4, 4};           // d, qh, qs
  static constexpr uint8_t kQ5_1[] = {2, 2, 4, 4, 4, 4, 4};        // d, m, qh, qs
  static constexpr uint8_t kQ8_0[] = {2, 4, 4, 4, 4, 4, 4, 4, 4};  // d, qs
  static constexpr uint8_t kMxfp4[] = {1, 4, 4, 4, 4};             // e, qs
  switch (dtype) {
    case DType::Q4_0:
    case DType::IQ4_NL:
      return kQ4_0;
    case DType::Q4_1:
      return kQ4_1;
    case DType::Q5_0:
      return kQ5_0;
    case DType::Q5_1:
      return kQ5_1;
    case DType::Q8_0:
      return kQ8_0;
    case DType::MXFP4:
      return kMxfp4;
    default:
      return {};
  }
}

// Where the fields of row i's block lie in its group's interleaved block (`packed`, 8 * block bytes):
// fn(slot, at, size) for each field, `at` its offset in the stored block and `slot` its place.
template <class Fn>
void for_each_field(std::span<const uint8_t> fields, std::byte* packed, int i, const Fn& fn) {
  uint64_t at = 0;
  for (uint8_t f : fields) {
    fn(packed + 8 * at + uint64_t(i) * f, at, f);
    at += f;
  }
}

// memcpy of a field: 1, 2 or 4 bytes, as fixed-size moves.
inline void copy_field(std::byte* to, const std::byte* from, uint8_t size) {
  switch (size) {
    case 1:
      *to = *from;
      return;
    case 2:
      std::memcpy(to, from, 2);
      return;
    default:
      std::memcpy(to, from, 4);
  }
}

}  // namespace

bool can_interleave_rows8(DType dtype) { return !block_fields(dtype).empty(); }

Mat interleave_rows8(const Mat& w, std::byte* out) {
  FM_CHECK(can_interleave_rows8(w.dtype) && !w.interleaved, "interleave_rows8 of a {} matrix",
           dtype_name(w.dtype));
  const std::span<const uint8_t> fields = block_fields(w.dtype);
  const uint64_t block_bytes = dtype_info(w.dtype).block_bytes;
  const int64_t n_blocks = w.cols / 32;
  FM_CHECK(w.cols % 32 == 0 && w.row_bytes == uint64_t(n_blocks) * block_bytes,
           "interleave_rows8: rows of {} values in {} bytes", w.cols, w.row_bytes);
  // Every format's fields end in a run of 4-byte ones (values, and Q5's high bits): those go as words.
  size_t n_head = 0;
  uint64_t head = 0;
  while (fields[n_head] != 4) head += fields[n_head++];
  const uint64_t n_words = (block_bytes - head) / 4;
  const int64_t grouped = w.rows / 8 * 8;
  for (int64_t r = 0; r < grouped; r += 8) {  // the group's output in order, its 8 rows read side by side
    const std::byte* rows = w.data + uint64_t(r) * w.row_bytes;
    std::byte* group = out + uint64_t(r) * w.row_bytes;
    for (int64_t b = 0; b < n_blocks; ++b) {
      std::byte* packed = group + 8 * block_bytes * uint64_t(b);
      for (int i = 0; i < 8; ++i) {
        const std::byte* block = rows + uint64_t(i) * w.row_bytes + uint64_t(b) * block_bytes;
        for_each_field(fields.first(n_head), packed, i, [&](std::byte* slot, uint64_t at, uint8_t size) {
          copy_field(slot, block + at, size);
        });
        for (uint64_t k = 0; k < n_words; ++k)
          std::memcpy(packed + 8 * head + 32 * k + 4 * uint64_t(i), block + head + 4 * k, 4);
      }
    }
  }
  std::memcpy(out + uint64_t(grouped) * w.row_bytes, w.data + uint64_t(grouped) * w.row_bytes,
              uint64_t(w.rows - grouped) * w.row_bytes);
  Mat m = w;
  m.data = out;
  m.interleaved = true;
  return m;
}

const std::byte* mat_block(const Mat& m, int64_t r, int64_t b, std::byte* scratch) {
  const uint64_t block_bytes = dtype_info(m.dtype).block_bytes;
  if (!m.interleaved || r >= m.rows / 8 * 8)
    return m.data + uint64_t(r) * m.row_bytes + uint64_t(b) * block_bytes;
  // The group is only read: for_each_field hands out non-const slots for interleave_rows8's sake.
  std::byte* packed =
      const_cast<std::byte*>(m.data + uint64_t(r / 8 * 8) * m.row_bytes) + 8 * block_bytes * uint64_t(b);
  for_each_field(block_fields(m.dtype), packed, int(r % 8),
                 [&](std::byte* slot, uint64_t at, uint8_t size) { copy_field(scratch + at, slot, size); });
  return scratch;
}

void dequantize_mat_row(const Mat& m, int64_t r, float* out) {
  FM_CHECK(r >= 0 && r < m.rows, "row {} of a matrix of {} rows", r, m.rows);
  if (m.interleaved) {
    const DTypeInfo& info = dtype_info(m.dtype);
    std::byte block[64];
    for (int64_t b = 0; b < m.cols / info.block; ++b)
      dequantize_row(m.dtype, mat_block(m, r, b, block), info.block, out + b * info.block);
    return;
  }
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
