#include <gtest/gtest.h>

#include "test_util.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "ops/cpu/kernels.h"
#include "util/half.h"

namespace fm {

// Names the type in gtest's messages instead of dumping its byte.
void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }

namespace {

// A weight matrix in its stored type plus the float value of every stored element, so the
// reference sees exactly the rounded weights the kernel reads.
struct TestMat {
  std::vector<std::byte> bytes;
  std::vector<float> values;  // [rows][cols]
  Mat mat;
};

// row_pad adds bytes after each row, as a real file's row stride may not equal cols * size.
TestMat make_mat(DType dtype, int64_t rows, int64_t cols, uint32_t seed, uint64_t row_pad = 0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const uint64_t elt = dtype == DType::F32 ? 4 : 2;
  TestMat m;
  m.values.resize(size_t(rows * cols));
  const uint64_t row_bytes = uint64_t(cols) * elt + row_pad;
  // One spare byte up front so the data is misaligned, as tensors in a mapped file can be.
  m.bytes.assign(size_t(rows) * row_bytes + 1, std::byte{0});
  std::byte* data = m.bytes.data() + 1;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float v = dist(rng);
      std::byte* p = data + uint64_t(r) * row_bytes + uint64_t(c) * elt;
      float stored = v;
      if (dtype == DType::F32) {
        std::memcpy(p, &v, 4);
      } else {
        const uint16_t h = dtype == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
        std::memcpy(p, &h, 2);
        stored = dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      m.values[size_t(r * cols + c)] = stored;
    }
  }
  m.mat = Mat{dtype, rows, cols, data, row_bytes};
  return m;
}

// The double-precision comparison of test_util.h, on this suite's matrices.
void check_matmul(const TestMat& m, int n, ThreadPool& pool) { test::check_matmul(m.mat, m.values, n, pool, 1e-5); }

using test::for_each_isa;

class MatmulTest : public testing::TestWithParam<DType> {};

TEST_P(MatmulTest, MatchesDoubleReference) {
  const DType dtype = GetParam();
  for_each_isa([&] {
    for (int threads : {1, 2, 3}) {
      ThreadPool pool(threads);
      for (int64_t rows : {1, 2, 3, 17, 64})
        for (int64_t cols : {1, 7, 8, 33, 100, 257}) {
          const TestMat m = make_mat(dtype, rows, cols, uint32_t(rows * 1000 + cols));
          for (int n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 17}) check_matmul(m, n, pool);
        }
    }
  });
}

// Shapes big enough for several parallel chunks and, with many tokens, several row blocks.
TEST_P(MatmulTest, LargerShapes) {
  const DType dtype = GetParam();
  for_each_isa([&] {
    for (int threads : {1, 2, 3}) {
      ThreadPool pool(threads);
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{300, 1031}, {1000, 512}, {77, 4100}})
        for (int n : {1, 4, 9, 17}) check_matmul(make_mat(dtype, rows, cols, uint32_t(rows + cols)), n, pool);
    }
  });
}

TEST_P(MatmulTest, PaddedRowStride) {
  const DType dtype = GetParam();
  for_each_isa([&] {
    ThreadPool pool(2);
    for (int n : {1, 3, 5}) check_matmul(make_mat(dtype, 40, 37, 5, /*row_pad=*/10), n, pool);
  });
}

TEST_P(MatmulTest, NoTokensWritesNothing) {
  const TestMat m = make_mat(GetParam(), 4, 8, 1);
  ThreadPool pool(2);
  float y = 42.0f;
  cpu::matmul(m.mat, nullptr, 0, &y, pool);
  EXPECT_EQ(y, 42.0f);
}

