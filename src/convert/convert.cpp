#include "convert/convert.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>

#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "formats/imatrix.h"
#include "formats/quant.h"
#include "model/gguf_model.h"
#include "model/model.h"
#include "tokenizer/tokenizer_gguf.h"
#include "util/error.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace fm {

namespace {

// One output tensor: its GGUF name, shape (PyTorch order) and a way to produce row r as float32.
// Tensors of rank 1 are one row.
// Writes row r as `type` without requantizing and returns true, or returns false where that type
// cannot hold the row exactly (the row then takes the float path).
using ExactRow = std::function<bool(int64_t row, DType type, std::byte* out)>;

struct Plan {
  std::string name;
  std::vector<int64_t> shape;
  std::function<void(int64_t row, float* out)> row;
  const TensorView* source = nullptr;  // GGUF input: copied as it is when the type stays
  ExactRow exact = {};                 // MLX input: a repacking that keeps every value
};

// Tensors kept in F32 whatever the requested type, as llama.cpp's converters keep them: vectors
// (norms, biases), conv taps, the router, and the DeltaNet gates, which are small and sensitive.
bool keeps_f32(const std::string& name, size_t rank) {
  if (rank == 1) return true;
  for (const char* suffix : {"ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "ssm_conv1d.weight",
                             "ssm_alpha.weight", "ssm_beta.weight"})
    if (name.size() >= std::strlen(suffix) && name.compare(name.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
      return true;
  return false;
}

bool is_expert_tensor(const std::string& name) { return name.find("_exps.") != std::string::npos; }

int64_t rows_of(const Plan& p) {
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < p.shape.size(); ++i) rows *= p.shape[i];
  return rows;
}

void read_mat_row(const Mat& m, int64_t r, float* out) { dequantize_mat_row(m, r, out); }

// MLX 4-bit rows as Q4_1 blocks, exactly: both compute level * scale + bias in float32 (the product
// is exact, then one rounding), so a Q4_1 block of 32 values within one MLX group holds the same
// values when the group's scale and bias survive the trip to f16 (bf16 values of normal f16 range
// do). No other pair maps in general: MLX 8-bit and Q8_0 agree only where bias = -128 * scale, MLX
// 2/3/6-bit groups have no GGUF type with a free float offset per group, and K-quants quantize
// their scales. Returns false, having written part of the row perhaps, when a scale or bias is not
// f16-exact.
bool mlx4_row_as_q4_1(const Mat& m, int64_t r, std::byte* out) {
  constexpr int kBlockBytes = 20;  // ggml block_q4_1: f16 d, f16 m, 16 bytes of nibbles
  const std::byte* row = m.data + uint64_t(r) * m.row_bytes;
  const std::byte* scales = m.mlx.scales + uint64_t(r) * m.mlx.row_bytes;
  const std::byte* biases = m.mlx.biases + uint64_t(r) * m.mlx.row_bytes;
  for (int64_t b = 0; b < m.cols / 32; ++b) {
    const int64_t g = b * 32 / m.mlx.group;
    const float scale = mlx_group_param(scales, m.mlx.dtype, g), bias = mlx_group_param(biases, m.mlx.dtype, g);
    const uint16_t d = f32_to_f16(scale), min = f32_to_f16(bias);
    if (f16_to_f32(d) != scale || f16_to_f32(min) != bias) return false;
    std::byte* block = out + b * kBlockBytes;
    std::memcpy(block, &d, 2);
    std::memcpy(block + 2, &min, 2);
    // MLX: value j of the block is nibble j of its 16 bytes (low nibble first); Q4_1: byte j holds
    // value j (low) and value j + 16 (high).
    const auto* src = reinterpret_cast<const uint8_t*>(row + b * 16);
    for (int j = 0; j < 16; ++j) {
      const uint8_t lo = (src[j / 2] >> (4 * (j % 2))) & 0xF, hi = (src[(j + 16) / 2] >> (4 * (j % 2))) & 0xF;
      block[4 + j] = std::byte(lo | hi << 4);
    }
  }
  return true;
}

// The exact repacking of rows of m (row r of the output is row map(r) of m), where there is one.
ExactRow exact_rows(const Mat& m, std::function<int64_t(int64_t)> map = {}) {
  if (m.dtype != DType::MLX4) return {};
  return [m, map](int64_t r, DType type, std::byte* out) {
    return type == DType::Q4_1 && mlx4_row_as_q4_1(m, map ? map(r) : r, out);
  };
}

Plan mat_plan(std::string name, const Mat& m) {
  return Plan{std::move(name), {m.rows, m.cols}, [m](int64_t r, float* out) { read_mat_row(m, r, out); }, nullptr,
              exact_rows(m)};
}

Plan vec_plan(std::string name, std::vector<float> v, std::vector<int64_t> shape = {}) {
  if (shape.empty()) shape = {int64_t(v.size())};
  const int64_t cols = shape.back();
  auto data = std::make_shared<std::vector<float>>(std::move(v));
  return Plan{std::move(name), std::move(shape),
              [data, cols](int64_t r, float* out) { std::copy_n(data->data() + r * cols, cols, out); }};
}

// Experts e = 0..E-1 of one role stacked into [E][rows][cols].
Plan stacked_plan(std::string name, const std::vector<FfnWeights>& experts, Mat FfnWeights::*role) {
  const Mat& first = experts[0].*role;
  const int64_t rows = first.rows;
  std::vector<Mat> mats;
  for (const FfnWeights& e : experts) mats.push_back(e.*role);
  ExactRow exact;
  if (first.dtype == DType::MLX4)
    exact = [mats, rows](int64_t r, DType type, std::byte* out) {
      return type == DType::Q4_1 && mats[size_t(r / rows)].dtype == DType::MLX4 &&
             mlx4_row_as_q4_1(mats[size_t(r / rows)], r % rows, out);
    };
  return Plan{std::move(name), {int64_t(experts.size()), rows, first.cols},
              [mats, rows](int64_t r, float* out) { read_mat_row(mats[size_t(r / rows)], r % rows, out); }, nullptr,
              std::move(exact)};
}

// llama.cpp's qwen35moe stores the V heads of the linear-attention layers tiled ([G0v0, G1v0, ...])
// rather than grouped by K head ([G0v0, G0v1, ...]) as transformers does: new V head n holds
// old head (n % nk) * r + n / nk, with r = nv / nk V heads per K head.
struct VHeadOrder {
  int64_t nk, nv, dv;
  int64_t old_head(int64_t n) const { return (n % nk) * (nv / nk) + n / nk; }
  // Row of a [nv * dv][...] block (z, the V part of qkv).
  int64_t old_row(int64_t row) const { return old_head(row / dv) * dv + row % dv; }
};

std::vector<float> reorder_heads(const std::vector<float>& per_head, const VHeadOrder& o) {
  std::vector<float> out(per_head.size());
  for (int64_t n = 0; n < o.nv; ++n) out[size_t(n)] = per_head[size_t(o.old_head(n))];
  return out;
}

// The plans of a Hugging Face model: llama.cpp's names and conventions. The bound weights already
// hold GGUF's conventions for the small vectors (norms with their +1, -exp(A_log)); what remains is
// naming, stacking the experts and the V-head order.
std::vector<Plan> plan_from_model(const Model& model) {
  const ModelConfig& c = model.config;
  if (c.arch == Arch::Qwen35Moe && c.linear_k_head_dim != c.linear_v_head_dim)
    std::fprintf(stderr,
                 "convert: warning: linear-attention key and value head dims differ (%d, %d); llama.cpp "
                 "assumes they are equal and will not load this file (flashmoe will)\n",
                 c.linear_k_head_dim, c.linear_v_head_dim);
  if (c.arch == Arch::Qwen3Moe && !c.norm_topk_prob)
    std::fprintf(stderr, "convert: warning: norm_topk_prob is false; llama.cpp's qwen3moe always renormalises the "
                         "top-k weights and will compute other logits (flashmoe reads expert_weights_norm)\n");
  if (c.arch == Arch::Qwen3Moe && std::count(c.layer_is_moe.begin(), c.layer_is_moe.end(), false) > 0)
    std::fprintf(stderr, "convert: warning: dense (mlp_only) layers; llama.cpp's qwen3moe expects experts in every "
                         "layer and will not load this file (flashmoe will)\n");
  const ModelWeights& w = model.weights;
  std::vector<Plan> plans;
  plans.push_back(mat_plan("token_embd.weight", w.embed));
  plans.push_back(vec_plan("output_norm.weight", w.final_norm));
  if (w.lm_head.data != w.embed.data) plans.push_back(mat_plan("output.weight", w.lm_head));

  const VHeadOrder order{c.linear_num_k_heads, c.linear_num_v_heads, c.linear_v_head_dim};
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerWeights& L = w.layers[size_t(i)];
    auto n = [i](const char* suffix) { return fmt::format("blk.{}.{}", i, suffix); };
    plans.push_back(vec_plan(n("attn_norm.weight"), L.input_norm));
    // llama.cpp's qwen3moe calls the pre-FFN norm ffn_norm; qwen35moe calls it post_attention_norm.
    plans.push_back(vec_plan(n(c.arch == Arch::Qwen3Moe ? "ffn_norm.weight" : "post_attention_norm.weight"),
                             L.post_norm));
    if (L.kind == LayerKind::FullAttention) {
      plans.push_back(mat_plan(n("attn_q.weight"), L.attn.q));
      plans.push_back(mat_plan(n("attn_k.weight"), L.attn.k));
      plans.push_back(mat_plan(n("attn_v.weight"), L.attn.v));
      plans.push_back(mat_plan(n("attn_output.weight"), L.attn.o));
      plans.push_back(vec_plan(n("attn_q_norm.weight"), L.attn.q_norm));
      plans.push_back(vec_plan(n("attn_k_norm.weight"), L.attn.k_norm));
    } else {
      const DeltaNetWeights& d = L.linear;
      const int64_t qk_rows = 2 * int64_t(c.linear_num_k_heads) * c.linear_k_head_dim;
      auto qkv_row = [qk_rows, order](int64_t r) { return r < qk_rows ? r : qk_rows + order.old_row(r - qk_rows); };
      Plan qkv = mat_plan(n("attn_qkv.weight"), d.qkv);
      qkv.row = [m = d.qkv, qkv_row](int64_t r, float* out) { read_mat_row(m, qkv_row(r), out); };
      qkv.exact = exact_rows(d.qkv, qkv_row);
      plans.push_back(std::move(qkv));
      Plan z = mat_plan(n("attn_gate.weight"), d.z);
      z.row = [m = d.z, order](int64_t r, float* out) { read_mat_row(m, order.old_row(r), out); };
      z.exact = exact_rows(d.z, [order](int64_t r) { return order.old_row(r); });
      plans.push_back(std::move(z));
      for (auto [name, mat] : {std::pair{"ssm_beta.weight", &d.b}, std::pair{"ssm_alpha.weight", &d.a}}) {
        Plan p = mat_plan(n(name), *mat);
        p.row = [m = *mat, order](int64_t r, float* out) { read_mat_row(m, order.old_head(r), out); };
        p.exact = exact_rows(*mat, [order](int64_t r) { return order.old_head(r); });
        plans.push_back(std::move(p));
      }
      const int64_t K = c.linear_conv_kernel, C = c.linear_conv_dim();
      std::vector<float> conv(d.conv.size());
      for (int64_t ch = 0; ch < C; ++ch)
        std::copy_n(d.conv.data() + qkv_row(ch) * K, K, conv.data() + ch * K);
      plans.push_back(vec_plan(n("ssm_conv1d.weight"), std::move(conv), {C, K}));
      plans.push_back(vec_plan(n("ssm_dt.bias"), reorder_heads(d.dt_bias, order)));
      plans.push_back(vec_plan(n("ssm_a"), reorder_heads(d.decay_scale, order)));
      plans.push_back(vec_plan(n("ssm_norm.weight"), d.norm));
      Plan out = mat_plan(n("ssm_out.weight"), d.out);
      out.exact = {};  // columns reordered: MLX groups do not survive
      out.row = [m = d.out, order](int64_t r, float* dst) {
        std::vector<float> src(static_cast<size_t>(m.cols));
        read_mat_row(m, r, src.data());
        for (int64_t col = 0; col < m.cols; ++col) dst[col] = src[size_t(order.old_row(col))];
      };
      plans.push_back(std::move(out));
    }
    if (L.is_moe) {
      plans.push_back(mat_plan(n("ffn_gate_inp.weight"), L.moe.router));
      plans.push_back(stacked_plan(n("ffn_gate_exps.weight"), L.moe.experts, &FfnWeights::gate));
      plans.push_back(stacked_plan(n("ffn_up_exps.weight"), L.moe.experts, &FfnWeights::up));
      plans.push_back(stacked_plan(n("ffn_down_exps.weight"), L.moe.experts, &FfnWeights::down));
      if (L.moe.has_shared) {
        plans.push_back(mat_plan(n("ffn_gate_shexp.weight"), L.moe.shared.gate));
        plans.push_back(mat_plan(n("ffn_up_shexp.weight"), L.moe.shared.up));
        plans.push_back(mat_plan(n("ffn_down_shexp.weight"), L.moe.shared.down));
        Plan g = mat_plan(n("ffn_gate_inp_shexp.weight"), L.moe.shared_gate);
        g.shape = {c.hidden_size};
        plans.push_back(std::move(g));
      }
    } else {
      plans.push_back(mat_plan(n("ffn_gate.weight"), L.mlp.gate));
      plans.push_back(mat_plan(n("ffn_up.weight"), L.mlp.up));
      plans.push_back(mat_plan(n("ffn_down.weight"), L.mlp.down));
    }
  }
  return plans;
}

// A GGUF input: every tensor as it is, to be copied or requantized.
std::vector<Plan> plan_from_gguf(const GgufFile& file) {
  std::vector<Plan> plans;
  for (const GgufTensor& t : file.tensors()) {
    const TensorView* v = &t.view;
    const int64_t cols = int64_t(t.ne[0]);
    if (!can_dequantize(v->dtype))
      fail("{}: tensor '{}' has type {}, which flashmoe cannot read", file.path(), v->name, dtype_name(v->dtype));
    const uint64_t row_bytes = *dtype_row_bytes(v->dtype, uint64_t(cols));
    plans.push_back(Plan{v->name, v->shape,
                         [v, cols, row_bytes](int64_t r, float* out) {
                           dequantize_row(v->dtype, v->data + uint64_t(r) * row_bytes, cols, out);
                         },
                         v});
  }
  return plans;
}

// llama.cpp's general.file_type (enum llama_ftype) for the main type.
uint32_t file_type_of(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q4_1: return 3;
    case DType::Q8_0: return 7;
    case DType::Q5_0: return 8;
    case DType::Q5_1: return 9;
    case DType::Q2_K: return 10;
    case DType::Q3_K: return 12;
    case DType::Q4_K: return 15;
    case DType::Q5_K: return 17;
    case DType::Q6_K: return 18;
    case DType::IQ2_XXS: return 19;
    case DType::IQ2_XS: return 20;
    case DType::IQ3_XXS: return 23;
    case DType::IQ4_NL: return 25;
    case DType::IQ3_S: return 26;
    case DType::IQ2_S: return 28;
    case DType::IQ4_XS: return 30;
    case DType::BF16: return 32;
    case DType::MXFP4: return 38;
    default: return 0;
  }
}

