// MLX-quantized checkpoints (mlx_lm's affine quantization): the fused dequantize-dot kernels against
// the dequantized values, whole models against the same weights dequantized to F32 and against
// mlx_lm's own logits (tests/fixtures/mlx, made by tools/make_mlx_fixtures.py), errors for broken
// checkpoints, and conversion of an MLX checkpoint to GGUF.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "convert/convert.h"
#include "fixture_util.h"
#include "formats/gguf.h"
#include "formats/quant.h"
#include "formats/safetensors.h"
#include "formats/safetensors_writer.h"
#include "model/model.h"
#include "model/qwen_moe.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/kernels.h"
#include "test_util.h"
#include "util/half.h"

namespace fm {
namespace {

namespace fs = std::filesystem;

const std::string kMlxDir = std::string(FM_FIXTURES) + "/mlx";
const std::string kQ4 = kMlxDir + "/qwen3moe-norm-q4g64";
constexpr const char* kMlxFixtures[] = {"qwen3moe-norm-q4g64", "qwen35moe-vl-q2g64", "qwen3moe-f16-q3g32"};

// ---- kernels -----------------------------------------------------------------------------------

// A random MLX matrix: packed levels, scales and biases in one buffer (at an odd offset, as rows of
// a mapped file can be), plus its values from dequantize_mat_row.
struct RandomMlx {
  std::vector<std::byte> bytes;
  Mat mat;
  std::vector<float> values;

