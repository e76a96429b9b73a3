// Importance-matrix quantization: our quantizers with an importance matrix against llama.cpp's own
// (ggml_quantize_chunk with the matrix, vectors from tools/make_imatrix_vectors.py), the reader of
// llama-imatrix's GGUF files and its errors, and `convert --imatrix` on the shipped default model.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "convert/convert.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "formats/imatrix.h"
#include "formats/quant.h"
#include "test_util.h"

namespace fm {
namespace {

namespace fs = std::filesystem;

const std::string kDir = std::string(FM_FIXTURES) + "/quant";
const std::string kDefault = std::string(FM_FIXTURES) + "/../../models/default/flashmoe-default.gguf";
constexpr int64_t kRows = 16, kCols = 512;  // tools/make_imatrix_vectors.py

std::vector<std::byte> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  std::vector<char> chars((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(chars.size());
  std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

// Every type the vectors hold: those whose quantizer uses the matrix give llama.cpp's bytes exactly;
// Q8_0 ignores it in both; the others refuse it.
TEST(imatrix, QuantizersMatchLlamaCpp) {
  const std::vector<std::byte> input = read_bytes(kDir + "/imatrix_input.bin");
  ASSERT_EQ(input.size(), size_t(2 * kRows * kCols * 4));
  std::vector<float> x(size_t(kRows * kCols)), w(size_t(kRows * kCols));
  std::memcpy(x.data(), input.data(), x.size() * 4);
  std::memcpy(w.data(), input.data() + x.size() * 4, w.size() * 4);
  int used = 0;
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q4_K, DType::Q5_K,
                  DType::Q6_K, DType::IQ3_XXS, DType::IQ4_XS}) {
    const std::vector<std::byte> expected =
        read_bytes(kDir + "/imatrix_" + std::string(dtype_name(t)) + ".bin");
    const uint64_t row_bytes = *dtype_row_bytes(t, kCols);
    ASSERT_EQ(expected.size(), kRows * row_bytes) << dtype_name(t);
    const ImportanceUse use = importance_use(t);
    ASSERT_NE(use, ImportanceUse::Unsupported) << dtype_name(t);
    used += use == ImportanceUse::Used;
    int same = 0;
    for (int64_t r = 0; r < kRows; ++r) {
      std::vector<std::byte> q(row_bytes);
      quantize_row(t, x.data() + r * kCols, kCols, q.data(), w.data() + r * kCols);
      const bool eq = std::memcmp(q.data(), expected.data() + r * row_bytes, row_bytes) == 0;
      EXPECT_TRUE(eq) << dtype_name(t) << " row " << r;
      same += eq;
    }
    std::printf("%-8s %s: %d of %lld rows equal llama.cpp's bytes\n", std::string(dtype_name(t)).c_str(),
                use == ImportanceUse::Used ? "with importance" : "(ignores it)", same, (long long)kRows);
  }
  EXPECT_EQ(used, 9);
  // Every type flashmoe writes either uses the matrix or ignores it as llama.cpp does; one it cannot
  // write refuses it.
  for (int i = 0; i < kNumDTypes; ++i) {
    if (can_quantize(DType(i))) {
      EXPECT_NE(importance_use(DType(i)), ImportanceUse::Unsupported) << dtype_name(DType(i));
    }
  }
  EXPECT_EQ(importance_use(DType::Q2_K), ImportanceUse::Unsupported);
  std::vector<std::byte> q(*dtype_row_bytes(DType::Q2_K, kCols));
  test::expect_error([&] { quantize_row(DType::Q2_K, x.data(), kCols, q.data(), w.data()); },
                     {"Q2_K", "importance matrix is not supported"});
}

// The importance changes the result, towards less error where it is large: the importance-weighted
// squared error of the round trip is lower with the matrix than without.
TEST(imatrix, ImportanceLowersWeightedError) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  constexpr int64_t n = 256 * 32;
  std::vector<float> x(n), w(n), back(n);
  for (int64_t i = 0; i < n; ++i) {
    x[size_t(i)] = normal(rng);
    w[size_t(i)] = std::exp(2.0f * normal(rng));
  }
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K,
                  DType::IQ3_XXS, DType::IQ4_XS}) {
    std::vector<std::byte> q(*dtype_row_bytes(t, n)), q0(q.size());
    quantize_row(t, x.data(), n, q.data(), w.data());
    quantize_row(t, x.data(), n, q0.data());
    EXPECT_NE(q, q0);
    auto weighted_error = [&](const std::vector<std::byte>& bytes) {
      dequantize_row(t, bytes.data(), n, back.data());
      double e = 0;
      for (int64_t i = 0; i < n; ++i)
        e += double(w[size_t(i)]) * std::pow(double(back[size_t(i)] - x[size_t(i)]), 2);
      return e;
    };
    const double with = weighted_error(q), without = weighted_error(q0);
    std::printf("%s weighted error: %.4g with, %.4g without the importance matrix\n",
                std::string(dtype_name(t)).c_str(), with, without);
    EXPECT_LT(with, 0.95 * without) << dtype_name(t);
  }
}