void write_metadata(GgufWriter& out, const ModelConfig& c, DType main_type, const std::string& source) {
  const std::string arch = c.arch == Arch::Qwen35Moe ? "qwen35moe" : "qwen3moe";
  auto k = [&](const char* key) { return arch + "." + key; };
  out.set_string("general.architecture", arch);
  out.set_string("general.name", std::filesystem::path(source).filename().string());
  out.set_u32("general.file_type", file_type_of(main_type));
  out.set_u32("general.quantization_version", 2);
  out.set_u32(k("block_count"), uint32_t(c.num_layers));
  out.set_u32(k("context_length"), uint32_t(c.max_position_embeddings));
  out.set_u32(k("embedding_length"), uint32_t(c.hidden_size));
  out.set_u32(k("attention.head_count"), uint32_t(c.num_heads));
  out.set_u32(k("attention.head_count_kv"), uint32_t(c.num_kv_heads));
  out.set_u32(k("attention.key_length"), uint32_t(c.head_dim));
  out.set_u32(k("attention.value_length"), uint32_t(c.head_dim));
  out.set_f32(k("attention.layer_norm_rms_epsilon"), c.rms_norm_eps);
  out.set_f32(k("rope.freq_base"), c.rope_theta);
  out.set_u32(k("rope.dimension_count"), uint32_t(c.rotary_dim));
  out.set_u32(k("expert_count"), uint32_t(c.num_experts));
  out.set_u32(k("expert_used_count"), uint32_t(c.num_experts_per_tok));
  out.set_u32(k("expert_feed_forward_length"), uint32_t(c.moe_intermediate_size));
  if (c.intermediate_size > 0) out.set_u32(k("feed_forward_length"), uint32_t(c.intermediate_size));
  out.set_bool(k("expert_weights_norm"), c.norm_topk_prob);
  if (c.arch == Arch::Qwen35Moe) {
    out.set_u32(k("expert_shared_feed_forward_length"), uint32_t(c.shared_expert_intermediate_size));
    std::vector<int32_t> sections(4, 0);
    for (size_t i = 0; i < std::min<size_t>(3, c.mrope_section.size()); ++i) sections[i] = c.mrope_section[i];
    if (c.mrope_section.empty()) sections[0] = c.rotary_dim / 2;
    out.set_array(k("rope.dimension_sections"), sections);
    out.set_u32(k("ssm.conv_kernel"), uint32_t(c.linear_conv_kernel));
    out.set_u32(k("ssm.state_size"), uint32_t(c.linear_k_head_dim));
    out.set_u32(k("ssm.group_count"), uint32_t(c.linear_num_k_heads));
    out.set_u32(k("ssm.time_step_rank"), uint32_t(c.linear_num_v_heads));
    out.set_u32(k("ssm.inner_size"), uint32_t(c.linear_num_v_heads * c.linear_v_head_dim));
    out.set_u32(k("nextn_predict_layers"), 0);
    // The layer pattern as llama.cpp's converter writes it: one flag per layer, plus the interval.
    std::vector<bool> recurrent;
    int interval = 0;
    for (int i = 0; i < c.num_layers; ++i) {
      recurrent.push_back(c.layer_kinds[size_t(i)] == LayerKind::LinearAttention);
      if (!interval && !recurrent.back()) interval = i + 1;
    }
    out.set_array(k("attention.recurrent_layers"), recurrent);
    out.set_u32(k("full_attention_interval"), uint32_t(interval > 0 ? interval : 4));
  }
  if (!c.eos_token_ids.empty()) out.set_u32("tokenizer.ggml.eos_token_id", uint32_t(c.eos_token_ids[0]));
}

