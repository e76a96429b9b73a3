#include "model/weights.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "formats/quant.h"
#include "util/error.h"
#include "util/half.h"

namespace fm {

namespace {

// The weights of a decoder layer, by role.
enum class W {
  InputNorm, PostNorm,
  AttnQ, AttnK, AttnV, AttnO, QNorm, KNorm,
  LinQkv, LinZ, LinB, LinA, LinConv, LinDtBias, LinDecay, LinNorm, LinOut,
  Router, SharedGate, SharedUp, SharedDown, SharedExpertGate,
  MlpGate, MlpUp, MlpDown,
  kCount
};

// Names relative to the layer: transformers' and llama.cpp's (gguf-py constants.py TENSOR_NAMES).
constexpr const char* kHfNames[] = {
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "self_attn.q_norm.weight", "self_attn.k_norm.weight",
    "linear_attn.in_proj_qkv.weight", "linear_attn.in_proj_z.weight", "linear_attn.in_proj_b.weight",
    "linear_attn.in_proj_a.weight", "linear_attn.conv1d.weight", "linear_attn.dt_bias", "linear_attn.A_log",
    "linear_attn.norm.weight", "linear_attn.out_proj.weight",
    "mlp.gate.weight", "mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight",
    "mlp.shared_expert.down_proj.weight", "mlp.shared_expert_gate.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
};
constexpr const char* kGgufNames[] = {
    "attn_norm.weight", "post_attention_norm.weight",
    "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "attn_q_norm.weight",
    "attn_k_norm.weight",
    "attn_qkv.weight", "attn_gate.weight", "ssm_beta.weight", "ssm_alpha.weight", "ssm_conv1d.weight",
    "ssm_dt.bias", "ssm_a", "ssm_norm.weight", "ssm_out.weight",
    "ffn_gate_inp.weight", "ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight",
    "ffn_gate_inp_shexp.weight",
    "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
};
static_assert(std::size(kHfNames) == size_t(W::kCount) && std::size(kGgufNames) == size_t(W::kCount));

// Tensor-name prefixes of the text model in Hugging Face checkpoints: the multimodal wrapper
// (model.language_model.), MLX conversions (language_model.model.), causal LMs (model.).
constexpr const char* kHfPrefixes[] = {"model.language_model.", "language_model.model.", "model.", ""};

template <class T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

class Binder {
 public:
  Binder(const ModelConfig& config, const TensorSource& tensors, WeightLayout layout)
      : c_(config), ts_(tensors), gguf_(layout == WeightLayout::Gguf) {
    if (gguf_) return;
    for (const char* p : kHfPrefixes) {
      if (ts_.find(std::string(p) + "embed_tokens.weight")) {
        prefix_ = p;
        return;
      }
    }
    fail("{}: tensor 'model.embed_tokens.weight' not found (nor under model.language_model. or "
         "language_model.model.)",
         ts_.source());
  }

  bool gguf() const { return gguf_; }
  const std::string& source() const { return ts_.source(); }
  std::string layer_name(int layer, W w) const {
    if (!gguf_) return fmt::format("{}layers.{}.{}", prefix_, layer, kHfNames[size_t(w)]);
    // llama.cpp's qwen3moe calls the pre-FFN norm ffn_norm; qwen35moe calls it post_attention_norm.
    if (w == W::PostNorm && c_.arch == Arch::Qwen3Moe) return fmt::format("blk.{}.ffn_norm.weight", layer);
    return fmt::format("blk.{}.{}", layer, kGgufNames[size_t(w)]);
  }
  std::string global_name(const char* hf, const char* gguf) const { return gguf_ ? gguf : prefix_ + hf; }
  std::string expert_base(int layer) const {
    return gguf_ ? fmt::format("blk.{}.", layer) : fmt::format("{}layers.{}.mlp.experts.", prefix_, layer);
  }
  // mlx_lm's stacked experts (SwitchGLU): mlp.switch_mlp.{gate,up,down}_proj.weight [E][rows][cols].
  std::string switch_mlp_base(int layer) const { return fmt::format("{}layers.{}.mlp.switch_mlp.", prefix_, layer); }

