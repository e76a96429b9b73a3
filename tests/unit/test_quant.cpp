// Quantized formats against gguf-py (gguf.quants, 0.19.0): the vectors in tests/fixtures/quant come
// from tools/make_quant_vectors.py. Dequantization and gguf-py's own quantizers must match bit for
// bit (NaN only as NaN-ness); the quantizers gguf-py lacks (K-quants, IQ4_XS, IQ3_XXS) are held to
// round-trip error bounds, IQ3_XXS also to llama.cpp's own bytes (tools/make_iq3_xxs_vector.py); MLX
// affine dequantization is checked against vectors computed from its definition.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "formats/quant.h"
#include "formats/quant_blocks.h"
#include "util/error.h"
#include "util/half.h"

namespace fm {
namespace {

const std::string kDir = std::string(FM_FIXTURES) + "/quant";

std::vector<std::byte> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  std::vector<char> chars((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(chars.size());
  std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

nlohmann::json read_index() {
  std::ifstream f(kDir + "/index.json");
  return nlohmann::json::parse(f);
}

DType type_named(const std::string& name) {
  const auto t = dtype_from_name(name);
  EXPECT_TRUE(t.has_value()) << name;
  return t.value_or(DType::F32);
}

// Bit-identical, or both NaN.
bool same_float(float got, float want) {
  if (std::isnan(want)) return std::isnan(got);
  return f32_to_bits(got) == f32_to_bits(want);
}

// The name of the edge case that block (or row) i belongs to.
std::string case_of(const nlohmann::json& entry, int64_t i) {
  for (const auto& c : entry.at("cases"))
    if (i >= c.at("first").get<int64_t>() && i < c.at("first").get<int64_t>() + c.at("count").get<int64_t>())
      return c.at("name").get<std::string>();
  return "?";
}

TEST(quant, TraitsMatchDTypeInfo) {
  int n = 0;
  for (int i = 0; i < kNumDTypes; ++i) {
    const DType t = DType(i);
    quant::visit_format(t, [&](auto q) {
      using Q = decltype(q);
      EXPECT_EQ(Q::kType, t);
      EXPECT_EQ(Q::kBlock, dtype_info(t).block) << dtype_name(t);
      EXPECT_EQ(int(sizeof(typename Q::Block)), dtype_info(t).block_bytes) << dtype_name(t);
      EXPECT_EQ(alignof(typename Q::Block), 1u) << dtype_name(t);
      ++n;
    });
  }
  EXPECT_EQ(n, 18);
}

TEST(quant, DequantizeMatchesGgufPy) {
  const nlohmann::json index = read_index();
  std::set<DType> covered;
  for (const auto& e : index.at("dequant")) {
    const DType t = type_named(e.at("type"));
    covered.insert(t);
    const int64_t blocks = e.at("blocks"), block = e.at("block"), block_bytes = e.at("block_bytes");
    ASSERT_EQ(block, dtype_info(t).block);
    ASSERT_EQ(block_bytes, dtype_info(t).block_bytes);
    const std::vector<std::byte> file = read_bytes(kDir + "/" + e.at("file").get<std::string>());
    const int64_t n = blocks * block;
    ASSERT_EQ(file.size(), size_t(blocks * block_bytes + n * 4)) << e.at("file");
    std::vector<float> want(static_cast<size_t>(n));
    std::memcpy(want.data(), file.data() + blocks * block_bytes, size_t(n) * 4);

    // The whole set as one row, and again from an odd address, as rows in a mapped file can be.
    std::vector<float> got(static_cast<size_t>(n));
    dequantize_row(t, file.data(), n, got.data());
    std::vector<std::byte> shifted(size_t(blocks * block_bytes) + 1);
    std::memcpy(shifted.data() + 1, file.data(), size_t(blocks * block_bytes));
    std::vector<float> got_shifted(static_cast<size_t>(n));
    dequantize_row(t, shifted.data() + 1, n, got_shifted.data());

    int64_t bad = 0, nan = 0;
    for (int64_t i = 0; i < n; ++i) {
      nan += std::isnan(want[size_t(i)]);
      const bool ok =
          same_float(got[size_t(i)], want[size_t(i)]) && same_float(got_shifted[size_t(i)], want[size_t(i)]);
      if (!ok && ++bad <= 5)
        ADD_FAILURE() << dtype_name(t) << " value " << i << " (block " << i / block << ", case "
                      << case_of(e, i / block) << "): got " << got[size_t(i)] << " want " << want[size_t(i)];
    }
    EXPECT_EQ(bad, 0) << dtype_name(t);
    std::printf("  %-8s %4lld blocks, %6lld values (%lld NaN) bit-exact\n",
                std::string(dtype_name(t)).c_str(), (long long)blocks, (long long)n, (long long)nan);
  }
  // Every format we read, plus the float types through the same entry point.
  for (int i = 0; i < kNumDTypes; ++i) {
    if (can_dequantize(DType(i))) {
      EXPECT_TRUE(covered.count(DType(i))) << "no vectors for " << dtype_name(DType(i));
    }
  }
  EXPECT_EQ(covered.size(), 21u);
}

TEST(quant, QuantizeMatchesGgufPy) {
  const nlohmann::json index = read_index();
  for (const auto& e : index.at("quant")) {
    const DType t = type_named(e.at("type"));
    const int64_t rows = e.at("rows"), cols = e.at("cols"), row_bytes = e.at("row_bytes");
    ASSERT_EQ(uint64_t(row_bytes), dtype_row_bytes(t, uint64_t(cols)).value());
    const std::vector<std::byte> file = read_bytes(kDir + "/" + e.at("file").get<std::string>());
    ASSERT_EQ(file.size(), size_t(rows * cols * 4 + rows * row_bytes));
    std::vector<float> x(static_cast<size_t>(rows * cols));
    std::memcpy(x.data(), file.data(), x.size() * 4);
    const std::byte* want = file.data() + rows * cols * 4;

    std::vector<std::byte> got(static_cast<size_t>(row_bytes));
    int64_t bad = 0;
    for (int64_t r = 0; r < rows; ++r) {
      quantize_row(t, x.data() + r * cols, cols, got.data());
      if (std::memcmp(got.data(), want + r * row_bytes, size_t(row_bytes)) != 0) {
        ++bad;
        int64_t at = 0;
        while (got[size_t(at)] == want[r * row_bytes + at]) ++at;
        ADD_FAILURE() << dtype_name(t) << " row " << r << " (" << case_of(e, r) << ") differs from byte "
                      << at << ": got " << int(got[size_t(at)]) << " want " << int(want[r * row_bytes + at]);
      }
    }
    EXPECT_EQ(bad, 0) << dtype_name(t);
    std::printf("  %-8s %3lld rows of %lld: bytes equal to gguf.quants.quantize\n",
                std::string(dtype_name(t)).c_str(), (long long)rows, (long long)cols);
  }
}

std::vector<float> normal_rows(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = dist(rng);
  return x;
}

// The simple types' quantizers land on values they represent exactly: quantizing what they
// dequantize to gives the same bytes back.
TEST(quant, SimpleQuantizersReproduceTheirOwnValues) {
  const int64_t n = 32 * 512;
  std::vector<float> x = normal_rows(n, 7);
  // Some blocks far from unit scale.
  for (int64_t i = 0; i < n; ++i) x[size_t(i)] *= std::pow(10.0f, float((i / 32) % 9) - 4.0f);
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1}) {
    const uint64_t bytes = dtype_row_bytes(t, uint64_t(n)).value();
    std::vector<std::byte> q(bytes), q2(bytes);
    std::vector<float> y(static_cast<size_t>(n));
    quantize_row(t, x.data(), n, q.data());
    dequantize_row(t, q.data(), n, y.data());
    quantize_row(t, y.data(), n, q2.data());
    EXPECT_EQ(std::memcmp(q.data(), q2.data(), bytes), 0) << dtype_name(t);
  }
}

double relative_rmse(const float* x, const float* y, int64_t n) {
  double err2 = 0, x2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    err2 += (double(y[i]) - double(x[i])) * (double(y[i]) - double(x[i]));
    x2 += double(x[i]) * double(x[i]);
  }
  return std::sqrt(err2 / x2);
}

// RMSE of dequantize(quantize(x)) relative to RMS(x) for Gaussian rows. For 32 Gaussian values a
// uniform 4-bit grid over [min, max] alone gives ~7.9% (step ~4.1 sigma / 15, error step / sqrt(12)),
// 8 bits over [-amax, amax] ~0.55%; the bounds sit ~12% above what the quantizers reach here
// (Q8_0 0.54%, Q5_0 4.3%, Q5_1 3.8%, Q4_0 8.6%, Q4_1 7.9%, Q6_K 1.8%, Q5_K 3.6%, Q4_K 7.2%,
// IQ4_XS 7.7%), so a broken search or packing shows. And the searching quantizers must beat the
// simple ones of the same width.
TEST(quant, RoundTripError) {
  struct Bound {
    DType t;
    double max_rel_rmse;
  };
  const Bound bounds[] = {{DType::Q8_0, 0.006}, {DType::Q5_0, 0.048}, {DType::Q5_1, 0.043},
                          {DType::Q4_0, 0.097}, {DType::Q4_1, 0.088}, {DType::Q6_K, 0.020},
                          {DType::Q5_K, 0.041}, {DType::Q4_K, 0.081}, {DType::IQ4_XS, 0.086},
                          {DType::IQ3_XXS, 0.24}};
  const int64_t n = 256 * 256;
  const std::vector<float> x = normal_rows(n, 11);
  std::map<DType, double> rel;
  for (const Bound& b : bounds) {
    std::vector<std::byte> q(dtype_row_bytes(b.t, uint64_t(n)).value());
    std::vector<float> y(static_cast<size_t>(n));
    quantize_row(b.t, x.data(), n, q.data());
    dequantize_row(b.t, q.data(), n, y.data());
    rel[b.t] = relative_rmse(x.data(), y.data(), n);
    EXPECT_LT(rel[b.t], b.max_rel_rmse) << dtype_name(b.t);
    std::printf("  %-8s relative RMSE %.3f%% (bound %.2f%%)\n", std::string(dtype_name(b.t)).c_str(),
                100 * rel[b.t], 100 * b.max_rel_rmse);
  }
  EXPECT_LT(rel[DType::Q4_K], rel[DType::Q4_1]);
  EXPECT_LT(rel[DType::Q5_K], rel[DType::Q5_1]);
  EXPECT_LT(rel[DType::IQ4_XS], rel[DType::Q4_0]);
  // IQ3_XXS (3.06 bits per weight, no zero level, no importance matrix) reaches 21.3% here, 2.8 times
  // IQ4_XS's error (4.25 bits); llama.cpp's quantizer gives the same bytes (IQ3XxsMatchesLlamaCpp).
  EXPECT_GT(rel[DType::IQ3_XXS], 2.0 * rel[DType::IQ4_XS]);
  EXPECT_LT(rel[DType::IQ3_XXS], 3.2 * rel[DType::IQ4_XS]);
}

// The reference quantizers on rows that stress their searches: zeros, constants, one spike, blocks
// of wildly different magnitude, all positive, tiny. Zeros must come back as zeros, nothing may be
// NaN, and each row stays near its input.
TEST(quant, KQuantizersEdgeRows) {
  const int64_t n = 256 * 6;
  std::vector<float> x(size_t(n), 0.0f);
  const std::vector<float> noise = normal_rows(n, 3);
  for (int64_t i = 256; i < 512; ++i) x[size_t(i)] = -2.5f;                                        // constant
  for (int64_t i = 512; i < 768; ++i) x[size_t(i)] = i == 600 ? 40.0f : 1e-4f * noise[size_t(i)];  // spike
  for (int64_t i = 768; i < 1024; ++i)
    x[size_t(i)] = noise[size_t(i)] * std::pow(10.0f, float((i / 32) % 8) - 4);
  for (int64_t i = 1024; i < 1280; ++i) x[size_t(i)] = std::fabs(noise[size_t(i)]);  // all positive
  for (int64_t i = 1280; i < 1536; ++i) x[size_t(i)] = noise[size_t(i)] * 1e-12f;    // tiny
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_XS, DType::IQ3_XXS}) {
    std::vector<std::byte> q(dtype_row_bytes(t, uint64_t(n)).value());
    std::vector<float> y(static_cast<size_t>(n));
    quantize_row(t, x.data(), n, q.data());
    dequantize_row(t, q.data(), n, y.data());
    for (int64_t i = 0; i < 256; ++i) ASSERT_EQ(y[size_t(i)], 0.0f) << dtype_name(t) << " zero row at " << i;
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(y[size_t(i)])) << dtype_name(t) << " at " << i;
    // IQ3_XXS has no zero level: values next to a spike come back as +-1 step of the spike's scale.
    for (int64_t r = 1; r < 5; ++r)
      EXPECT_LT(relative_rmse(x.data() + 256 * r, y.data() + 256 * r, 256),
                t != DType::IQ3_XXS ? 0.12 : r == 2 ? 1.0 : 0.25)
          << dtype_name(t) << " row " << r;
    // The tiny row lies below what f16 super-scales reach: it may flush to zero, never grow.
    EXPECT_LE(relative_rmse(x.data() + 1280, y.data() + 1280, 256), 1.0) << dtype_name(t);
  }
}