// An imatrix GGUF as llama-imatrix writes it: general.type, the imatrix.* keys, and per entry
// in_sum2 [mats][cols] and counts [mats][1] (PyTorch order).
struct Entry {
  std::string name;
  int64_t mats, cols;
  std::vector<float> sums, counts;
  DType sums_type = DType::F32;
  bool write_sums = true, write_counts = true;
  int64_t counts_len = -1;  // -1: mats
};

void write_imatrix(const fs::path& path, const std::vector<Entry>& entries,
                   const std::string& type = "imatrix") {
  GgufWriter out(path);
  out.set_string("general.type", type);
  out.set_array("imatrix.datasets", std::vector<std::string>{"train.txt"});
  out.set_u32("imatrix.chunk_count", 4);
  out.set_u32("imatrix.chunk_size", 512);
  std::vector<std::vector<std::byte>> data;
  for (const Entry& e : entries) {
    if (e.write_sums) {
      out.declare(e.name + ".in_sum2", e.sums_type, {e.mats, e.cols});
      std::vector<std::byte> b(*dtype_row_bytes(e.sums_type, uint64_t(e.mats * e.cols)));
      quantize_row(e.sums_type, e.sums.data(), e.mats * e.cols, b.data());
      data.push_back(std::move(b));
    }
    if (e.write_counts) {
      const int64_t len = e.counts_len < 0 ? e.mats : e.counts_len;
      out.declare(e.name + ".counts", DType::F32, {len, 1});
      std::vector<std::byte> b(size_t(len) * 4);
      std::memcpy(b.data(), e.counts.data(), b.size());
      data.push_back(std::move(b));
    }
  }
  out.begin_data();
  for (const auto& b : data) out.append(b.data(), b.size());
  out.finish();
}

TEST(imatrix, ReadsLlamaImatrixLayout) {
  test::TempDir tmp;
  Entry experts{
      "blk.0.ffn_down_exps.weight", 3, 4, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {2.0f, 0.0f, 3.6f}};
  Entry dense{"blk.0.attn_qkv.weight", 1, 2, {6, 9}, {3.0f}};
  write_imatrix(tmp / "m.gguf", {experts, dense});
  const ImportanceMatrix m = ImportanceMatrix::load(tmp / "m.gguf");
  ASSERT_EQ(m.entries().size(), 2u);
  const ImportanceEntry* e = m.for_tensor("blk.0.ffn_down_exps.weight", {3, 7, 4});
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->mats, 3);
  EXPECT_EQ(e->cols, 4);
  // Expert 0: sums / 2; expert 1 met no activation: all 1; expert 2: count 3.6 rounds to 4.
  EXPECT_EQ(e->values, (std::vector<float>{0.5f, 1, 1.5f, 2, 1, 1, 1, 1, 9 / 4.0f, 10 / 4.0f, 11 / 4.0f, 3}));
  EXPECT_EQ(e->matrix(2)[0], 9 / 4.0f);
  const ImportanceEntry* d = m.for_tensor("blk.0.attn_qkv.weight", {5, 2});
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->values, (std::vector<float>{2, 3}));
  EXPECT_EQ(m.for_tensor("blk.1.attn_qkv.weight", {5, 2}), nullptr);
  test::expect_error(
      [&] {
        m.for_tensor("blk.0.attn_qkv.weight", {5, 4});
      },
      {"blk.0.attn_qkv.weight", "1 matrices of 2 columns", "[5, 4]"}, (tmp / "m.gguf").string());
  test::expect_error(
      [&] {
        m.for_tensor("blk.0.ffn_down_exps.weight", {2, 7, 4});
      },
      {"3 matrices of 4 columns", "[2, 7, 4]"});
}