  const TensorView* find(const std::string& name) const { return ts_.find(name); }
  const TensorView& get(const std::string& name) const {
    const TensorView* t = ts_.find(name);
    if (!t) fail("{}: tensor '{}' not found", ts_.source(), name);
    return *t;
  }

  void expect_shape(const TensorView& t, const std::vector<int64_t>& shape) const {
    if (t.shape != shape)
      fail("{}: tensor '{}' has shape {}, expected {} from {}", t.file, t.name, shape_str(t.shape), shape_str(shape),
           c_.source);
  }

  // Rows [first_row, first_row + rows) of a tensor whose rows have `cols` elements.
  Mat mat_of(const TensorView& t, int64_t rows, int64_t cols, int64_t first_row = 0) const {
    if (!can_dequantize(t.dtype) || !dtype_row_bytes(t.dtype, uint64_t(cols)))
      fail("{}: tensor '{}' has type {}, which flashmoe cannot compute with", t.file, t.name, dtype_name(t.dtype));
    const uint64_t row_bytes = *dtype_row_bytes(t.dtype, uint64_t(cols));
    return Mat{t.dtype, rows, cols, t.data + uint64_t(first_row) * row_bytes, row_bytes};
  }

  // A 2-D weight [rows][cols]; `bytes` counts it.
  Mat mat(const std::string& name, int64_t rows, int64_t cols, uint64_t* bytes) const {
    Mat m = whole(get(name), {rows, cols});
    *bytes += stored_bytes(m);
    return m;
  }

  // All rows of a weight of logical shape `shape` ([rows][cols], or [E][rows][cols] for stacked
  // experts) as one Mat: stored as it is, or MLX-quantized (then `t` is NAME.weight, packed, with
  // NAME.scales and NAME.biases beside it; the presence of NAME.scales tells which).
  Mat whole(const TensorView& t, const std::vector<int64_t>& shape) const {
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    const int64_t cols = shape.back();
    if (!gguf_ && t.name.ends_with(".weight")) {
      const std::string module = t.name.substr(0, t.name.size() - std::strlen(".weight"));
      if (const TensorView* scales = find(module + ".scales")) return mlx_mat(t, *scales, module, shape, rows, cols);
    }
    expect_shape(t, shape);
    return mat_of(t, rows, cols);
  }