TEST_P(MatmulTest, EmbedCopiesRows) {
  const DType dtype = GetParam();
  const TestMat m = make_mat(dtype, 50, 37, 9);
  const std::vector<int32_t> ids = {0, 49, 7, 7, 23};
  std::vector<float> out(ids.size() * 37, std::numeric_limits<float>::quiet_NaN());
  cpu::embed(m.mat, ids.data(), int(ids.size()), out.data());
  for (size_t t = 0; t < ids.size(); ++t)
    for (size_t c = 0; c < 37; ++c)
      ASSERT_EQ(out[t * 37 + c], m.values[size_t(ids[t]) * 37 + c])
          << dtype_name(dtype) << " t=" << t << " c=" << c;
}

// Random activations for n tokens of `cols` values, as check_matmul draws them.
std::vector<float> random_tokens(int n, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(n * cols));
  for (float& v : x) v = dist(rng);
  return x;
}

// y[t][r] for tokens t < n (<= kMaxTileTokens) through one tile kernel over all rows, called
// directly (matmul takes the best kernel of the CPU; this reaches each of them). NaN-filled first.
std::vector<float> run_tile(cpu::detail::TileKernel kernel, const Mat& w, const float* x, int n) {
  std::vector<float> y(static_cast<size_t>(n * w.rows), std::numeric_limits<float>::quiet_NaN());
  kernel(w, 0, w.rows, x, n, y.data(), w.rows);
  return y;
}

// The vector tile kernels this CPU can run for `dtype`, by name: AVX2 and, for F16 and BF16 where
// the CPU has AVX-512 F/BW/VL, AVX-512.
std::vector<std::pair<std::string, cpu::detail::TileKernel>> vector_kernels(DType dtype) {
  std::vector<std::pair<std::string, cpu::detail::TileKernel>> kernels;
  if (!cpu::have_avx2()) return kernels;
  kernels.emplace_back("avx2", cpu::detail::avx2_tile_kernel(dtype));
  if (cpu::detail::have_avx512_float() && dtype != DType::F32)
    kernels.emplace_back("avx512", cpu::detail::avx512_tile_kernel(dtype));
  return kernels;
}

// Row counts around the kernels' blocks of 8, 4 and 2 rows, and column counts around their steps
// of 32 and 16 columns, on both sides of the 4096 columns above which the AVX-512 kernel
// interleaves rows.
const std::vector<int64_t> kKernelRows = {1, 2, 3, 7, 8, 9, 17, 26};
const std::vector<int64_t> kKernelCols = {1, 15, 16, 17, 31, 32, 33, 48, 100, 4096, 4097, 4113, 4131};

// Each vector kernel against the scalar one (matmul forced onto the scalar path) on the same
// weights and tokens, for every tile width: float32 products and sums in another order, so they
// agree to kIsaTolerance * (1 + sum |w x|), as each agrees with the double-precision sum.
constexpr double kIsaTolerance = 4e-6;

TEST_P(MatmulTest, VectorKernelsAgreeWithScalar) {
  const DType dtype = GetParam();
  const auto kernels = vector_kernels(dtype);
  if (kernels.empty()) GTEST_SKIP() << "no AVX2/FMA/F16C here";
  if (kernels.size() == 1 && dtype != DType::F32) GTEST_LOG_(INFO) << "no AVX-512 here: AVX2 only";
  ThreadPool pool(1);
  for (int64_t rows : kKernelRows)
    for (int64_t cols : kKernelCols) {
      const TestMat m = make_mat(dtype, rows, cols, uint32_t(rows * 7919 + cols));
      const std::vector<float> x = random_tokens(cpu::detail::kMaxTileTokens, cols, uint32_t(cols));
      for (int n = 1; n <= cpu::detail::kMaxTileTokens; ++n) {
        std::vector<float> ys(static_cast<size_t>(n * rows), std::numeric_limits<float>::quiet_NaN());
        cpu::set_force_scalar(true);
        cpu::matmul(m.mat, x.data(), n, ys.data(), pool);
        cpu::set_force_scalar(false);
        for (const auto& [isa, kernel] : kernels) {
          const std::vector<float> yv = run_tile(kernel, m.mat, x.data(), n);
          for (int t = 0; t < n; ++t)
            for (int64_t r = 0; r < rows; ++r) {
              double mag = 0.0;
              for (int64_t c = 0; c < cols; ++c)
                mag += std::fabs(double(m.values[size_t(r * cols + c)]) * x[size_t(t * cols + c)]);
              const size_t i = size_t(t * rows + r);
              ASSERT_LE(std::fabs(double(ys[i]) - yv[i]), kIsaTolerance * (1.0 + mag))
                  << dtype_name(dtype) << " " << isa << " rows=" << rows << " cols=" << cols << " n=" << n
                  << " t=" << t << " r=" << r << " scalar=" << ys[i] << " vector=" << yv[i];
            }
        }
      }
    }
}

