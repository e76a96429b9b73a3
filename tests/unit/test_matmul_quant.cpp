// cpu::matmul over block-quantized weights, every format, both ISA paths, against dequantize_row
// (bit-exact to gguf-py, see test_quant) and a double-precision dot product with the float
// activations.
//
// The kernels quantize the activations to 8 bits per block (ops/cpu/quant_act.h, as llama.cpp's CPU
// backend does), so they compute the dot product with x rounded to a grid of step d = max|x_block| /
// 127: each value moves by at most d / 2. Tolerance per output:
//
//   |y - ref| <= sum_blocks (max|x_block| / 254) * sum_block |w|  * (1 + 1e-5)     activation rounding
//              + 1e-5 * (1 + sum_c |w[r][c] x[t][c]|)                               float sums and scales
//
// (blocks of 32 activations for the 32-value formats, 256 for the K- and i-quants). The first term
// is the worst case; it is about 2^-7 * sum |w x| for these uniform activations. The scalar and AVX2
// kernels compute the same integer sums from the same quantized activations (their quantizers give
// identical bytes, checked below), and so do the AVX-512 ones, so they must agree to float summation
// order: |y_scalar - y_vector| <= 4e-6 * (1 + sum |w x|). matmul itself takes the AVX-512 kernels
// where the CPU has them, else the AVX2 ones; the agreement test calls each directly, and also the
// AVX-512 build with its AVX-512 instructions emulated in AVX2 (quant_avx512_emulated.cpp), so that
// build's logic is checked on CPUs without AVX-512 too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "formats/quant.h"
#include "formats/quant_blocks.h"
#include "ops/cpu/kernels.h"
#include "ops/cpu/matmul_quant.h"
#include "test_util.h"
#include "util/half.h"

namespace fm {

namespace cpu::detail {
QuantKernel emulated_avx512_quant_kernel(DType dtype);  // quant_avx512_emulated.cpp
}

void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }

namespace {

constexpr double kFloatTolerance = 1e-5;
constexpr double kIsaTolerance = 4e-6;

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

std::vector<float> random_tokens(int n, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(n * cols));
  for (float& v : x) v = dist(rng);
  return x;
}

// y = matmul on the path selected now; NaN first, so an unwritten output fails.
std::vector<float> run_matmul(const Mat& w, const std::vector<float>& x, int n, ThreadPool& pool) {
  std::vector<float> y(static_cast<size_t>(n * w.rows), std::numeric_limits<float>::quiet_NaN());
  cpu::matmul(w, x.data(), n, y.data(), pool);
  return y;
}

// The bound of the header, against the double-precision product of the dequantized weights.
void check_matmul(const QuantMat& m, int n, ThreadPool& pool) {
  const int64_t rows = m.mat.rows, cols = m.mat.cols;
  const int act_block = dtype_info(m.mat.dtype).block == 32 ? 32 : 256;
  const std::vector<float> x = random_tokens(n, cols, uint32_t(rows * 131 + cols * 7 + n));
  const std::vector<float> y = run_matmul(m.mat, x, n, pool);
  for (int t = 0; t < n; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0.0, mag = 0.0, act_bound = 0.0;
      for (int64_t c0 = 0; c0 < cols; c0 += act_block) {
        double amax = 0.0, wabs = 0.0;
        for (int64_t c = c0; c < c0 + act_block; ++c) {
          const double wv = m.values[size_t(r * cols + c)], xv = x[size_t(t * cols + c)];
          ref += wv * xv;
          mag += std::fabs(wv * xv);
          amax = std::max(amax, std::fabs(xv));
          wabs += std::fabs(wv);
        }
        act_bound += amax / 254.0 * wabs;
      }
      const double tolerance = act_bound * (1.0 + 1e-5) + kFloatTolerance * (1.0 + mag);
      const float got = y[size_t(t * rows + r)];
      ASSERT_LE(std::fabs(double(got) - ref), tolerance)
          << dtype_name(m.mat.dtype) << " isa=" << cpu::matmul_isa() << " rows=" << rows << " cols=" << cols
          << " n=" << n << " threads=" << pool.size() << " t=" << t << " r=" << r << " got=" << got
          << " ref=" << ref;
    }
  }
}

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