  // An MLX-quantized weight: packed levels [..][cols * bits / 32] (uint32), scales and biases
  // [..][cols / group] (BF16, F16 or F32), bits and group from config.json's quantization entry.
  Mat mlx_mat(const TensorView& w, const TensorView& scales, const std::string& module,
              const std::vector<int64_t>& shape, int64_t rows, int64_t cols) const {
    const MlxQuantization& q = c_.mlx_quant;
    if (!q.present)
      fail("{}: tensor '{}' holds MLX quantization scales, but {} has no 'quantization' entry", scales.file,
           scales.name, c_.source);
    const std::optional<MlxQuantization::Params> p = q.params_for(module);
    if (!p)
      fail("{}: tensor '{}' holds MLX quantization scales, but {} lists '{}' as not quantized", scales.file,
           scales.name, c_.source, module);
    const TensorView* biases = find(module + ".biases");
    if (!biases)
      fail("{}: tensor '{}.biases' not found: MLX affine quantization stores scales and biases for '{}'",
           scales.file, module, w.name);
    if (w.dtype != DType::U32)
      fail("{}: tensor '{}' has type {}, expected U32 (packed MLX levels, since '{}' exists)", w.file, w.name,
           dtype_name(w.dtype), scales.name);
    if (cols % p->group_size != 0)
      fail("{}: tensor '{}': rows of {} values are not whole MLX groups of {}", w.file, w.name, cols,
           p->group_size);
    std::vector<int64_t> packed = shape, groups = shape;
    packed.back() = cols * p->bits / 32;
    groups.back() = cols / p->group_size;
    if (w.shape != packed)
      fail("{}: tensor '{}' has shape {}, expected {}: {} values packed at {} bits ({} quantization entry)", w.file,
           w.name, shape_str(w.shape), shape_str(packed), shape_str(shape), p->bits, c_.source);
    for (const TensorView* t : {&scales, biases}) {
      if (t->dtype != DType::BF16 && t->dtype != DType::F16 && t->dtype != DType::F32)
        fail("{}: tensor '{}' has type {}, expected BF16, F16 or F32 (MLX scales and biases)", t->file, t->name,
             dtype_name(t->dtype));
      if (t->shape != groups)
        fail("{}: tensor '{}' has shape {}, expected {}: one per group of {} values of {} ({} quantization entry)",
             t->file, t->name, shape_str(t->shape), shape_str(groups), p->group_size, shape_str(shape), c_.source);
    }
    if (biases->dtype != scales.dtype)
      fail("{}: tensor '{}' has type {} but '{}' has type {}", biases->file, biases->name, dtype_name(biases->dtype),
           scales.name, dtype_name(scales.dtype));
    const DType type = *mlx_dtype(p->bits);
    Mat m{type, rows, cols, w.data, *dtype_row_bytes(type, uint64_t(cols))};
    m.mlx = MlxGroups{scales.data, biases->data,
                      uint64_t(groups.back()) * uint64_t(dtype_info(scales.dtype).block_bytes), scales.dtype,
                      p->group_size};
    return m;
  }

  // Bytes a matrix occupies in the checkpoint: its values, and an MLX matrix's scales and biases.
  static uint64_t stored_bytes(const Mat& m) { return m.nbytes() + 2 * uint64_t(m.rows) * m.mlx.row_bytes; }

  // A vector of n values as float32 (shape [n], or any shape of n elements listed in `alt`), plus `add`.
  std::vector<float> vec(const std::string& name, int64_t n, float add = 0.0f,
                         const std::vector<int64_t>& alt = {}) const {
    const TensorView& t = get(name);
    if (t.shape != std::vector<int64_t>{n} && (alt.empty() || t.shape != alt)) expect_shape(t, {n});
    std::vector<float> out = to_float(t);
    for (float& v : out) v += add;
    return out;
  }

  std::vector<float> to_float(const TensorView& t) const {
    std::vector<float> out(size_t(t.numel()));
    const std::byte* p = t.data;
    for (size_t i = 0; i < out.size(); ++i) {
      switch (t.dtype) {
        case DType::F32: out[i] = load<float>(p + 4 * i); break;
        case DType::F64: out[i] = float(load<double>(p + 8 * i)); break;
        case DType::F16: out[i] = f16_to_f32(load<uint16_t>(p + 2 * i)); break;
        case DType::BF16: out[i] = bf16_to_f32(load<uint16_t>(p + 2 * i)); break;
        default: fail("{}: tensor '{}' has type {}, expected a float type", t.file, t.name, dtype_name(t.dtype));
      }
    }
    return out;
  }