// IQ3_XXS against llama.cpp's own quantizer (ggml_quantize_chunk without an importance matrix, run by
// tools/make_iq3_xxs_vector.py): the same bytes, for Gaussian rows and the edge rows above.
TEST(quant, IQ3XxsMatchesLlamaCpp) {
  const std::vector<std::byte> file = read_bytes(kDir + "/iq3_xxs_llama_cpp.bin");
  constexpr size_t kRowIn = 256 * 4, kRowOut = 98;
  ASSERT_EQ(file.size() % (kRowIn + kRowOut), 0u);
  const size_t rows = file.size() / (kRowIn + kRowOut);
  ASSERT_EQ(rows, 17u);
  std::vector<float> x(rows * 256);
  std::memcpy(x.data(), file.data(), rows * kRowIn);
  for (size_t r = 0; r < rows; ++r) {
    std::byte q[kRowOut];
    quantize_row(DType::IQ3_XXS, x.data() + 256 * r, 256, q);
    EXPECT_EQ(std::memcmp(q, file.data() + rows * kRowIn + r * kRowOut, kRowOut), 0) << "row " << r;
  }
}

TEST(quant, MlxAffineMatchesDefinition) {
  const nlohmann::json index = read_index();
  int combos = 0;
  for (const auto& e : index.at("mlx")) {
    const int bits = e.at("bits"), group = e.at("group_size");
    const int64_t rows = e.at("rows"), cols = e.at("cols"), words = e.at("words_per_row");
    ASSERT_EQ(words * 32, cols * bits);
    const std::vector<std::byte> file = read_bytes(kDir + "/" + e.at("file").get<std::string>());
    const int64_t groups = cols / group;
    ASSERT_EQ(file.size(), size_t(rows * (words * 4 + groups * 4 + cols * 4)));
    std::vector<uint32_t> packed(size_t(rows * words));
    std::vector<uint16_t> scales(size_t(rows * groups)), biases(size_t(rows * groups));
    std::vector<float> want(static_cast<size_t>(rows * cols)), got(static_cast<size_t>(cols));
    const std::byte* p = file.data();
    std::memcpy(packed.data(), p, packed.size() * 4);
    p += packed.size() * 4;
    std::memcpy(scales.data(), p, scales.size() * 2);
    p += scales.size() * 2;
    std::memcpy(biases.data(), p, biases.size() * 2);
    p += biases.size() * 2;
    std::memcpy(want.data(), p, want.size() * 4);
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_mlx_row(packed.data() + r * words, scales.data() + r * groups, biases.data() + r * groups,
                         bits, group, cols, got.data());
      for (int64_t j = 0; j < cols; ++j)
        ASSERT_TRUE(same_float(got[size_t(j)], want[size_t(r * cols + j)]))
            << "bits " << bits << " group " << group << " row " << r << " value " << j;
    }
    ++combos;
  }
  EXPECT_EQ(combos, 15);
}

