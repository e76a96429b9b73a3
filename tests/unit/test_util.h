// Helpers shared by the test suites: a scratch folder per test, and error expectations.
#pragma once
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <initializer_list>
#include <random>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "ops/cpu/kernels.h"
#include "ops/mat.h"
#include "util/thread_pool.h"
#include "util/error.h"

namespace fm::test {

// A fresh folder per test (named after the test), removed afterwards.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = std::filesystem::temp_directory_path() /
           fmt::format("fm_{}_{}_{:08x}", info ? info->name() : "x", ::getpid(), rd());
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::filesystem::path operator/(const std::string& name) const { return path / name; }
};

// Runs `fn`, requires an fm::Error whose message contains every one of `needles` and, when given,
// starts with `starts_with` (errors about a file start with its path, so users know which is broken).
inline void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> needles,
                         const std::string& starts_with = {}) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (!starts_with.empty()) {
      EXPECT_EQ(msg.rfind(starts_with, 0), 0u) << msg;
    }
    for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "no fm::Error thrown" << (starts_with.empty() ? "" : " for " + starts_with);
}

// Compares cpu::matmul of `w` with a double-precision sum over `values` (w's stored weights as
// float, [rows][cols]) for n random tokens: |error| <= tolerance * (1 + sum |w x|) per output. The
// output starts as NaN, so an unwritten element fails.
inline void check_matmul(const Mat& w, const std::vector<float>& values, int n, ThreadPool& pool, double tolerance) {
  const int64_t rows = w.rows, cols = w.cols;
  std::mt19937 rng(uint32_t(rows * 131 + cols * 7 + n));
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(n * cols));
  for (float& v : x) v = dist(rng);
  std::vector<float> y(static_cast<size_t>(n * rows), std::numeric_limits<float>::quiet_NaN());
  cpu::matmul(w, x.data(), n, y.data(), pool);
  for (int t = 0; t < n; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0.0, mag = 0.0;
      for (int64_t c = 0; c < cols; ++c) {
        const double p = double(values[size_t(r * cols + c)]) * double(x[size_t(t * cols + c)]);
        ref += p;
        mag += std::fabs(p);
      }
      const float got = y[size_t(t * rows + r)];
      ASSERT_LE(std::fabs(double(got) - ref), tolerance * (1.0 + mag))
          << dtype_name(w.dtype) << " isa=" << cpu::matmul_isa() << " rows=" << rows << " cols=" << cols
          << " n=" << n << " threads=" << pool.size() << " t=" << t << " r=" << r << " got=" << got
          << " ref=" << ref;
    }
  }
}

// Runs the body once on the scalar kernels and, where the CPU has them, once on the vector ones
// (AVX2, or their AVX-512 build where the CPU has that too).
template <class F>
void for_each_isa(F&& body) {
  cpu::set_force_scalar(true);
  EXPECT_STREQ(cpu::matmul_isa(), "scalar");
  body();
  cpu::set_force_scalar(false);
  if (cpu::have_avx2()) {
    EXPECT_STRNE(cpu::matmul_isa(), "scalar");
    body();
  } else {
    GTEST_LOG_(INFO) << "no AVX2/FMA/F16C here: only the scalar path is tested";
  }
}

}  // namespace fm::test
