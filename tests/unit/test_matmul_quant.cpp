// cpu::matmul over block-quantized weights, every format, both ISA paths, against dequantize_row
// (bit-exact to gguf-py, see test_quant) and a double-precision dot product.
//
// Tolerance: |y - ref| <= 1e-4 * (1 + sum_c |w[r][c] * x[t][c]|). The kernels sum in float32 in an
// order of their own (and the AVX2 path's decode may fuse a multiply-add), so the error grows with
// the magnitude of the terms, not with the result, which cancellation can make tiny.
#include <gtest/gtest.h>

#include "test_util.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "formats/quant.h"
#include "formats/quant_blocks.h"
#include "ops/cpu/kernels.h"
#include "util/half.h"

namespace fm {

void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }

namespace {

constexpr double kTolerance = 1e-4;

// Random bytes with every scale field set to a finite value of moderate size, so that the block
// holds ordinary weights rather than overflow.
template <class Q>
void random_block(typename Q::Block& b, std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255);
  auto* p = reinterpret_cast<uint8_t*>(&b);
  for (size_t i = 0; i < sizeof(b); ++i) p[i] = uint8_t(byte(rng));
  std::uniform_real_distribution<float> exponent(-8.0f, 0.0f);
  const auto scale = [&] { return f32_to_f16((byte(rng) & 1 ? -1.0f : 1.0f) * std::exp2(exponent(rng))); };
  if constexpr (requires { b.d; }) b.d = scale();
  if constexpr (requires { b.dmin; }) b.dmin = scale();
  if constexpr (requires { b.m; }) b.m = scale();
  if constexpr (requires { b.e; }) b.e = uint8_t(120 + byte(rng) % 10);
}

struct QuantMat {
  std::vector<std::byte> bytes;
  std::vector<float> values;  // [rows][cols], as dequantize_row reads them
  Mat mat;
};

// Quantizes Gaussian weights where we have a quantizer for the type, else fills random blocks.
// row_pad bytes follow each row and the data starts at an odd address, as in a mapped file.
QuantMat make_quant_mat(DType t, int64_t rows, int64_t cols, uint32_t seed, uint64_t row_pad = 0) {
  std::mt19937 rng(seed);
  const uint64_t packed = dtype_row_bytes(t, uint64_t(cols)).value();
  const uint64_t row_bytes = packed + row_pad;
  QuantMat m;
  m.bytes.assign(size_t(rows) * row_bytes + 1, std::byte{0});
  std::byte* data = m.bytes.data() + 1;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    std::byte* dst = data + uint64_t(r) * row_bytes;
    if (can_quantize(t)) {
      for (float& v : row) v = normal(rng);
      quantize_row(t, row.data(), cols, dst);
    } else {
      quant::visit_format(t, [&](auto q) {
        using Q = decltype(q);
        for (int64_t b = 0; b < cols / Q::kBlock; ++b) {
          typename Q::Block blk;
          random_block<Q>(blk, rng);
          std::memcpy(dst + b * int64_t(sizeof(blk)), &blk, sizeof(blk));
        }
      });
    }
  }
  m.values.resize(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    dequantize_row(t, data + uint64_t(r) * row_bytes, cols, &m.values[size_t(r * cols)]);
  m.mat = Mat{t, rows, cols, data, row_bytes};
  return m;
}

// The double-precision comparison of test_util.h, on this suite's matrices.
void check_matmul(const QuantMat& m, int n, ThreadPool& pool) { test::check_matmul(m.mat, m.values, n, pool, kTolerance); }

using test::for_each_isa;

class MatmulQuantTest : public testing::TestWithParam<DType> {};

TEST_P(MatmulQuantTest, MatchesDequantizedReference) {
  const DType t = GetParam();
  const int64_t block = dtype_info(t).block;
  for_each_isa([&] {
    for (int threads : {1, 3}) {
      ThreadPool pool(threads);
      for (int64_t rows : {1, 3, 17, 40})
        for (int64_t blocks : {1, 2, 3}) {
          const QuantMat m = make_quant_mat(t, rows, blocks * block, uint32_t(rows * 1000 + blocks));
          for (int n : {1, 2, 3, 4, 5, 9}) check_matmul(m, n, pool);
        }
    }
  });
}

// Several parallel chunks and, with many tokens, several row blocks.
TEST_P(MatmulQuantTest, LargerShapes) {
  const DType t = GetParam();
  for_each_isa([&] {
    ThreadPool pool(2);
    for (int n : {1, 4, 17}) check_matmul(make_quant_mat(t, 300, 1024, 99), n, pool);
  });
}

TEST_P(MatmulQuantTest, PaddedRowStride) {
  const DType t = GetParam();
  for_each_isa([&] {
    ThreadPool pool(2);
    for (int n : {1, 3, 6})
      check_matmul(make_quant_mat(t, 21, 2 * dtype_info(t).block, 5, /*row_pad=*/10), n, pool);
  });
}

INSTANTIATE_TEST_SUITE_P(matmul_quant, MatmulQuantTest,
                         testing::Values(DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0,
                                         DType::IQ4_NL, DType::MXFP4, DType::Q2_K, DType::Q3_K, DType::Q4_K,
                                         DType::Q5_K, DType::Q6_K, DType::IQ2_XXS, DType::IQ2_XS,
                                         DType::IQ2_S, DType::IQ3_XXS, DType::IQ3_S, DType::IQ4_XS),
                         [](const testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

}  // namespace
}  // namespace fm