bool block_fits(DType t, int64_t cols) { return cols % dtype_info(t).block == 0; }

}  // namespace

void write_gguf_model_metadata(GgufWriter& out, const ModelConfig& config, DType main_type, const std::string& source) {
  write_metadata(out, config, main_type, source);
}

DType parse_output_type(const std::string& name, const char* what) {
  const std::optional<DType> t = dtype_from_name(name);
  if (!t || !can_quantize(*t)) {
    std::vector<std::string> names;
    for (int i = 0; i < kNumDTypes; ++i)
      if (can_quantize(DType(i))) names.emplace_back(dtype_name(DType(i)));
    fail("{} '{}' is not a type flashmoe can write (one of: {})", what, name, fmt::join(names, ", "));
  }
  return *t;
}

TensorTypeRule parse_tensor_type_rule(const std::string& text) {
  const size_t eq = text.rfind('=');
  if (eq == std::string::npos || eq == 0) fail("--tensor-type '{}' is not REGEX=TYPE", text);
  TensorTypeRule rule{text.substr(0, eq), parse_output_type(text.substr(eq + 1), "--tensor-type")};
  try {
    std::regex check(rule.pattern);
  } catch (const std::regex_error& e) {
    fail("--tensor-type '{}': bad regular expression: {}", text, e.what());
  }
  return rule;
}