// Batch invariance: every kernel sums each (row, token) in the same order whatever the tile width
// and however many rows it takes side by side, so a token's outputs from a tile of n tokens equal,
// bit for bit, those of a tile of that token alone (decode_batch relies on it; test_batch.cpp
// checks it on whole models).
TEST_P(MatmulTest, TileWidthsSumAlike) {
  const DType dtype = GetParam();
  auto kernels = vector_kernels(dtype);
  for (int64_t rows : kKernelRows)
    for (int64_t cols : kKernelCols) {
      const TestMat m = make_mat(dtype, rows, cols, uint32_t(rows * 31 + cols));
      const std::vector<float> x = random_tokens(cpu::detail::kMaxTileTokens, cols, uint32_t(rows + cols));
      for (const auto& [isa, kernel] : kernels) {
        std::vector<float> alone(static_cast<size_t>(cpu::detail::kMaxTileTokens * rows));
        for (int t = 0; t < cpu::detail::kMaxTileTokens; ++t) {
          const std::vector<float> y = run_tile(kernel, m.mat, x.data() + t * cols, 1);
          std::copy(y.begin(), y.end(), alone.begin() + t * rows);
        }
        for (int n = 2; n <= cpu::detail::kMaxTileTokens; ++n) {
          const std::vector<float> y = run_tile(kernel, m.mat, x.data(), n);
          for (int64_t i = 0; i < n * rows; ++i)
            ASSERT_EQ(f32_to_bits(y[size_t(i)]), f32_to_bits(alone[size_t(i)]))
                << dtype_name(dtype) << " " << isa << " rows=" << rows << " cols=" << cols << " n=" << n
                << " t=" << i / rows << " r=" << i % rows;
        }
      }
    }
}

// The same through matmul, on every path it takes (scalar, and the CPU's vector kernels), with
// more tokens than one tile, row blocks and threads: n tokens at once equal each token alone.
TEST_P(MatmulTest, ManyTokensEqualOneAtATime) {
  const DType dtype = GetParam();
  for_each_isa([&] {
    for (int threads : {1, 2}) {
      ThreadPool pool(threads);
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{300, 1031}, {45, 5000}}) {
        const TestMat m = make_mat(dtype, rows, cols, uint32_t(rows ^ cols));
        const int n = 9;
        const std::vector<float> x = random_tokens(n, cols, 3);
        std::vector<float> all(static_cast<size_t>(n * rows), std::numeric_limits<float>::quiet_NaN());
        cpu::matmul(m.mat, x.data(), n, all.data(), pool);
        for (int t = 0; t < n; ++t) {
          std::vector<float> one(static_cast<size_t>(rows), std::numeric_limits<float>::quiet_NaN());
          cpu::matmul(m.mat, x.data() + t * cols, 1, one.data(), pool);
          for (int64_t r = 0; r < rows; ++r)
            ASSERT_EQ(f32_to_bits(all[size_t(t * rows + r)]), f32_to_bits(one[size_t(r)]))
                << dtype_name(dtype) << " isa=" << cpu::matmul_isa() << " threads=" << threads
                << " rows=" << rows << " cols=" << cols << " t=" << t << " r=" << r;
        }
      }
    }
  });
}

// The "matmul" prefix makes the test names match `ctest -R matmul`.
INSTANTIATE_TEST_SUITE_P(matmul, MatmulTest, testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

}  // namespace
}  // namespace fm
