#include "model/weights.h"

#include <fmt/format.h>

#include <cmath>
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
    const TensorView& t = get(name);
    expect_shape(t, {rows, cols});
    Mat m = mat_of(t, rows, cols);
    *bytes += m.nbytes();
    return m;
  }

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
    if (gate_up) {
      down = b.find(base + "down_proj");
      if (!down) down = &b.get(base + "down_proj.weight");
    } else {
      if (!b.find(base + "0.gate_proj.weight"))
        fail("tensor '{}0.gate_proj.weight' (or fused '{}gate_up_proj') not found", base, base);
      for (int64_t e = 0; e < E; ++e) {
        const std::string p = fmt::format("{}{}.", base, e);
        experts[size_t(e)] = FfnWeights{b.mat(p + "gate_proj.weight", I, H, bytes), b.mat(p + "up_proj.weight", I, H, bytes),
                                        b.mat(p + "down_proj.weight", H, I, bytes)};
      }
      return experts;
    }
  }
  b.expect_shape(*down, {E, H, I});
  *bytes += down->nbytes;
  if (gate_up) {
    b.expect_shape(*gate_up, {E, 2 * I, H});
    *bytes += gate_up->nbytes;
  } else {
    b.expect_shape(*gate, {E, I, H});
    b.expect_shape(*up, {E, I, H});
    *bytes += gate->nbytes + up->nbytes;
  }
  for (int64_t e = 0; e < E; ++e) {
    FfnWeights& f = experts[size_t(e)];
    f.gate = gate_up ? b.mat_of(*gate_up, I, H, e * 2 * I) : b.mat_of(*gate, I, H, e * I);
    f.up = gate_up ? b.mat_of(*gate_up, I, H, e * 2 * I + I) : b.mat_of(*up, I, H, e * I);
    f.down = b.mat_of(*down, H, I, e * H);
  }
  return experts;
}

}  // namespace

void for_each_matrix(const ModelWeights& w, const std::function<void(const Mat&)>& fn) {
  auto ffn = [&](const FfnWeights& f) {
    fn(f.gate);
    fn(f.up);
    fn(f.down);
  };
  fn(w.embed);
  if (w.lm_head.data != w.embed.data) fn(w.lm_head);
  for (const LayerWeights& L : w.layers) {
    if (L.kind == LayerKind::FullAttention) {
      for (const Mat* m : {&L.attn.q, &L.attn.k, &L.attn.v, &L.attn.o}) fn(*m);
    } else {
      for (const Mat* m : {&L.linear.qkv, &L.linear.z, &L.linear.b, &L.linear.a, &L.linear.out}) fn(*m);
    }
    if (L.is_moe) {
      fn(L.moe.router);
      for (const FfnWeights& e : L.moe.experts) ffn(e);
      if (L.moe.has_shared) {
        ffn(L.moe.shared);
        fn(L.moe.shared_gate);
      }
    } else {
      ffn(L.mlp);
    }
  }
}

ModelWeights bind_weights(const ModelConfig& c, const TensorSource& tensors, WeightLayout layout) {
  const Binder b(c, tensors, layout);
  const int64_t H = c.hidden_size;
  // Zero-centred norms are applied as (1 + w): GGUF stores 1 + w already.
  const float norm_add = c.zero_centred_norm && !b.gguf() ? 1.0f : 0.0f;
  ModelWeights w;
  uint64_t* dense = &w.dense_bytes;

  w.embed = b.mat(b.global_name("embed_tokens.weight", "token_embd.weight"), c.vocab_size, H, dense);
  w.final_norm = b.vec(b.global_name("norm.weight", "output_norm.weight"), H, norm_add);
  const TensorView* head = nullptr;
  for (const char* name : {"lm_head.weight", "language_model.lm_head.weight"})
    if (!head && !b.gguf()) head = tensors.find(name);
  if (b.gguf()) head = tensors.find("output.weight");
  if (head) {  // GGUF omits output.weight when the embedding is tied
    b.expect_shape(*head, {c.vocab_size, H});
    w.lm_head = b.mat_of(*head, c.vocab_size, H);
    *dense += w.lm_head.nbytes();
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
      const TensorView& conv = b.get(name(W::LinConv));  // HF [C][1][K], GGUF [C][K]
      if (conv.shape != std::vector<int64_t>{conv_dim, 1, c.linear_conv_kernel})
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
        if (g.shape != std::vector<int64_t>{H}) b.expect_shape(g, {1, H});
        m.shared_gate = b.mat_of(g, 1, H);
        *dense += m.shared_gate.nbytes();
      }
    } else {
      L.mlp = bind_ffn(b, i, W::MlpGate, W::MlpUp, W::MlpDown, H, c.intermediate_size, dense);
    }
  }
  return w;
}

}  // namespace fm