void convert_to_gguf(const std::filesystem::path& input, const std::filesystem::path& output,
                     const ConvertOptions& options, const std::function<void(const ConvertProgress&)>& progress) {
  // A GGUF input keeps its names, layout and metadata; a Hugging Face one is mapped to llama.cpp's.
  std::error_code ec;
  std::unique_ptr<Model> model;
  std::optional<GgufFile> gguf;
  std::vector<Plan> plans;
  if (std::filesystem::is_regular_file(input, ec)) {
    gguf.emplace(GgufFile::open(input));
    config_from_gguf(*gguf);  // refuses architectures flashmoe cannot run
    plans = plan_from_gguf(*gguf);
  } else {
    model = Model::load(input);
    plans = plan_from_model(*model);
  }
  std::vector<std::pair<std::regex, DType>> rules;
  for (const TensorTypeRule& r : options.rules) rules.emplace_back(std::regex(r.pattern), r.type);

  // Each tensor's type: the rules first, then F32 for the tensors llama.cpp keeps in F32, then the
  // expert or main type; where rows are not whole blocks, Q8_0 if they hold 32-blocks, else F16
  // (as llama-quantize falls back).
  std::vector<DType> types;
  for (const Plan& p : plans) {
    std::optional<DType> t;
    for (const auto& [re, type] : rules)
      if (!t && std::regex_search(p.name, re)) t = type;
    if (!t) t = keeps_f32(p.name, p.shape.size()) ? DType::F32
                : is_expert_tensor(p.name) && options.expert_type ? *options.expert_type
                                                                   : options.type;
    const int64_t cols = p.shape.back();
    if (!block_fits(*t, cols)) t = is_quantized(*t) && block_fits(DType::Q8_0, cols) ? DType::Q8_0 : DType::F16;
    types.push_back(*t);
  }

  // Each tensor's importance entry, checked before anything is written.
  std::optional<ImportanceMatrix> imatrix;
  std::vector<const ImportanceEntry*> importance(plans.size(), nullptr);
  int without_importance = 0, with_importance = 0;
  if (!options.imatrix.empty()) {
    imatrix.emplace(ImportanceMatrix::load(options.imatrix));
    for (size_t i = 0; i < plans.size(); ++i) {
      const Plan& p = plans[i];
      const DType t = types[i];
      if (!is_quantized(t) || (p.source && p.source->dtype == t))
        continue;  // copied or float: nothing to weigh
      importance[i] = imatrix->for_tensor(p.name, p.shape);
      if (importance[i] && importance_use(t) == ImportanceUse::Unsupported)
        fail(
            "--imatrix: tensor '{}' is to be quantized to {}, which flashmoe cannot quantize with an "
            "importance "
            "matrix (types that use one: {}; Q8_0 and float types ignore it)",
            p.name, dtype_name(t), importance_types());
      if (!importance[i] && t == DType::IQ3_XXS && p.name != "token_embd.weight" && p.name != "output.weight")
        fail(
            "--imatrix: {} has no entry for tensor '{}', which is to be quantized to IQ3_XXS; like "
            "llama-quantize, "
            "flashmoe does not make IQ3_XXS without one when an importance matrix is given",
            imatrix->path(), p.name);
      if (importance_use(t) == ImportanceUse::Used) ++(importance[i] ? with_importance : without_importance);
    }
  }

  GgufWriter out(output);
  if (gguf) {
    for (const GgufKv& kv : gguf->metadata())
      if (kv.key != "general.alignment" && kv.key != "general.file_type") out.set(kv.key, kv.value);
    out.set_u32("general.file_type", file_type_of(options.type));
  } else {
    write_metadata(out, model->config, options.type, input.string());
    if (std::filesystem::exists(input / "tokenizer.json"))
      write_tokenizer_metadata(out, input,
                               {.vocab_size = model->config.vocab_size, .write_eos = model->config.eos_token_ids.empty()});
  }
  for (size_t i = 0; i < plans.size(); ++i) out.declare(plans[i].name, types[i], plans[i].shape);
  out.begin_data();

  ThreadPool pool(std::max(1, options.threads));
  uint64_t values_total = 0, values_done = 0;
  for (const Plan& p : plans) values_total += uint64_t(rows_of(p)) * uint64_t(p.shape.back());
  std::vector<std::byte> buffer;
  int exact_tensors = 0, requantized_mlx = 0;  // MLX 4-bit tensors repacked as Q4_1 as they are, or not
  for (size_t i = 0; i < plans.size(); ++i) {
    const Plan& p = plans[i];
    const int64_t rows = rows_of(p), cols = p.shape.back();
    if (p.source && p.source->dtype == types[i]) {
      out.append(p.source->data, p.source->nbytes);
    } else {
      const uint64_t row_bytes = *dtype_row_bytes(types[i], uint64_t(cols));
      buffer.resize(size_t(row_bytes * uint64_t(rows)));
      std::atomic<int64_t> exact{0};
      const ImportanceEntry* weights = importance[i];
      const int64_t rows_per_matrix = p.shape.size() == 3 ? p.shape[1] : rows;
      pool.parallel_for(rows, 16, [&](int64_t r0, int64_t r1, int) {
        std::vector<float> row(static_cast<size_t>(cols));
        for (int64_t r = r0; r < r1; ++r) {
          std::byte* dst = buffer.data() + uint64_t(r) * row_bytes;
          if (p.exact && p.exact(r, types[i], dst)) {
            exact.fetch_add(1, std::memory_order_relaxed);
            continue;
          }
          p.row(r, row.data());
          quantize_row(types[i], row.data(), cols, dst, weights ? weights->matrix(r / rows_per_matrix) : nullptr);
        }
      });
      if (exact.load() > 0) ++exact_tensors;
      if (p.exact && types[i] == DType::Q4_1 && exact.load() < rows) ++requantized_mlx;
      out.append(buffer.data(), buffer.size());
    }
    values_done += uint64_t(rows) * uint64_t(cols);
    if (progress) progress(ConvertProgress{i, plans.size(), p.name, types[i], values_done, values_total});
  }
  out.finish();
  if (imatrix)
    std::fprintf(stderr, "convert: %d tensors quantized with the importance matrix, %d without (no entry)\n",
                 with_importance, without_importance);
  if (exact_tensors > 0 || requantized_mlx > 0)
    std::fprintf(stderr, "convert: %d MLX 4-bit tensors repacked as Q4_1 without requantizing%s\n", exact_tensors,
                 requantized_mlx ? fmt::format(" ({} had groups whose scale or bias f16 cannot hold: requantized)",
                                               requantized_mlx).c_str()
                                 : "");
}

}  // namespace fm
