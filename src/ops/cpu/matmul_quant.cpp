// matmul over block-quantized weights, portable path: one kernel template over the format traits
// of formats/quant_blocks.h. Each block of a row is dequantized once into a small buffer on the
// stack and dotted with up to kMaxTileTokens tokens, so the weights are decoded once per tile, not
// once per token, and never as a whole row or matrix.
#include "ops/cpu/matmul_quant.h"

#include "util/error.h"

// The decoded weights are the ones dequantize_row gives, bit for bit (see quant.cpp).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "formats/quant_blocks.h"

namespace fm::cpu::detail {

namespace {

// Per row and token, four interleaved partial sums, as the float reference kernel keeps.
template <class Q>
void scalar_quant_tile(const Mat& w, int64_t r0, int64_t r1, const float* x, int n_tokens, float* y,
                       int64_t ldy) {
  constexpr int kBlock = Q::kBlock;
  constexpr uint64_t kBlockBytes = sizeof(typename Q::Block);
  const int64_t cols = w.cols, n_blocks = cols / kBlock;
  float buf[kBlock];
  for (int64_t r = r0; r < r1; ++r) {
    const std::byte* row = w.data + uint64_t(r) * w.row_bytes;
    float acc[kMaxTileTokens][4] = {};
    for (int64_t b = 0; b < n_blocks; ++b) {
      Q::dequantize_block(row + uint64_t(b) * kBlockBytes, buf);
      for (int t = 0; t < n_tokens; ++t) {
        const float* xb = x + t * cols + b * kBlock;
        for (int c = 0; c < kBlock; c += 4)
          for (int k = 0; k < 4; ++k) acc[t][k] += buf[c + k] * xb[c + k];
      }
    }
    for (int t = 0; t < n_tokens; ++t) y[t * ldy + r] = (acc[t][0] + acc[t][1]) + (acc[t][2] + acc[t][3]);
  }
}

}  // namespace

bool quant_tile_supported(DType dtype) {
  return quant::visit_format(dtype, [](auto) {});
}

TileKernel scalar_quant_tile_kernel(DType dtype) {
  TileKernel kernel = nullptr;
  quant::visit_format(dtype, [&](auto q) { kernel = scalar_quant_tile<decltype(q)>; });
  FM_CHECK(kernel != nullptr, "matmul does not read {} weights", dtype_name(dtype));
  return kernel;
}

}  // namespace fm::cpu::detail
