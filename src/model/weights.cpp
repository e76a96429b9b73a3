#include "model/weights.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "util/error.h"
#include "util/half.h"

namespace fm {

namespace {

// Tensor-name prefixes of the text model in the checkpoints we read: the multimodal wrapper
// (model.language_model.), MLX conversions (language_model.model.), causal LMs (model.).
constexpr const char* kPrefixes[] = {"model.language_model.", "language_model.model.", "model.", ""};

class Binder {
 public:
  Binder(const ModelConfig& config, const SafetensorsArchive& archive) : c_(config), ar_(archive) {
    for (const char* p : kPrefixes) {
      if (ar_.find(std::string(p) + "embed_tokens.weight")) {
        prefix_ = p;
        return;
      }
    }
    fail("{}: tensor 'model.embed_tokens.weight' not found (nor under model.language_model. or "
         "language_model.model.)",
         ar_.source());
  }

  const std::string& prefix() const { return prefix_; }
  bool has(const std::string& name) const { return ar_.find(prefix_ + name) != nullptr; }

  const TensorView& tensor(const std::string& full_name) const { return ar_.get(full_name); }

  void expect_shape(const TensorView& t, const std::vector<int64_t>& shape) const {
    if (t.shape != shape)
      fail("{}: tensor '{}' has shape {}, expected {} from {}", t.file, t.name, shape_str(t.shape),
           shape_str(shape), c_.source);
  }

  Mat mat_of(const TensorView& t, int64_t rows, int64_t cols, int64_t first_row = 0) const {
    if (!is_float_weight(t.dtype))
      fail("{}: tensor '{}' has dtype {}, expected F32, F16 or BF16", t.file, t.name, dtype_name(t.dtype));
    const uint64_t row_bytes = *dtype_row_bytes(t.dtype, uint64_t(cols));
    return Mat{t.dtype, rows, cols, t.data + uint64_t(first_row) * row_bytes, row_bytes};
  }

  // A 2-D weight [rows][cols], counted as dense.
  Mat mat(const std::string& name, int64_t rows, int64_t cols, uint64_t* bytes) const {
    const TensorView& t = tensor(prefix_ + name);
    expect_shape(t, {rows, cols});
    Mat m = mat_of(t, rows, cols);
    *bytes += m.nbytes();
    return m;
  }

  // A vector of n values as float32, plus `add` (1 for zero-centred norms).
  std::vector<float> vec(const std::string& name, int64_t n, float add = 0.0f) const {
    const TensorView& t = tensor(prefix_ + name);
    expect_shape(t, {n});
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
        default: fail("{}: tensor '{}' has dtype {}, expected a float type", t.file, t.name, dtype_name(t.dtype));
      }
    }
    return out;
  }

 private:
  template <class T>
  static T load(const std::byte* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
  }

  const ModelConfig& c_;
  const SafetensorsArchive& ar_;
  std::string prefix_;
};

FfnWeights bind_ffn(const Binder& b, const std::string& base, int64_t hidden, int64_t inter, uint64_t* bytes) {
  return FfnWeights{b.mat(base + "gate_proj.weight", inter, hidden, bytes),
                    b.mat(base + "up_proj.weight", inter, hidden, bytes),
                    b.mat(base + "down_proj.weight", hidden, inter, bytes)};
}

// Routed experts, stored per expert (experts.N.{gate,up,down}_proj.weight) or fused into 3-D tensors
// (experts.gate_up_proj [E][2I][H] with gate rows first, experts.down_proj [E][H][I]).
std::vector<FfnWeights> bind_experts(const Binder& b, const std::string& base, int64_t n_experts, int64_t hidden,
                                     int64_t inter, uint64_t* bytes) {
  std::vector<FfnWeights> experts;
  experts.reserve(size_t(n_experts));
  std::string fused;
  for (const char* name : {"gate_up_proj", "gate_up_proj.weight"})
    if (b.has(base + name)) fused = base + name;
  if (!fused.empty()) {
    const TensorView& gate_up = b.tensor(b.prefix() + fused);
    b.expect_shape(gate_up, {n_experts, 2 * inter, hidden});
    const std::string down_name = b.has(base + "down_proj") ? base + "down_proj" : base + "down_proj.weight";
    const TensorView& down = b.tensor(b.prefix() + down_name);
    b.expect_shape(down, {n_experts, hidden, inter});
    for (int64_t e = 0; e < n_experts; ++e) {
      FfnWeights f;
      f.gate = b.mat_of(gate_up, inter, hidden, e * 2 * inter);
      f.up = b.mat_of(gate_up, inter, hidden, e * 2 * inter + inter);
      f.down = b.mat_of(down, hidden, inter, e * hidden);
      experts.push_back(f);
    }
    *bytes += gate_up.nbytes + down.nbytes;
    return experts;
  }
  if (!b.has(base + "0.gate_proj.weight"))
    fail("tensor '{}{}0.gate_proj.weight' (or fused '{}{}gate_up_proj') not found", b.prefix(), base, b.prefix(),
         base);
  for (int64_t e = 0; e < n_experts; ++e)
    experts.push_back(bind_ffn(b, fmt::format("{}{}.", base, e), hidden, inter, bytes));
  return experts;
}

}  // namespace