TEST(imatrix, BadFilesGiveClearErrors) {
  test::TempDir tmp;
  const Entry good{"blk.0.attn_qkv.weight", 1, 2, {6, 9}, {3.0f}};
  auto expect_bad = [&](const std::string& file, std::vector<Entry> entries,
                        std::initializer_list<std::string> needles, const std::string& type = "imatrix") {
    write_imatrix(tmp / file, entries, type);
    test::expect_error([&] { ImportanceMatrix::load(tmp / file); }, needles, (tmp / file).string());
  };
  Entry e = good;
  e.write_counts = false;
  expect_bad("no_counts.gguf", {e}, {"blk.0.attn_qkv.weight.in_sum2", "no 'blk.0.attn_qkv.weight.counts'"});
  e = good;
  e.write_sums = false;
  expect_bad("no_sums.gguf", {e}, {"blk.0.attn_qkv.weight.counts", "no 'blk.0.attn_qkv.weight.in_sum2'"});
  e = good;
  e.sums_type = DType::F16;
  expect_bad("f16.gguf", {e}, {"blk.0.attn_qkv.weight.in_sum2", "F16", "expected F32"});
  e = good;
  e.sums = {6, std::numeric_limits<float>::quiet_NaN()};
  expect_bad("nan.gguf", {e}, {"blk.0.attn_qkv.weight.in_sum2", "nan", "index 1"});
  e = good;
  e.counts = {-1.0f};
  expect_bad("negative.gguf", {e}, {"blk.0.attn_qkv.weight.counts", "-1"});
  e = good;
  e.counts = {1.0f, 2.0f};
  e.counts_len = 2;
  expect_bad("shape.gguf", {e}, {"blk.0.attn_qkv.weight", "counts has 2 values"});
  expect_bad("model.gguf", {good}, {"not an importance matrix", "'model'"}, "model");
  expect_bad("empty.gguf", {}, {"no importance entries"});
  std::ofstream(tmp / "junk.gguf") << "not a gguf file";
  test::expect_error([&] { ImportanceMatrix::load(tmp / "junk.gguf"); }, {}, (tmp / "junk.gguf").string());
}

