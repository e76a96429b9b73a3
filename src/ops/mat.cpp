// Reading one row of a Mat as float32, whatever its stored type.
#include "ops/mat.h"

#include <cstring>
#include <span>

#include "formats/quant.h"
#include "util/error.h"

namespace fm {

namespace {

// How interleave_rows8 cuts a block of 32: its leading fields (the f16 scale and min, or the byte
// exponent), sizes in bytes; the rest of the block (Q5's high bits, the values) goes as 4-byte words.
std::span<const uint8_t> block_head(DType dtype) {
  static constexpr uint8_t kScale[] = {2};        // d
  static constexpr uint8_t kScaleMin[] = {2, 2};  // d, m
  static constexpr uint8_t kExponent[] = {1};     // e
  switch (dtype) {
    case DType::Q4_0:
    case DType::Q5_0:
    case DType::Q8_0:
    case DType::IQ4_NL:
      return kScale;
    case DType::Q4_1:
    case DType::Q5_1:
      return kScaleMin;
    case DType::MXFP4:
      return kExponent;
    default:
      return {};
  }
}

// Where the pieces of row i's block lie in its group's interleaved block (`packed`, 8 * block
// bytes): fn(slot, at, size) for each leading field, then each word, `at` its offset in the stored
// block and `slot` its place. (P: std::byte or const std::byte.)
template <class P, class Fn>
void for_each_piece(DType dtype, P* packed, int i, const Fn& fn) {
  uint64_t at = 0;
  for (uint8_t f : block_head(dtype)) {
    fn(packed + 8 * at + uint64_t(i) * f, at, f);
    at += f;
  }
  for (const uint64_t end = uint64_t(dtype_info(dtype).block_bytes); at < end; at += 4)
    fn(packed + 8 * at + uint64_t(i) * 4, at, uint8_t{4});
}

// memcpy of a piece: 1, 2 or 4 bytes, as fixed-size moves.
inline void copy_piece(std::byte* to, const std::byte* from, uint8_t size) {
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

bool can_interleave_rows8(DType dtype) { return !block_head(dtype).empty(); }

Mat interleave_rows8(const Mat& w, std::byte* out) {
  FM_CHECK(can_interleave_rows8(w.dtype) && !w.interleaved, "interleave_rows8 of a {} matrix",
           dtype_name(w.dtype));
  const uint64_t block_bytes = dtype_info(w.dtype).block_bytes;
  const int64_t n_blocks = w.cols / 32;
  FM_CHECK(w.cols % 32 == 0 && w.row_bytes == uint64_t(n_blocks) * block_bytes,
           "interleave_rows8: rows of {} values in {} bytes", w.cols, w.row_bytes);
  const int64_t grouped = w.rows / 8 * 8;
  for (int64_t r = 0; r < grouped; r += 8) {  // the group's output in order, its 8 rows read side by side
    const std::byte* rows = w.data + uint64_t(r) * w.row_bytes;
    std::byte* group = out + uint64_t(r) * w.row_bytes;
    for (int64_t b = 0; b < n_blocks; ++b)
      for (int i = 0; i < 8; ++i) {
        const std::byte* block = rows + uint64_t(i) * w.row_bytes + uint64_t(b) * block_bytes;
        for_each_piece(
            w.dtype, group + 8 * block_bytes * uint64_t(b), i,
            [&](std::byte* slot, uint64_t at, uint8_t size) { copy_piece(slot, block + at, size); });
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
  const std::byte* packed = m.data + uint64_t(r / 8 * 8) * m.row_bytes + 8 * block_bytes * uint64_t(b);
  for_each_piece(m.dtype, packed, int(r % 8), [&](const std::byte* slot, uint64_t at, uint8_t size) {
    copy_piece(scratch + at, slot, size);
  });
  return scratch;
}

void dequantize_mat_row(const Mat& m, int64_t r, float* out) {
  FM_CHECK(r >= 0 && r < m.rows, "row {} of a matrix of {} rows", r, m.rows);
  if (m.interleaved) {
    const DTypeInfo& info = dtype_info(m.dtype);
    std::byte block[64];  // the largest block of 32 is Q8_0's 34 bytes
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
