// matmul over MLX affine-quantized weights, portable path: per row, each group of `group` values is
// dequantized into a buffer on the stack (dequantize_mlx_row, the reference) and dotted with the
// tile's float tokens with four interleaved partial sums, as the other scalar kernels do. This is the
// exact path; the vector kernels (matmul_mlx_x86.h) quantize the activations.
#include "ops/cpu/matmul_mlx.h"

#include "formats/quant.h"
#include "ops/cpu/quant_act.h"
#include "util/error.h"

namespace fm::cpu::detail {

namespace {

constexpr int kMaxGroup = 128;

void scalar_mlx_tile(const Mat& w, int64_t r0, int64_t r1, const float* x, int n_tokens, float* y,
                     int64_t ldy) {
  const int64_t cols = w.cols, group = w.mlx.group;
  const int bits = mlx_bits(w.dtype);
  const uint64_t group_bytes = uint64_t(group) * uint64_t(bits) / 8;
  const uint64_t param_bytes = dtype_info(w.mlx.dtype).block_bytes;
  float buf[kMaxGroup];
  for (int64_t r = r0; r < r1; ++r) {
    const std::byte* row = w.data + uint64_t(r) * w.row_bytes;
    const std::byte* scales = w.mlx.scales + uint64_t(r) * w.mlx.row_bytes;
    const std::byte* biases = w.mlx.biases + uint64_t(r) * w.mlx.row_bytes;
    float acc[kMaxTileTokens][4] = {};
    for (int64_t g = 0; g < cols / group; ++g) {
      const uint64_t at = uint64_t(g) * param_bytes;
      dequantize_mlx_row(row + uint64_t(g) * group_bytes, scales + at, biases + at, w.mlx.dtype, bits,
                         int(group), group, buf);
      for (int t = 0; t < n_tokens; ++t) {
        const float* xg = x + t * cols + g * group;
        for (int64_t c = 0; c < group; c += 4)
          for (int k = 0; k < 4; ++k) acc[t][k] += buf[c + k] * xg[c + k];
      }
    }
    for (int t = 0; t < n_tokens; ++t) y[t * ldy + r] = (acc[t][0] + acc[t][1]) + (acc[t][2] + acc[t][3]);
  }
}

}  // namespace

bool mlx_tile_supported(const Mat& w) {
  const DType s = w.mlx.dtype;
  return is_mlx(w.dtype) && (w.mlx.group == 32 || w.mlx.group == 64 || w.mlx.group == kMaxGroup) &&
         (s == DType::BF16 || s == DType::F16 || s == DType::F32) && w.mlx.scales && w.mlx.biases &&
         w.cols % w.mlx.group == 0;
}

uint64_t mlx_act_row_bytes(int64_t cols) { return uint64_t(cols / 32) * sizeof(ActBlock32); }

TileKernel scalar_mlx_tile_kernel(DType dtype) {
  FM_CHECK(is_mlx(dtype), "not an MLX type: {}", dtype_name(dtype));
  return scalar_mlx_tile;
}

}  // namespace fm::cpu::detail
