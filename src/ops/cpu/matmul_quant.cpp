// matmul over block-quantized weights, portable path: one kernel template over the integer reading
// of each format (quant_int.h). Each weight block is decoded once per tile and dotted with up to
// kMaxTileTokens quantized activation blocks in exact integer sums; only the block's result is
// scaled in float.
#include "ops/cpu/matmul_quant.h"

#include "ops/cpu/quant_act.h"
#include "ops/cpu/quant_int.h"
#include "util/error.h"

namespace fm::cpu::detail {

namespace {

template <class Q>
void scalar_quant_tile(const Mat& w, int64_t r0, int64_t r1, const std::byte* xq, uint64_t xq_row_bytes,
                       int n_tokens, float* y, int64_t ldy) {
  constexpr int kBlock = Q::kBlock, kSub = IntCodec<Q>::kSub, kSubs = kBlock / kSub;
  constexpr uint64_t kBlockBytes = sizeof(typename Q::Block);
  using Act = ActBlockFor<kBlock>;
  const int64_t n_blocks = w.cols / kBlock;
  IntBlock<kBlock, kSub> blk;
  std::byte scratch[kBlockBytes];  // a block of interleaved rows (Mat::interleaved), gathered
  for (int64_t r = r0; r < r1; ++r) {
    const std::byte* row = w.data + uint64_t(r) * w.row_bytes;
    float acc[kMaxTileTokens] = {};
    for (int64_t b = 0; b < n_blocks; ++b) {
      IntCodec<Q>::decode(w.interleaved ? mat_block(w, r, b, scratch) : row + uint64_t(b) * kBlockBytes, blk);
      for (int t = 0; t < n_tokens; ++t) {
        const Act& a = reinterpret_cast<const Act*>(xq + uint64_t(t) * xq_row_bytes)[b];
        int32_t isum = 0, msum = 0;
        for (int j = 0; j < kSubs; ++j) {
          int32_t s = 0;
          for (int i = 0; i < kSub; ++i) s += int32_t(blk.v[kSub * j + i]) * a.qs[kSub * j + i];
          isum += blk.sc[j] * s;
        }
        if constexpr (kBlock == 32) {
          acc[t] += (blk.d * a.d) * float(isum) + blk.dm * a.s * float(blk.mn[0]);
        } else {
          for (int j = 0; j < kSubs; ++j) {
            int32_t xs = 0;
            for (int g = j * kSub / 16; g < (j + 1) * kSub / 16; ++g) xs += a.bsums[g];
            msum += blk.mn[j] * xs;
          }
          acc[t] += a.d * (blk.d * float(isum) + blk.dm * float(msum));
        }
      }
    }
    for (int t = 0; t < n_tokens; ++t) y[t * ldy + r] = acc[t];
  }
}

template <int N>
void scalar_quantize_act(const float* x, int64_t cols, std::byte* out) {
  quantize_act_row_scalar<N>(x, cols, reinterpret_cast<ActBlockFor<N>*>(out));
}

}  // namespace

bool quant_tile_supported(DType dtype) {
  return quant::visit_format(dtype, [](auto) {});
}

uint64_t quant_act_row_bytes(DType dtype, int64_t cols) {
  const int block = dtype_info(dtype).block;
  return uint64_t(cols / block) * (block == 32 ? sizeof(ActBlock32) : sizeof(ActBlock256));
}

QuantKernel scalar_quant_kernel(DType dtype) {
  QuantKernel kernel{nullptr, nullptr};
  quant::visit_format(dtype, [&](auto q) {
    using Q = decltype(q);
    kernel = QuantKernel{scalar_quantize_act<Q::kBlock>, scalar_quant_tile<Q>};
  });
  FM_CHECK(kernel.tile != nullptr, "matmul does not read {} weights", dtype_name(dtype));
  return kernel;
}

}  // namespace fm::cpu::detail
