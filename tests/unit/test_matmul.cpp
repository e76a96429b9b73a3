#include <gtest/gtest.h>

#include "test_util.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
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

// The "matmul" prefix makes the test names match `ctest -R matmul`.
INSTANTIATE_TEST_SUITE_P(matmul, MatmulTest, testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

}  // namespace
}  // namespace fm