// y[t][r] for tokens t < n (<= kMaxTileTokens) through one kernel, called directly (matmul picks
// the best kernel of the CPU; this reaches each of them).
std::vector<float> run_kernel(const cpu::detail::QuantKernel& kernel, const Mat& w,
                              const std::vector<float>& x, int n) {
  const uint64_t act_bytes = cpu::detail::quant_act_row_bytes(w.dtype, w.cols);
  std::vector<std::byte> xq(act_bytes * uint64_t(n));
  for (int t = 0; t < n; ++t)
    kernel.quantize_act(x.data() + t * w.cols, w.cols, xq.data() + uint64_t(t) * act_bytes);
  std::vector<float> y(static_cast<size_t>(n * w.rows), std::numeric_limits<float>::quiet_NaN());
  kernel.tile(w, 0, w.rows, xq.data(), act_bytes, n, y.data(), w.rows);
  return y;
}

// The scalar, AVX2 and AVX-512 kernels: the same activation bytes, and the same results up to float
// order.
TEST_P(MatmulQuantTest, VectorKernelsAgreeWithScalar) {
  if (!cpu::have_avx2()) GTEST_SKIP() << "no AVX2/FMA/F16C here";
  const DType t = GetParam();
  const int64_t cols = 8 * dtype_info(t).block;
  std::vector<float> x = random_tokens(4, cols, 7);
  // Edge cases of the quantizer: a zero block, ties of the rounding, the largest value, tiny values.
  std::fill(x.begin(), x.begin() + 256, 0.0f);
  for (int i = 0; i < 31; ++i) x[size_t(cols + i)] = float(i - 16) + 0.5f;  // ties: the scale is 1
  x[size_t(cols + 31)] = 127.0f;
  x[size_t(2 * cols)] = 3e-30f;
  x[size_t(2 * cols + 1)] = -1e-38f;
  const cpu::detail::QuantKernel scalar = cpu::detail::scalar_quant_kernel(t);
  std::vector<std::pair<const char*, cpu::detail::QuantKernel>> vector_kernels = {
      {"avx2", cpu::detail::avx2_quant_kernel(t)}};
  if (cpu::detail::have_avx512_vnni())
    vector_kernels.emplace_back("avx512", cpu::detail::avx512_quant_kernel(t));
  else
    GTEST_LOG_(INFO) << "no AVX-512 VNNI here: its build is checked with the instructions emulated";
  // The AVX-512 build's logic with its few AVX-512 instructions done in AVX2 (runs on any AVX2 CPU).
  vector_kernels.emplace_back("avx512 emulated", cpu::detail::emulated_avx512_quant_kernel(t));

  const QuantMat m = make_quant_mat(t, 37, cols, 3);
  const uint64_t act_bytes = cpu::detail::quant_act_row_bytes(t, cols);
  for (const auto& [isa, kernel] : vector_kernels) {
    for (int row = 0; row < 3; ++row) {
      std::vector<std::byte> a(act_bytes), b(act_bytes);
      scalar.quantize_act(x.data() + row * cols, cols, a.data());
      kernel.quantize_act(x.data() + row * cols, cols, b.data());
      EXPECT_EQ(std::memcmp(a.data(), b.data(), act_bytes), 0)
          << dtype_name(t) << " " << isa << " activation row " << row;
    }
    for (int n = 1; n <= cpu::detail::kMaxTileTokens; ++n) {
      const std::vector<float> ys = run_kernel(scalar, m.mat, x, n), yv = run_kernel(kernel, m.mat, x, n);
      for (int tok = 0; tok < n; ++tok)
        for (int64_t r = 0; r < m.mat.rows; ++r) {
          double mag = 0.0;
          for (int64_t c = 0; c < cols; ++c)
            mag += std::fabs(double(m.values[size_t(r * cols + c)]) * x[size_t(tok * cols + c)]);
          const size_t i = size_t(tok * m.mat.rows + r);
          ASSERT_LE(std::fabs(double(ys[i]) - yv[i]), kIsaTolerance * (1.0 + mag))
              << dtype_name(t) << " " << isa << " n=" << n << " t=" << tok << " r=" << r
              << " scalar=" << ys[i] << " vector=" << yv[i];
        }
    }
  }
}