  RandomMlx(int bits, int group, DType scale_type, int64_t rows, int64_t cols, uint32_t seed) {
    std::mt19937 rng(seed);
    const DType type = *mlx_dtype(bits);
    const uint64_t row_bytes = *dtype_row_bytes(type, uint64_t(cols));
    const int64_t groups = cols / group;
    const uint64_t param_size = uint64_t(dtype_info(scale_type).block_bytes);
    const uint64_t param_row = uint64_t(groups) * param_size;
    bytes.resize(1 + uint64_t(rows) * (row_bytes + 2 * param_row));
    for (uint64_t i = 0; i < uint64_t(rows) * row_bytes; ++i) bytes[1 + i] = std::byte(rng() & 0xFF);
    std::byte* scales = bytes.data() + 1 + uint64_t(rows) * row_bytes;
    std::byte* biases = scales + uint64_t(rows) * param_row;
    std::uniform_real_distribution<float> scale_dist(0.001f, 0.05f), bias_dist(-0.5f, 0.5f);
    for (int64_t i = 0; i < rows * groups; ++i) {
      const float s = scale_dist(rng), b = bias_dist(rng);
      for (auto [dst, v] : {std::pair{scales, s}, std::pair{biases, b}}) {
        if (scale_type == DType::F32) {
          std::memcpy(dst + uint64_t(i) * 4, &v, 4);
        } else {
          const uint16_t h = scale_type == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
          std::memcpy(dst + uint64_t(i) * 2, &h, 2);
        }
      }
    }
    mat = Mat{type, rows, cols, bytes.data() + 1, row_bytes};
    mat.mlx = MlxGroups{scales, biases, param_row, scale_type, group};
    values.resize(size_t(rows * cols));
    for (int64_t r = 0; r < rows; ++r) dequantize_mat_row(mat, r, values.data() + r * cols);
  }
};

// The byte-level reader (any scale type, any alignment) against the reference reader that
// test_quant checks bit for bit against mlx.core.dequantize.
TEST(MlxKernels, RowReaderMatchesReference) {
  for (int bits : {2, 3, 4, 6, 8}) {
    for (int group : {32, 64, 128}) {
      const RandomMlx m(bits, group, DType::BF16, 3, 256, uint32_t(bits * 100 + group));
      for (int64_t r = 0; r < 3; ++r) {
        std::vector<uint32_t> words(m.mat.row_bytes / 4);
        std::memcpy(words.data(), m.mat.data + r * m.mat.row_bytes, m.mat.row_bytes);
        std::vector<uint16_t> scales(256 / group), biases(256 / group);
        std::memcpy(scales.data(), m.mat.mlx.scales + r * m.mat.mlx.row_bytes, m.mat.mlx.row_bytes);
        std::memcpy(biases.data(), m.mat.mlx.biases + r * m.mat.mlx.row_bytes, m.mat.mlx.row_bytes);
        std::vector<float> want(256);
        dequantize_mlx_row(words.data(), scales.data(), biases.data(), bits, group, 256, want.data());
        for (int c = 0; c < 256; ++c)
          ASSERT_EQ(m.values[size_t(r * 256 + c)], want[size_t(c)]) << bits << " bits, group " << group << " c " << c;
      }
    }
  }
}

// matmul over MLX weights against a double sum over the dequantized values, for every bit width,
// group size and scale type, tiles of 1-4 tokens and more, scalar and AVX2, and a row slice.
TEST(MlxKernels, MatmulMatchesDequantized) {
  ThreadPool pool(2);
  test::for_each_isa([&] {
    for (int bits : {2, 3, 4, 6, 8})
      for (int group : {32, 64, 128})
        for (DType st : {DType::BF16, DType::F16, DType::F32}) {
          const RandomMlx m(bits, group, st, 37, 384, uint32_t(bits * 1000 + group + int(st)));
          for (int n : {1, 2, 3, 4, 9}) test::check_matmul(m.mat, m.values, n, pool, 1e-5);
          const Mat part = m.mat.slice_rows(5, 20);
          test::check_matmul(part, std::vector<float>(m.values.begin() + 5 * 384, m.values.begin() + 25 * 384), 3,
                             pool, 1e-5);
        }
  });
}

TEST(MlxKernels, EmbedReadsMlxRows) {
  const RandomMlx m(4, 64, DType::BF16, 16, 128, 7);
  CpuBackend backend(1);
  const std::vector<int32_t> ids = {3, 0, 15, 3};
  std::vector<float> out(ids.size() * 128);
  backend.embed(m.mat, ids.data(), int(ids.size()), out.data());
  for (size_t t = 0; t < ids.size(); ++t)
    for (int c = 0; c < 128; ++c) ASSERT_EQ(out[t * 128 + size_t(c)], m.values[size_t(ids[t] * 128 + c)]);
}

// ---- whole models --------------------------------------------------------------------------------

// Prompt logits [n][vocab] of a model.
std::vector<float> prompt_logits(const Model& model, const std::vector<int32_t>& prompt, int threads = 2) {
  CpuBackend backend(threads);
  TransformerOptions options;
  options.max_context = 256;
  options.max_batch = 64;
  Transformer transformer(model, backend, options);
  SequenceState state = transformer.new_sequence();
  const int64_t V = model.config.vocab_size;
  std::vector<float> logits(prompt.size() * size_t(V));
  transformer.forward(state, prompt, logits.data(), true);
  return logits;
}

std::vector<int32_t> fixture_prompt(const std::string& name) {
  std::ifstream f(kMlxDir + "/" + name + "/ref.json");
  return nlohmann::json::parse(f).at("prompt_ids").get<std::vector<int32_t>>();
}

// A copy of a checkpoint folder's config.json and tensors, each tensor passed through `edit`
// (which may rename, reshape, retype or drop it: return false to drop), written as one file.
struct TensorCopy {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
};
void copy_checkpoint(const fs::path& from, const fs::path& to, const std::function<bool(TensorCopy&)>& edit,
                     const std::function<void(nlohmann::json&)>& edit_config = {}) {
  fs::create_directories(to);
  std::ifstream in(from / "config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  if (edit_config) edit_config(config);
  std::ofstream(to / "config.json") << config.dump(2);
  const SafetensorsArchive archive = SafetensorsArchive::open_dir(from);
  std::vector<TensorCopy> out;
  for (const auto& [name, t] : archive.tensors()) {
    TensorCopy c{name, t.dtype, t.shape, std::vector<std::byte>(t.data, t.data + t.nbytes)};
    if (edit(c)) out.push_back(std::move(c));
  }
  SafetensorsWriter w(to / "model.safetensors");
  for (const TensorCopy& c : out) w.declare(c.name, c.dtype, c.shape);
  w.begin_data();
  for (const TensorCopy& c : out) w.append(c.data.data(), c.data.size());
  w.finish();
}

// The MLX checkpoint with every quantized matrix dequantized to F32 (and its scales and biases
// dropped): the same weights, in a form flashmoe reads through its float kernels.
void write_dequantized(const fs::path& from, const fs::path& to) {
  const auto model = Model::load(from);
  const SafetensorsArchive archive = SafetensorsArchive::open_dir(from);
  const MlxQuantization& q = model->config.mlx_quant;
  copy_checkpoint(from, to, [&](TensorCopy& t) {
    if (t.name.ends_with(".scales") || t.name.ends_with(".biases")) return false;
    if (!t.name.ends_with(".weight")) return true;
    const std::string module = t.name.substr(0, t.name.size() - 7);
    const TensorView* scales = archive.find(module + ".scales");
    if (!scales) return true;
    const TensorView& biases = archive.get(module + ".biases");
    const auto p = q.params_for(module);
    const int64_t cols = t.shape.back() * 32 / p->bits;
    const int64_t rows = t.data.size() / (uint64_t(cols) * p->bits / 8);
    const uint64_t param_row = uint64_t(cols / p->group_size) * dtype_info(scales->dtype).block_bytes;
    std::vector<std::byte> f32(uint64_t(rows * cols) * 4);
    for (int64_t r = 0; r < rows; ++r)
      dequantize_mlx_row(t.data.data() + uint64_t(r * cols * p->bits / 8), scales->data + r * param_row,
                         biases.data + r * param_row, scales->dtype, p->bits, p->group_size, cols,
                         reinterpret_cast<float*>(f32.data()) + r * cols);
    t.dtype = DType::F32;
    t.shape.back() = cols;
    t.data = std::move(f32);
    return true;
  });
}

// The MLX-loaded model against the same weights dequantized to F32: the weights are the same float32
// values bit for bit, only the order of the sums differs.
TEST(MlxModel, MatchesDequantizedF32) {
  for (const char* name : kMlxFixtures) {
    const std::string dir = kMlxDir + "/" + name;
    test::TempDir tmp;
    write_dequantized(dir, tmp / "f32");
    const auto mlx = Model::load(dir);
    const auto f32 = Model::load(tmp / "f32");
    const std::vector<int32_t> prompt = fixture_prompt(name);
    const std::vector<float> a = prompt_logits(*mlx, prompt), b = prompt_logits(*f32, prompt);
    const double diff = test::max_abs_diff(a.data(), b.data(), a.size());
    EXPECT_LE(diff, 1e-4) << name;
    std::printf("%s: MLX-loaded vs dequantized F32 max |diff| %.2e\n", name, diff);
    // The quantized matrices stay packed: fewer bytes than the float copy.
    EXPECT_LT(mlx->weights.dense_bytes + mlx->weights.expert_bytes, f32->weights.dense_bytes + f32->weights.expert_bytes);
  }
}

// Against mlx_lm's forward pass on the same checkpoint (float32), where mlx_lm agrees with
// transformers on the unquantized weights (ref.json says; logits.npy is present only then).
// Tolerance as for the transformers fixtures: 1e-3 (float32 sums in another order).
TEST(MlxModel, MatchesMlxLm) {
  int checked = 0;
  for (const char* name : kMlxFixtures) {
    const std::string dir = kMlxDir + "/" + name;
    if (!fs::exists(dir + "/logits.npy")) continue;
    const NpyArray want = read_npy(dir + "/logits.npy");
    const auto model = Model::load(dir);
    const std::vector<int32_t> prompt = fixture_prompt(name);
    ASSERT_EQ(want.shape, (std::vector<int64_t>{int64_t(prompt.size()), model->config.vocab_size}));
    for (bool scalar : {false, true}) {
      cpu::set_force_scalar(scalar);
      const std::vector<float> got = prompt_logits(*model, prompt, scalar ? 1 : 2);
      cpu::set_force_scalar(false);
      const double diff = test::max_abs_diff(got.data(), want.data.data(), got.size());
      EXPECT_LE(diff, 1e-3) << name << (scalar ? " scalar" : "");
      std::printf("%s%s: vs mlx_lm max |diff| %.2e\n", name, scalar ? " (scalar)" : "", diff);
    }
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

// mlx_lm folds Qwen3.5's zero-centred norms into their weights (1 + w, rounded to bf16) and stores
// the conv taps [C][K][1]: the loaded norms are the transformers checkpoint's 1 + w, to bf16 rounding.
TEST(MlxModel, Qwen35NormsAreFoldedOnce) {
  const auto mlx = Model::load(kMlxDir + "/qwen35moe-vl-q2g64");
  const auto hf = Model::load(std::string(FM_FIXTURES) + "/qwen35moe-vl-bf16");
  auto check = [](const std::vector<float>& a, const std::vector<float>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], std::fabs(b[i]) * 0x1p-8 + 1e-6);
  };
  check(mlx->weights.final_norm, hf->weights.final_norm);
  for (size_t l = 0; l < hf->weights.layers.size(); ++l) {
    check(mlx->weights.layers[l].input_norm, hf->weights.layers[l].input_norm);
    check(mlx->weights.layers[l].post_norm, hf->weights.layers[l].post_norm);
    check(mlx->weights.layers[l].linear.conv, hf->weights.layers[l].linear.conv);
  }
}

TEST(MlxModel, BindsMlxTypes) {
  const auto m = Model::load(kMlxDir + "/qwen3moe-norm-q4g64");
  const LayerWeights& L = m->weights.layers[0];
  EXPECT_EQ(m->weights.embed.dtype, DType::MLX4);
  EXPECT_EQ(m->weights.embed.mlx.group, 64);
  EXPECT_EQ(L.moe.router.dtype, DType::MLX8);        // mlx_lm's 8-bit router
  EXPECT_EQ(L.moe.experts[3].gate.dtype, DType::MLX4);  // switch_mlp, sliced per expert
  EXPECT_EQ(L.moe.experts[3].down.dtype, DType::BF16);  // 32 columns: not a whole group of 64
  const auto m3 = Model::load(kMlxDir + "/qwen3moe-f16-q3g32");
  EXPECT_EQ(m3->weights.layers[0].moe.router.dtype, DType::MLX6);
  EXPECT_EQ(m3->weights.layers[0].moe.experts[5].down.dtype, DType::MLX3);  // per-expert tensors
  EXPECT_EQ(m3->weights.layers[0].moe.experts[5].down.mlx.dtype, DType::F16);
}

// ---- conversion to GGUF ---------------------------------------------------------------------------

// Mean over positions of KL(p || q), p and q the softmax of two [n][V] logit arrays.
double mean_kl(const std::vector<float>& p_logits, const std::vector<float>& q_logits, int64_t V) {
  const int64_t n = int64_t(p_logits.size()) / V;
  double total = 0;
  for (int64_t t = 0; t < n; ++t) {
    auto log_softmax = [&](const float* x) {
      double m = x[0];
      for (int64_t i = 1; i < V; ++i) m = std::max(m, double(x[i]));
      double z = 0;
      for (int64_t i = 0; i < V; ++i) z += std::exp(double(x[i]) - m);
      std::vector<double> out(static_cast<size_t>(V));
      for (int64_t i = 0; i < V; ++i) out[size_t(i)] = double(x[i]) - m - std::log(z);
      return out;
    };
    const std::vector<double> lp = log_softmax(p_logits.data() + t * V), lq = log_softmax(q_logits.data() + t * V);
    for (int64_t i = 0; i < V; ++i) total += std::exp(lp[size_t(i)]) * (lp[size_t(i)] - lq[size_t(i)]);
  }
  return total / double(n);
}

void expect_same_rows(const Mat& a, const Mat& b, const char* what) {
  ASSERT_EQ(a.rows, b.rows) << what;
  ASSERT_EQ(a.cols, b.cols) << what;
  std::vector<float> ra(static_cast<size_t>(a.cols)), rb(static_cast<size_t>(b.cols));
  for (int64_t r = 0; r < a.rows; ++r) {
    dequantize_mat_row(a, r, ra.data());
    dequantize_mat_row(b, r, rb.data());
    ASSERT_EQ(ra, rb) << what << " row " << r;
  }
}

// MLX 4-bit -> Q4_1 keeps every value (the scales and biases of the fixture are f16-exact): the
// converted matrices dequantize to the MLX ones bit for bit. The one tensor kind the fixture keeps
// unquantized (bf16 expert down projections, 32 columns) goes to F32 by a rule, the 8-bit router to
// F32 as always, so the GGUF holds the very same weights. (Its logits are not compared here: the
// Q4_1 matmul quantizes the activations to 8 bits, as llama.cpp does, which MLX does not.)
TEST(MlxConvert, Q4_1RepacksExactly) {
  test::TempDir tmp;
  ConvertOptions options;
  options.type = DType::Q4_1;
  options.threads = 2;
  options.rules = {parse_tensor_type_rule("ffn_down_exps=F32")};
  convert_to_gguf(kQ4, tmp / "q4_1.gguf", options);
  const auto mlx = Model::load(kQ4);
  const auto gguf = Model::load(tmp / "q4_1.gguf");
  EXPECT_EQ(gguf->weights.embed.dtype, DType::Q4_1);
  expect_same_rows(mlx->weights.embed, gguf->weights.embed, "token_embd");
  expect_same_rows(mlx->weights.lm_head, gguf->weights.lm_head, "output");
  EXPECT_EQ(mlx->weights.final_norm, gguf->weights.final_norm);
  for (size_t l = 0; l < mlx->weights.layers.size(); ++l) {
    const LayerWeights& a = mlx->weights.layers[l];
    const LayerWeights& b = gguf->weights.layers[l];
    expect_same_rows(a.attn.q, b.attn.q, "attn_q");
    expect_same_rows(a.attn.o, b.attn.o, "attn_output");
    expect_same_rows(a.attn.k, b.attn.k, "attn_k");
    expect_same_rows(a.attn.v, b.attn.v, "attn_v");
    EXPECT_EQ(a.input_norm, b.input_norm);
    EXPECT_EQ(a.post_norm, b.post_norm);
    EXPECT_EQ(a.attn.q_norm, b.attn.q_norm);
    EXPECT_EQ(a.attn.k_norm, b.attn.k_norm);
    expect_same_rows(a.moe.router, b.moe.router, "ffn_gate_inp (MLX 8-bit -> F32)");
    for (size_t e = 0; e < a.moe.experts.size(); ++e) {
      expect_same_rows(a.moe.experts[e].gate, b.moe.experts[e].gate, "ffn_gate_exps");
      expect_same_rows(a.moe.experts[e].up, b.moe.experts[e].up, "ffn_up_exps");
      expect_same_rows(a.moe.experts[e].down, b.moe.experts[e].down, "ffn_down_exps (bf16 -> F32)");
    }
  }
}

// MLX -> F32 GGUF: the same weights under llama.cpp's names and layout (Qwen3.5's V heads reordered,
// experts stacked): the logits agree to float rounding.
TEST(MlxConvert, F32KeepsLogits) {
  for (const char* name : kMlxFixtures) {
    test::TempDir tmp;
    ConvertOptions options;
    options.type = DType::F32;
    options.threads = 2;
    const std::string dir = kMlxDir + "/" + name;
    convert_to_gguf(dir, tmp / "f32.gguf", options);
    const auto mlx = Model::load(dir);
    const auto gguf = Model::load(tmp / "f32.gguf");
    const std::vector<int32_t> prompt = fixture_prompt(name);
    const std::vector<float> a = prompt_logits(*mlx, prompt), b = prompt_logits(*gguf, prompt);
    const double diff = test::max_abs_diff(a.data(), b.data(), a.size());
    std::printf("%s -> F32: max |logit diff| vs MLX-loaded %.2e\n", name, diff);
    EXPECT_LE(diff, 1e-4) << name;
  }
}

// MLX -> Q8_0 (dequantize, requantize): close to the MLX-loaded model. The fixtures' random weights
// make them far more sensitive than trained models (their 4-bit quantization alone moves transformers'
// distribution by KL 0.28, ref.json), so the bounds are per fixture, about twice the measured KL
// (5.6e-3, 7.7e-2 for the 2-bit one, 2.1e-3).
TEST(MlxConvert, Q8_0WithinKl) {
  const std::map<std::string, double> bound = {
      {"qwen3moe-norm-q4g64", 1.2e-2}, {"qwen35moe-vl-q2g64", 0.15}, {"qwen3moe-f16-q3g32", 5e-3}};
  for (const char* name : kMlxFixtures) {
    test::TempDir tmp;
    ConvertOptions options;
    options.type = DType::Q8_0;
    options.threads = 2;
    const std::string dir = kMlxDir + "/" + name;
    convert_to_gguf(dir, tmp / "q8.gguf", options);
    const auto mlx = Model::load(dir);
    const auto gguf = Model::load(tmp / "q8.gguf");
    const std::vector<int32_t> prompt = fixture_prompt(name);
    const double kl = mean_kl(prompt_logits(*mlx, prompt), prompt_logits(*gguf, prompt), mlx->config.vocab_size);
    std::printf("%s -> Q8_0: mean KL vs MLX-loaded %.2e\n", name, kl);
    EXPECT_LT(kl, bound.at(name)) << name;
  }
}

// ---- broken checkpoints ---------------------------------------------------------------------------

TEST(MlxErrors, ScalesShapeMismatch) {
  test::TempDir tmp;
  const std::string bad = "model.layers.1.self_attn.k_proj.scales";
  copy_checkpoint(kQ4, tmp / "m", [&](TensorCopy& t) {
    if (t.name == bad) {  // [32][1] -> [16][2]
      t.shape = {16, 2};
    }
    return true;
  });
  test::expect_error([&] { Model::load(tmp / "m"); }, {"model.safetensors", bad, "[16, 2]", "[32, 1]"});
}

TEST(MlxErrors, MissingBiases) {
  test::TempDir tmp;
  copy_checkpoint(kQ4, tmp / "m", [](TensorCopy& t) { return t.name != "model.layers.2.mlp.switch_mlp.up_proj.biases"; });
  test::expect_error([&] { Model::load(tmp / "m"); },
                     {"model.safetensors", "model.layers.2.mlp.switch_mlp.up_proj.biases", "not found"});
}

TEST(MlxErrors, UnsupportedBits) {
  test::TempDir tmp;
  copy_checkpoint(kQ4, tmp / "m", [](TensorCopy&) { return true; },
                  [](nlohmann::json& c) { c["quantization"]["bits"] = 5; });
  test::expect_error([&] { Model::load(tmp / "m"); }, {"config.json", "quantization.bits", "5 bits"});
  copy_checkpoint(kQ4, tmp / "m2", [](TensorCopy&) { return true; }, [](nlohmann::json& c) {
    c["quantization"]["model.layers.0.mlp.gate"]["bits"] = 7;
  });
  test::expect_error([&] { Model::load(tmp / "m2"); }, {"config.json", "quantization.model.layers.0.mlp.gate.bits"});
}

TEST(MlxErrors, BitsDisagreeWithTensor) {
  test::TempDir tmp;
  // The router is stored at 8 bits; without its override the config says 4.
  copy_checkpoint(kQ4, tmp / "m", [](TensorCopy&) { return true; },
                  [](nlohmann::json& c) { c["quantization"].erase("model.layers.0.mlp.gate"); });
  test::expect_error([&] { Model::load(tmp / "m"); },
                     {"model.safetensors", "model.layers.0.mlp.gate.weight", "[8, 16]", "[8, 8]", "4 bits"});
}

TEST(MlxErrors, ScalesWithoutQuantizationEntry) {
  test::TempDir tmp;
  copy_checkpoint(kQ4, tmp / "m", [](TensorCopy&) { return true; }, [](nlohmann::json& c) {
    c.erase("quantization");
    c.erase("quantization_config");
  });
  test::expect_error([&] { Model::load(tmp / "m"); }, {"model.safetensors", ".scales", "no 'quantization' entry"});
}

TEST(MlxErrors, OtherQuantMethod) {
  test::TempDir tmp;
  copy_checkpoint(kQ4, tmp / "m", [](TensorCopy&) { return true; }, [](nlohmann::json& c) {
    c.erase("quantization");
    c["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  });
  test::expect_error([&] { Model::load(tmp / "m"); }, {"config.json", "quant_method", "gptq"});
}

}  // namespace
}  // namespace fm