// A 3-bit value across a word boundary, worked by hand: element 10 has bits 30..32.
TEST(quant, MlxValueStraddlingWords) {
  uint32_t packed[3] = {0, 0, 0};
  packed[0] = 0b10u << 30;  // low two bits of element 10 = 0b10
  packed[1] = 0b1u;         // its high bit
  const uint16_t scale = f32_to_bf16(1.0f), bias = f32_to_bf16(0.0f);
  float out[32];
  dequantize_mlx_row(packed, &scale, &bias, 3, 32, 32, out);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], j == 10 ? 6.0f : 0.0f) << j;
}

TEST(quant, RejectsTypesItDoesNotHandle) {
  std::byte buf[512] = {};
  float out[256];
  EXPECT_FALSE(can_dequantize(DType::Q8_K));
  EXPECT_THROW(dequantize_row(DType::Q8_K, buf, 256, out), Error);
  EXPECT_FALSE(can_quantize(DType::Q2_K));
  EXPECT_THROW(quantize_row(DType::Q2_K, out, 256, buf), Error);
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K,
                  DType::Q6_K, DType::IQ4_XS, DType::IQ3_XXS, DType::F16, DType::BF16, DType::F32})
    EXPECT_TRUE(can_quantize(t)) << dtype_name(t);
}

}  // namespace
}  // namespace fm