// The shipped default model (Q8_0 GGUF) with two routed-expert tensors of layer 0 requantized to
// IQ3_XXS, with and without an importance matrix for them: only those tensors differ, and the matrix
// (a different one per expert) lowers their importance-weighted error.
TEST(imatrix, ConvertUsesImportancePerExpert) {
  if (!fs::exists(kDefault)) GTEST_SKIP() << kDefault << " missing";
  test::TempDir tmp;
  const GgufFile model = GgufFile::open(kDefault);
  const std::vector<std::string> names = {"blk.0.ffn_gate_exps.weight", "blk.0.ffn_down_exps.weight"};
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::vector<Entry> entries;
  for (const std::string& name : names) {
    const GgufTensor& t = model.get_tensor(name);
    Entry e{name, int64_t(t.ne[2]), int64_t(t.ne[0]), {}, {}};
    for (int64_t i = 0; i < e.mats * e.cols; ++i) e.sums.push_back(100.0f * std::exp(2.0f * normal(rng)));
    for (int64_t m = 0; m < e.mats; ++m) e.counts.push_back(float(10 + m));
    entries.push_back(std::move(e));
  }
  write_imatrix(tmp / "imatrix.gguf", entries);
  ConvertOptions o{.type = DType::Q8_0,
                   .expert_type = {},
                   .rules = {{"blk\\.0\\.ffn_(gate|down)_exps", DType::IQ3_XXS}},
                   .threads = 2};
  convert_to_gguf(kDefault, tmp / "plain.gguf", o);
  o.imatrix = tmp / "imatrix.gguf";
  convert_to_gguf(kDefault, tmp / "imatrix_out.gguf", o);
  const GgufFile plain = GgufFile::open(tmp / "plain.gguf"),
                 weighted = GgufFile::open(tmp / "imatrix_out.gguf");
  const ImportanceMatrix imatrix = ImportanceMatrix::load(tmp / "imatrix.gguf");
  for (const GgufTensor& t : weighted.tensors()) {
    const GgufTensor& p = plain.get_tensor(t.name());
    ASSERT_EQ(t.view.nbytes, p.view.nbytes);
    const bool same = std::memcmp(t.view.data, p.view.data, t.view.nbytes) == 0;
    if (std::find(names.begin(), names.end(), t.name()) == names.end()) {
      EXPECT_TRUE(same) << t.name();
      continue;
    }
    EXPECT_EQ(t.view.dtype, DType::IQ3_XXS);
    EXPECT_FALSE(same) << t.name();
    // Per expert: the importance-weighted error against the Q8_0 source, with and without.
    const GgufTensor& src = model.get_tensor(t.name());
    const ImportanceEntry* e = imatrix.find(t.name());
    const int64_t cols = int64_t(t.ne[0]), rows = int64_t(t.ne[1]), mats = int64_t(t.ne[2]);
    const uint64_t qb = *dtype_row_bytes(DType::IQ3_XXS, cols), sb = *dtype_row_bytes(src.view.dtype, cols);
    std::vector<float> x(static_cast<size_t>(cols)), a(static_cast<size_t>(cols)),
        b(static_cast<size_t>(cols));
    double with = 0, without = 0;
    for (int64_t r = 0; r < rows * mats; ++r) {
      dequantize_row(src.view.dtype, src.view.data + uint64_t(r) * sb, cols, x.data());
      dequantize_row(DType::IQ3_XXS, t.view.data + uint64_t(r) * qb, cols, a.data());
      dequantize_row(DType::IQ3_XXS, p.view.data + uint64_t(r) * qb, cols, b.data());
      const float* imp = e->matrix(r / rows);
      for (int64_t c = 0; c < cols; ++c) {
        with += double(imp[c]) * std::pow(double(a[size_t(c)] - x[size_t(c)]), 2);
        without += double(imp[c]) * std::pow(double(b[size_t(c)] - x[size_t(c)]), 2);
      }
    }
    std::printf("%s: importance-weighted error %.4g with, %.4g without\n", t.name().c_str(), with, without);
    EXPECT_LT(with, 0.9 * without) << t.name();
  }

  // Errors: IQ3_XXS for a tensor the file has no entry for, an entry whose shape does not fit.
  ConvertOptions all = o;
  all.rules = {{"blk\\.0\\.ffn_.*_exps", DType::IQ3_XXS}};
  test::expect_error([&] { convert_to_gguf(kDefault, tmp / "x.gguf", all); },
                     {"blk.0.ffn_up_exps.weight", "IQ3_XXS", "no entry"});
  entries[0].mats = 1;
  entries[0].sums.resize(size_t(entries[0].cols));
  entries[0].counts.resize(1);
  write_imatrix(tmp / "wrong.gguf", entries);
  o.imatrix = tmp / "wrong.gguf";
  test::expect_error([&] { convert_to_gguf(kDefault, tmp / "x.gguf", o); },
                     {"blk.0.ffn_gate_exps.weight", "1 matrices of 256 columns"},
                     (tmp / "wrong.gguf").string());
  EXPECT_FALSE(fs::exists(tmp / "x.gguf"));
}

}  // namespace
}  // namespace fm