ModelWeights bind_weights(const ModelConfig& c, const SafetensorsArchive& archive) {
  const Binder b(c, archive);
  const int64_t H = c.hidden_size;
  const float norm_add = c.zero_centred_norm ? 1.0f : 0.0f;
  ModelWeights w;
  uint64_t* dense = &w.dense_bytes;

  w.embed = b.mat("embed_tokens.weight", c.vocab_size, H, dense);
  w.final_norm = b.vec("norm.weight", H, norm_add);
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
  } else {
    const TensorView* head = archive.find("lm_head.weight");
    if (!head) head = archive.find("language_model.lm_head.weight");
    if (!head) fail("{}: tensor 'lm_head.weight' not found (tie_word_embeddings is false)", archive.source());
    b.expect_shape(*head, {c.vocab_size, H});
    w.lm_head = b.mat_of(*head, c.vocab_size, H);
    *dense += w.lm_head.nbytes();
  }

  w.layers.resize(size_t(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights& L = w.layers[size_t(i)];
    const std::string p = fmt::format("layers.{}.", i);
    L.kind = c.layer_kinds[size_t(i)];
    L.input_norm = b.vec(p + "input_layernorm.weight", H, norm_add);
    L.post_norm = b.vec(p + "post_attention_layernorm.weight", H, norm_add);

    if (L.kind == LayerKind::FullAttention) {
      const int64_t q_rows = int64_t(c.num_heads) * c.head_dim * (c.attn_output_gate ? 2 : 1);
      const int64_t kv_rows = int64_t(c.num_kv_heads) * c.head_dim;
      AttentionWeights& a = L.attn;
      a.q = b.mat(p + "self_attn.q_proj.weight", q_rows, H, dense);
      a.k = b.mat(p + "self_attn.k_proj.weight", kv_rows, H, dense);
      a.v = b.mat(p + "self_attn.v_proj.weight", kv_rows, H, dense);
      a.o = b.mat(p + "self_attn.o_proj.weight", H, int64_t(c.num_heads) * c.head_dim, dense);
      a.q_norm = b.vec(p + "self_attn.q_norm.weight", c.head_dim, norm_add);
      a.k_norm = b.vec(p + "self_attn.k_norm.weight", c.head_dim, norm_add);
    } else {
      const int64_t nv = c.linear_num_v_heads, dv = c.linear_v_head_dim;
      const int64_t conv_dim = c.linear_conv_dim();
      DeltaNetWeights& d = L.linear;
      d.qkv = b.mat(p + "linear_attn.in_proj_qkv.weight", conv_dim, H, dense);
      d.z = b.mat(p + "linear_attn.in_proj_z.weight", nv * dv, H, dense);
      d.b = b.mat(p + "linear_attn.in_proj_b.weight", nv, H, dense);
      d.a = b.mat(p + "linear_attn.in_proj_a.weight", nv, H, dense);
      d.out = b.mat(p + "linear_attn.out_proj.weight", H, nv * dv, dense);
      const TensorView& conv = b.tensor(b.prefix() + p + "linear_attn.conv1d.weight");
      if (conv.shape != std::vector<int64_t>{conv_dim, 1, c.linear_conv_kernel})
        b.expect_shape(conv, {conv_dim, c.linear_conv_kernel});
      d.conv = b.to_float(conv);
      d.dt_bias = b.vec(p + "linear_attn.dt_bias", nv);
      d.decay_scale = b.vec(p + "linear_attn.A_log", nv);
      for (float& v : d.decay_scale) v = -std::exp(v);
      d.norm = b.vec(p + "linear_attn.norm.weight", dv);
    }

    L.is_moe = c.layer_is_moe[size_t(i)];
    if (L.is_moe) {
      MoeWeights& m = L.moe;
      m.router = b.mat(p + "mlp.gate.weight", c.num_experts, H, dense);
      m.experts = bind_experts(b, p + "mlp.experts.", c.num_experts, H, c.moe_intermediate_size, &w.expert_bytes);
      m.has_shared = c.shared_expert_intermediate_size > 0;
      if (m.has_shared) {
        m.shared = bind_ffn(b, p + "mlp.shared_expert.", H, c.shared_expert_intermediate_size, dense);
        m.shared_gate = b.mat(p + "mlp.shared_expert_gate.weight", 1, H, dense);
      }
    } else {
      L.mlp = bind_ffn(b, p + "mlp.", H, c.intermediate_size, dense);
    }
  }
  return w;
}

}  // namespace fm