 private:
  const ModelConfig& c_;
  const TensorSource& ts_;
  bool gguf_;
  std::string prefix_;
};

FfnWeights bind_ffn(const Binder& b, int layer, W gate, W up, W down, int64_t hidden, int64_t inter,
                    uint64_t* bytes) {
  return FfnWeights{b.mat(b.layer_name(layer, gate), inter, hidden, bytes),
                    b.mat(b.layer_name(layer, up), inter, hidden, bytes),
                    b.mat(b.layer_name(layer, down), hidden, inter, bytes)};
}

// Routed experts in any of the stored layouts:
//   HF per expert:  experts.N.{gate,up,down}_proj.weight
//   HF fused:       experts.gate_up_proj [E][2I][H] (gate rows first), experts.down_proj [E][H][I]
//   MLX (mlx_lm):   switch_mlp.{gate,up}_proj.weight [E][I][H], switch_mlp.down_proj.weight [E][H][I],
//                   each possibly MLX-quantized (per-expert tensors may be quantized too)
//   GGUF:           ffn_{gate,up}_exps.weight [E][I][H] or ffn_gate_up_exps.weight [E][2I][H],
//                   ffn_down_exps.weight [E][H][I]
// Each expert's matrices are contiguous slices of the 3-D tensors.
std::vector<FfnWeights> bind_experts(const Binder& b, int layer, int64_t E, int64_t H, int64_t I,
                                     uint64_t* bytes) {
  const std::string base = b.expert_base(layer);
  std::vector<FfnWeights> experts(static_cast<size_t>(E));
  const TensorView *gate_up = nullptr, *gate = nullptr, *up = nullptr, *down = nullptr;
  if (b.gguf()) {
    gate_up = b.find(base + "ffn_gate_up_exps.weight");
    if (!gate_up) {
      gate = &b.get(base + "ffn_gate_exps.weight");
      up = &b.get(base + "ffn_up_exps.weight");
    }
    down = &b.get(base + "ffn_down_exps.weight");
  } else {
    for (const char* name : {"gate_up_proj", "gate_up_proj.weight"})
      if (!gate_up) gate_up = b.find(base + name);
    const std::string sw = b.switch_mlp_base(layer);
    if (gate_up) {
      down = b.find(base + "down_proj");
      if (!down) down = &b.get(base + "down_proj.weight");
    } else if ((gate = b.find(sw + "gate_proj.weight"))) {
      up = &b.get(sw + "up_proj.weight");
      down = &b.get(sw + "down_proj.weight");
    } else {
      if (!b.find(base + "0.gate_proj.weight"))
        fail("{}: tensor '{}0.gate_proj.weight' (or fused '{}gate_up_proj', or '{}gate_proj.weight') not found",
             b.source(), base, base, sw);
      for (int64_t e = 0; e < E; ++e) {
        const std::string p = fmt::format("{}{}.", base, e);
        experts[size_t(e)] = FfnWeights{b.mat(p + "gate_proj.weight", I, H, bytes), b.mat(p + "up_proj.weight", I, H, bytes),
                                        b.mat(p + "down_proj.weight", H, I, bytes)};
      }
      return experts;
    }
  }
  const Mat down_all = b.whole(*down, {E, H, I});
  Mat gate_all, up_all;
  if (gate_up) {
    gate_all = up_all = b.whole(*gate_up, {E, 2 * I, H});
    *bytes += Binder::stored_bytes(gate_all);
  } else {
    gate_all = b.whole(*gate, {E, I, H});
    up_all = b.whole(*up, {E, I, H});
    *bytes += Binder::stored_bytes(gate_all) + Binder::stored_bytes(up_all);
  }
  *bytes += Binder::stored_bytes(down_all);
  for (int64_t e = 0; e < E; ++e) {
    FfnWeights& f = experts[size_t(e)];
    f.gate = gate_up ? gate_all.slice_rows(e * 2 * I, I) : gate_all.slice_rows(e * I, I);
    f.up = gate_up ? up_all.slice_rows(e * 2 * I + I, I) : up_all.slice_rows(e * I, I);
    f.down = down_all.slice_rows(e * H, H);
  }
  return experts;
}

}  // namespace

namespace {

// fn(mat, routed_expert) for every matrix of w (W: ModelWeights, const or not), each once.
template <class W, class Fn>
void visit_matrices(W& w, const Fn& fn) {
  auto ffn = [&](auto& f, bool routed) {
    fn(f.gate, routed);
    fn(f.up, routed);
    fn(f.down, routed);
  };
  fn(w.embed, false);
  if (w.lm_head.data != w.embed.data) fn(w.lm_head, false);
  for (auto& L : w.layers) {
    if (L.kind == LayerKind::FullAttention) {
      for (auto* m : {&L.attn.q, &L.attn.k, &L.attn.v, &L.attn.o}) fn(*m, false);
    } else {
      for (auto* m : {&L.linear.qkv, &L.linear.z, &L.linear.b, &L.linear.a, &L.linear.out}) fn(*m, false);
    }
    if (L.is_moe) {
      fn(L.moe.router, false);
      for (auto& e : L.moe.experts) ffn(e, true);
      if (L.moe.has_shared) {
        ffn(L.moe.shared, false);
        fn(L.moe.shared_gate, false);
      }
    } else {
      ffn(L.mlp, false);
    }
  }
}

}  // namespace

void for_each_matrix(const ModelWeights& w, const std::function<void(const Mat&)>& fn) {
  visit_matrices(w, [&](const Mat& m, bool) { fn(m); });
}

void for_each_matrix(ModelWeights& w, const std::function<void(Mat&, bool routed_expert)>& fn) {
  visit_matrices(w, fn);
}

ModelWeights bind_weights(const ModelConfig& c, const TensorSource& tensors, WeightLayout layout) {
  const Binder b(c, tensors, layout);
  const int64_t H = c.hidden_size;
  // Zero-centred norms are applied as (1 + w): GGUF stores 1 + w already, and so do mlx_lm's Qwen3.5
  // conversions, which are told apart by their conv taps: mlx_lm stores them [C][K][1] where
  // transformers has [C][1][K], and adds the 1 to the norms in the same step (qwen3_5.py sanitize).
  bool norms_hold_one = b.gguf();
  for (int i = 0; i < c.num_layers && c.zero_centred_norm && !b.gguf(); ++i) {
    if (c.layer_kinds[size_t(i)] != LayerKind::LinearAttention) continue;
    const TensorView* conv = tensors.find(b.layer_name(i, W::LinConv));
    norms_hold_one = conv && c.linear_conv_kernel > 1 &&
                     conv->shape == std::vector<int64_t>{c.linear_conv_dim(), c.linear_conv_kernel, 1};
    break;
  }
  const float norm_add = c.zero_centred_norm && !norms_hold_one ? 1.0f : 0.0f;
  ModelWeights w;
  uint64_t* dense = &w.dense_bytes;

  w.embed = b.mat(b.global_name("embed_tokens.weight", "token_embd.weight"), c.vocab_size, H, dense);
  w.final_norm = b.vec(b.global_name("norm.weight", "output_norm.weight"), H, norm_add);
  const TensorView* head = nullptr;
  for (const char* name : {"lm_head.weight", "language_model.lm_head.weight"})
    if (!head && !b.gguf()) head = tensors.find(name);
  if (b.gguf()) head = tensors.find("output.weight");
  if (head) {  // GGUF omits output.weight when the embedding is tied
    w.lm_head = b.whole(*head, {c.vocab_size, H});
    *dense += Binder::stored_bytes(w.lm_head);
  } else if (c.tie_word_embeddings || b.gguf()) {
    w.lm_head = w.embed;
  } else {
    fail("{}: tensor 'lm_head.weight' not found (tie_word_embeddings is false)", tensors.source());
  }

  w.layers.resize(size_t(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    auto name = [&](W role) { return b.layer_name(i, role); };
    L.kind = c.layer_kinds[size_t(i)];
    L.input_norm = b.vec(name(W::InputNorm), H, norm_add);
    L.post_norm = b.vec(name(W::PostNorm), H, norm_add);

    if (L.kind == LayerKind::FullAttention) {
      const int64_t q_rows = int64_t(c.num_heads) * c.head_dim * (c.attn_output_gate ? 2 : 1);
      const int64_t kv_rows = int64_t(c.num_kv_heads) * c.head_dim;
      AttentionWeights& a = L.attn;
      a.q = b.mat(name(W::AttnQ), q_rows, H, dense);
      a.k = b.mat(name(W::AttnK), kv_rows, H, dense);
      a.v = b.mat(name(W::AttnV), kv_rows, H, dense);
      a.o = b.mat(name(W::AttnO), H, int64_t(c.num_heads) * c.head_dim, dense);
      a.q_norm = b.vec(name(W::QNorm), c.head_dim, norm_add);
      a.k_norm = b.vec(name(W::KNorm), c.head_dim, norm_add);
    } else {
      const int64_t nv = c.linear_num_v_heads, dv = c.linear_v_head_dim;
      const int64_t conv_dim = c.linear_conv_dim();
      DeltaNetWeights& d = L.linear;
      d.qkv = b.mat(name(W::LinQkv), conv_dim, H, dense);
      d.z = b.mat(name(W::LinZ), nv * dv, H, dense);
      d.b = b.mat(name(W::LinB), nv, H, dense);
      d.a = b.mat(name(W::LinA), nv, H, dense);
      d.out = b.mat(name(W::LinOut), H, nv * dv, dense);
      const TensorView& conv = b.get(name(W::LinConv));  // HF [C][1][K], GGUF [C][K], MLX [C][K][1]
      if (conv.shape != std::vector<int64_t>{conv_dim, 1, c.linear_conv_kernel} &&
          conv.shape != std::vector<int64_t>{conv_dim, c.linear_conv_kernel, 1})
        b.expect_shape(conv, {conv_dim, c.linear_conv_kernel});
      d.conv = b.to_float(conv);
      d.dt_bias = b.vec(name(W::LinDtBias), nv);
      d.decay_scale = b.vec(name(W::LinDecay), nv);
      if (!b.gguf())
        for (float& v : d.decay_scale) v = -std::exp(v);  // A_log -> -exp(A_log), as GGUF stores it
      d.norm = b.vec(name(W::LinNorm), dv);
      d.v_heads_tiled = b.gguf();
    }

    L.is_moe = c.layer_is_moe[size_t(i)];
    if (L.is_moe) {
      MoeWeights& m = L.moe;
      m.router = b.mat(name(W::Router), c.num_experts, H, dense);
      m.experts = bind_experts(b, i, c.num_experts, H, c.moe_intermediate_size, &w.expert_bytes);
      m.has_shared = c.shared_expert_intermediate_size > 0;
      if (m.has_shared) {
        m.shared = bind_ffn(b, i, W::SharedGate, W::SharedUp, W::SharedDown, H, c.shared_expert_intermediate_size,
                            dense);
        const TensorView& g = b.get(name(W::SharedExpertGate));  // HF [1][H], GGUF [H]
        m.shared_gate = g.shape == std::vector<int64_t>{H} ? b.mat_of(g, 1, H) : b.whole(g, {1, H});
        *dense += Binder::stored_bytes(m.shared_gate);
      }
    } else {
      L.mlp = bind_ffn(b, i, W::MlpGate, W::MlpUp, W::MlpDown, H, c.intermediate_size, dense);
    }
  }
  return w;
}

std::string gguf_tensor_name(const std::string& hf_name, Arch arch) {
  if (hf_name == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf_name == "model.norm.weight") return "output_norm.weight";
  if (hf_name == "lm_head.weight") return "output.weight";
  int layer = -1, used = 0;
  if (std::sscanf(hf_name.c_str(), "model.layers.%d.%n", &layer, &used) != 1 || used == 0) return "";
  const std::string suffix = hf_name.substr(size_t(used));
  for (size_t w = 0; w < size_t(W::kCount); ++w) {
    if (suffix != kHfNames[w]) continue;
    if (W(w) == W::PostNorm && arch == Arch::Qwen3Moe) return fmt::format("blk.{}.ffn_norm.weight", layer);
    return fmt::format("blk.{}.{}", layer, kGgufNames[w]);
  }
  return "";
}

}  // namespace fm