// Rows interleaved by eight (interleave_rows8, what the CPU backend does to resident weights at load)
// give the same bits as the stored layout on every kernel, for every tile size and a tail of rows
// past the last group; their rows read back as the stored ones.
TEST_P(MatmulQuantTest, InterleavedRowsGiveTheSameBits) {
  const DType t = GetParam();
  if (!can_interleave_rows8(t)) {
    EXPECT_EQ(dtype_info(t).block, 256) << dtype_name(t) << ": every block-of-32 type interleaves";
    return;
  }
  const int64_t cols = 8 * 32;
  const QuantMat m = make_quant_mat(t, 8 * 5 + 3, cols, 21);
  std::vector<std::byte> bytes(size_t(m.mat.nbytes()) + 1);
  const Mat packed = interleave_rows8(m.mat, bytes.data() + 1);  // any alignment, as mapped data
  ASSERT_TRUE(packed.interleaved);
  std::vector<float> a(static_cast<size_t>(cols)), b(static_cast<size_t>(cols));
  for (int64_t r = 0; r < m.mat.rows; ++r) {
    dequantize_mat_row(m.mat, r, a.data());
    dequantize_mat_row(packed, r, b.data());
    ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << dtype_name(t) << " row " << r;
  }
  const std::vector<float> x = random_tokens(cpu::detail::kMaxTileTokens, cols, 9);
  std::vector<std::pair<const char*, cpu::detail::QuantKernel>> kernels = {
      {"scalar", cpu::detail::scalar_quant_kernel(t)}};
  if (cpu::have_avx2()) {
    kernels.emplace_back("avx2", cpu::detail::avx2_quant_kernel(t));
    kernels.emplace_back("avx512 emulated", cpu::detail::emulated_avx512_quant_kernel(t));
    if (cpu::detail::have_avx512_vnni()) kernels.emplace_back("avx512", cpu::detail::avx512_quant_kernel(t));
  }
  for (const auto& [isa, kernel] : kernels)
    for (int n = 1; n <= cpu::detail::kMaxTileTokens; ++n) {
      const std::vector<float> ys = run_kernel(kernel, m.mat, x, n), yp = run_kernel(kernel, packed, x, n);
      ASSERT_EQ(std::memcmp(ys.data(), yp.data(), ys.size() * sizeof(float)), 0)
          << dtype_name(t) << " " << isa << " n=" << n;
    }
  // And through matmul, threaded (row shares start at multiples of 16).
  ThreadPool pool(3);
  const QuantMat big = make_quant_mat(t, 16 * 9 + 5, cols, 4);
  std::vector<std::byte> big_bytes(size_t(big.mat.nbytes()));
  const Mat big_packed = interleave_rows8(big.mat, big_bytes.data());
  for_each_isa([&] {
    for (int n : {1, 3, 9}) {
      const std::vector<float> xs = random_tokens(n, cols, uint32_t(n));
      const std::vector<float> ys = run_matmul(big.mat, xs, n, pool),
                               yp = run_matmul(big_packed, xs, n, pool);
      ASSERT_EQ(std::memcmp(ys.data(), yp.data(), ys.size() * sizeof(float)), 0)
          << dtype_name(t) << " isa=" << cpu::matmul_isa() << " n=" << n;
    }
  });
}

// Activation quantization is what bounds the error: with exactly representable activations (every
// block a multiple of its max / 127) the kernels give the float dot product to rounding.
TEST_P(MatmulQuantTest, ExactOnGridActivations) {
  const DType t = GetParam();
  const int64_t cols = 2 * dtype_info(t).block;
  const QuantMat m = make_quant_mat(t, 9, cols, 11);
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> q(-127, 127);
  std::vector<float> x(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) x[size_t(c)] = float(q(rng)) / 64.0f;
  for (int64_t c = 0; c < cols; c += 32) x[size_t(c)] = 127.0f / 64.0f;  // every block's max is 127 steps
  for_each_isa([&] {
    ThreadPool pool(1);
    const std::vector<float> y = run_matmul(m.mat, x, 1, pool);
    for (int64_t r = 0; r < m.mat.rows; ++r) {
      double ref = 0.0, mag = 0.0;
      for (int64_t c = 0; c < cols; ++c) {
        const double p = double(m.values[size_t(r * cols + c)]) * x[size_t(c)];
        ref += p, mag += std::fabs(p);
      }
      ASSERT_LE(std::fabs(y[size_t(r)] - ref), kFloatTolerance * (1.0 + mag))
          << dtype_name(t) << " isa=" << cpu::matmul_isa() << " r=" << r << " got=" << y[size_t(r)]
          << " ref=" << ref;
    }
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
