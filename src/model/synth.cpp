#include "model/synth.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "convert/convert.h"
#include "formats/gguf_writer.h"
#include "formats/quant.h"
#include "formats/safetensors_writer.h"
#include "model/config.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_gguf.h"
#include "util/error.h"
#include "util/half.h"

namespace fm {

namespace {

struct Preset {
  const char* name;
  int hidden, layers, heads, kv_heads, lin_k_heads, lin_v_heads, experts, top_k, moe_inter, shared_inter;
};

// Shapes from the published configs (docs/qwen35.md).
constexpr Preset kPresets[] = {
    {"qwen3.5-35b-a3b", 2048, 40, 16, 2, 16, 32, 256, 8, 512, 512},
    {"qwen3.5-122b-a10b", 3072, 48, 32, 2, 16, 64, 256, 8, 1024, 1024},
    {"qwen3.5-397b-a17b", 4096, 60, 32, 2, 16, 64, 512, 10, 1024, 1024},
};
constexpr int kVocab = 248320, kHeadDim = 256, kLinDim = 128, kConv = 4;

const Preset& find_preset(const std::string& name) {
  for (const Preset& p : kPresets)
    if (name == p.name) return p;
  fail("unknown model shape '{}' (known: {})", name, fmt::join(synth_presets(), ", "));
}

class Xorshift {
 public:
  explicit Xorshift(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s_ ^= s_ << 13, s_ ^= s_ >> 7, s_ ^= s_ << 17;
    return s_;
  }
  float uniform() { return float(int32_t(uint32_t(next() >> 32))) * (1.0f / 2147483648.0f); }  // [-1, 1)

 private:
  uint64_t s_;
};

// Prints "synth: done / total GB (p%)" on stderr each time the percentage changes.
class Progress {
 public:
  void add(uint64_t bytes, uint64_t total) {
    done_ += bytes;
    const int percent = int(100.0 * double(done_) / double(total));
    if (percent == shown_) return;
    shown_ = percent;
    std::fprintf(stderr, "\rsynth: %.2f / %.2f GB (%d%%)", double(done_) / 1e9, double(total) / 1e9, percent);
  }
  ~Progress() { std::fprintf(stderr, "\n"); }

 private:
  uint64_t done_ = 0;
  int shown_ = -1;
};

// Fast reproducible uniform values in [-scale, scale], converted to the stored type in chunks.
class RandomFill {
 public:
  explicit RandomFill(uint64_t seed) : rng_(seed) {}
  void write(SafetensorsWriter& out, DType dtype, uint64_t count, float scale, float offset) {
    const size_t esize = size_t(dtype_info(dtype).block_bytes);
    buf_.resize(kChunk * esize);
    while (count > 0) {
      const uint64_t n = std::min<uint64_t>(count, kChunk);
      for (uint64_t i = 0; i < n; ++i) {
        const float v = offset + scale * rng_.uniform();
        if (dtype == DType::F32) std::memcpy(&buf_[i * 4], &v, 4);
        else {
          const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
          std::memcpy(&buf_[i * 2], &h, 2);
        }
      }
      out.append(buf_.data(), n * esize);
      count -= n;
    }
  }

 private:
  static constexpr uint64_t kChunk = 1 << 20;
  Xorshift rng_;
  std::vector<unsigned char> buf_;
};

struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  float scale, offset;
  bool is_float32;  // small parameters kept in f32
};

}  // namespace

std::vector<std::string> synth_presets() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.emplace_back(p.name);
  return names;
}

namespace {

nlohmann::ordered_json synth_config(const Preset& p, int L, uint64_t seed) {
  return {
      {"architectures", {"Qwen3_5MoeForCausalLM"}}, {"model_type", "qwen3_5_moe_text"},
      {"vocab_size", kVocab}, {"hidden_size", p.hidden}, {"num_hidden_layers", L},
      {"num_attention_heads", p.heads}, {"num_key_value_heads", p.kv_heads}, {"head_dim", kHeadDim},
      {"linear_num_key_heads", p.lin_k_heads}, {"linear_num_value_heads", p.lin_v_heads},
      {"linear_key_head_dim", kLinDim}, {"linear_value_head_dim", kLinDim}, {"linear_conv_kernel_dim", kConv},
      {"num_experts", p.experts}, {"num_experts_per_tok", p.top_k}, {"moe_intermediate_size", p.moe_inter},
      {"shared_expert_intermediate_size", p.shared_inter}, {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", false},
      {"max_position_embeddings", 262144}, {"full_attention_interval", 4},
      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e7}, {"partial_rotary_factor", 0.25}}},
      {"synthetic", {{"like", p.name}, {"seed", seed}}}};
}

// The tensors of the checkpoint in Hugging Face's names, experts fused as transformers stores them.
std::vector<Spec> synth_specs(const Preset& p, int L) {
  const int64_t H = p.hidden, V = kVocab, E = p.experts, I = p.moe_inter, Is = p.shared_inter;
  const int64_t nv = p.lin_v_heads, conv_dim = 2 * int64_t(p.lin_k_heads) * kLinDim + nv * kLinDim;
  auto lin = [](int64_t in) { return float(1.0 / std::sqrt(double(in))); };
  std::vector<Spec> specs;
  auto add = [&](std::string name, std::vector<int64_t> shape, float scale, float offset = 0.0f, bool f32 = false) {
    specs.push_back(Spec{std::move(name), std::move(shape), scale, offset, f32});
  };
  add("model.embed_tokens.weight", {V, H}, 1.0f);
  for (int i = 0; i < L; ++i) {
    const std::string b = fmt::format("model.layers.{}.", i);
    add(b + "input_layernorm.weight", {H}, 0.1f, 0.0f, true);
    add(b + "post_attention_layernorm.weight", {H}, 0.1f, 0.0f, true);
    if ((i + 1) % 4 == 0) {
      add(b + "self_attn.q_proj.weight", {int64_t(p.heads) * kHeadDim * 2, H}, lin(H));
      add(b + "self_attn.k_proj.weight", {int64_t(p.kv_heads) * kHeadDim, H}, lin(H));
      add(b + "self_attn.v_proj.weight", {int64_t(p.kv_heads) * kHeadDim, H}, lin(H));
      add(b + "self_attn.o_proj.weight", {H, int64_t(p.heads) * kHeadDim}, lin(int64_t(p.heads) * kHeadDim));
      add(b + "self_attn.q_norm.weight", {kHeadDim}, 0.1f, 0.0f, true);
      add(b + "self_attn.k_norm.weight", {kHeadDim}, 0.1f, 0.0f, true);
    } else {
      add(b + "linear_attn.in_proj_qkv.weight", {conv_dim, H}, lin(H));
      add(b + "linear_attn.in_proj_z.weight", {nv * kLinDim, H}, lin(H));
      add(b + "linear_attn.in_proj_b.weight", {nv, H}, lin(H));
      add(b + "linear_attn.in_proj_a.weight", {nv, H}, lin(H));
      add(b + "linear_attn.conv1d.weight", {conv_dim, 1, kConv}, 0.5f, 0.0f, true);
      add(b + "linear_attn.dt_bias", {nv}, 0.5f, 0.5f, true);
      add(b + "linear_attn.A_log", {nv}, 1.0f, 1.0f, true);
      add(b + "linear_attn.norm.weight", {kLinDim}, 0.1f, 1.0f, true);
      add(b + "linear_attn.out_proj.weight", {H, nv * kLinDim}, lin(nv * kLinDim));
    }
    add(b + "mlp.gate.weight", {E, H}, lin(H));
    add(b + "mlp.experts.gate_up_proj", {E, 2 * I, H}, lin(H));
    add(b + "mlp.experts.down_proj", {E, H, I}, lin(I));
    add(b + "mlp.shared_expert.gate_proj.weight", {Is, H}, lin(H));
    add(b + "mlp.shared_expert.up_proj.weight", {Is, H}, lin(H));
    add(b + "mlp.shared_expert.down_proj.weight", {H, Is}, lin(Is));
    add(b + "mlp.shared_expert_gate.weight", {1, H}, lin(H));
  }
  add("model.norm.weight", {H}, 0.1f, 0.0f, true);
  add("lm_head.weight", {V, H}, lin(H));
  return specs;
}

}  // namespace

uint64_t write_synthetic_model(const std::filesystem::path& dir, const SynthOptions& o) {
  const Preset& p = find_preset(o.like);
  if (!is_float_weight(o.dtype)) fail("synth: --dtype must be f32, f16 or bf16");
  const int L = o.layers > 0 ? o.layers : p.layers;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("{}: cannot create folder: {}", dir.string(), ec.message());
  const nlohmann::ordered_json cfg = synth_config(p, L, o.seed);
  const std::vector<Spec> specs = synth_specs(p, L);

  SafetensorsWriter out(dir / "model.safetensors");
  for (const Spec& s : specs) out.declare(s.name, s.is_float32 ? DType::F32 : o.dtype, s.shape);
  out.begin_data();
  RandomFill rng(o.seed);
  {
    Progress progress;
    for (const Spec& s : specs) {
      uint64_t n = 1;
      for (int64_t d : s.shape) n *= uint64_t(d);
      rng.write(out, s.is_float32 ? DType::F32 : o.dtype, n, s.scale, s.offset);
      progress.add(n * uint64_t(dtype_info(s.is_float32 ? DType::F32 : o.dtype).block_bytes), out.data_bytes());
    }
  }
  out.finish();

  const std::filesystem::path cfg_path = dir / "config.json";
  const std::filesystem::path tmp = cfg_path.string() + ".partial";
  {
    std::ofstream f(tmp);
    f << cfg.dump(2) << "\n";
    if (!f) fail("{}: write failed", cfg_path.string());
  }
  std::filesystem::rename(tmp, cfg_path);
  return out.data_bytes();
}

}  // namespace fm

namespace fm {

namespace {

// GGUF's conventions for the random values: zero-centred norms are stored as 1 + w, A_log as
// -exp(A_log); everything else is as drawn.
enum class Fold { None, PlusOne, NegExp };

struct GgufSpec {
  std::string name;
  std::vector<int64_t> shape;
  float scale, offset;
  DType dtype;
  Fold fold = Fold::None;
};

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// The Hugging Face specs renamed and reshaped as llama.cpp's converter stores them, with each
// tensor's type: F32 for vectors, the router and the DeltaNet gates (as llama.cpp keeps them);
// where rows are not whole blocks, Q8_0 or F16 (as llama-quantize falls back).
std::vector<GgufSpec> gguf_specs(const std::vector<Spec>& hf, const SynthOptions& o) {
  std::vector<GgufSpec> out;
  auto type_for = [](DType t, int64_t cols) {
    if (cols % dtype_info(t).block == 0) return t;
    return is_quantized(t) && cols % dtype_info(DType::Q8_0).block == 0 ? DType::Q8_0 : DType::F16;
  };
  for (const Spec& s : hf) {
    if (ends_with(s.name, "mlp.experts.gate_up_proj") || ends_with(s.name, "mlp.experts.down_proj")) {
      const std::string blk = "blk." + s.name.substr(13, s.name.find(".mlp.") - 13) + ".";
      const int64_t E = s.shape[0], rows = s.shape[1], cols = s.shape[2];
      const DType t = type_for(o.expert_dtype, cols);
      if (ends_with(s.name, "gate_up_proj")) {
        out.push_back(GgufSpec{blk + "ffn_gate_exps.weight", {E, rows / 2, cols}, s.scale, s.offset, t});
        out.push_back(GgufSpec{blk + "ffn_up_exps.weight", {E, rows / 2, cols}, s.scale, s.offset, t});
      } else {
        out.push_back(GgufSpec{blk + "ffn_down_exps.weight", {E, rows, cols}, s.scale, s.offset, t});
      }
      continue;
    }
    GgufSpec g{gguf_tensor_name(s.name, Arch::Qwen35Moe), s.shape, s.scale, s.offset, DType::F32};
    FM_CHECK(!g.name.empty(), "no GGUF name for {}", s.name);
    if (ends_with(s.name, "conv1d.weight")) g.shape = {s.shape[0], s.shape[2]};
    if (ends_with(s.name, "shared_expert_gate.weight")) g.shape = {s.shape[1]};
    if (ends_with(s.name, "layernorm.weight") || ends_with(s.name, "q_norm.weight") ||
        ends_with(s.name, "k_norm.weight") || s.name == "model.norm.weight")
      g.fold = Fold::PlusOne;
    if (ends_with(s.name, "A_log")) g.fold = Fold::NegExp;
    const bool keep_f32 = g.shape.size() == 1 || ends_with(s.name, "mlp.gate.weight") ||
                          ends_with(s.name, "in_proj_a.weight") || ends_with(s.name, "in_proj_b.weight") ||
                          ends_with(s.name, "conv1d.weight");
    if (!keep_f32) g.dtype = type_for(o.dtype, g.shape.back());
    out.push_back(std::move(g));
  }
  return out;
}


}  // namespace

uint64_t write_synthetic_gguf(const std::filesystem::path& file, const SynthOptions& o) {
  const Preset& p = find_preset(o.like);
  for (DType t : {o.dtype, o.expert_dtype})
    if (!can_quantize(t)) fail("synth: type {} cannot be written", dtype_name(t));
  const int L = o.layers > 0 ? o.layers : p.layers;
  const nlohmann::ordered_json cfg = synth_config(p, L, o.seed);
  const ModelConfig config = parse_config(nlohmann::json::parse(cfg.dump()), fmt::format("synthetic {}", p.name));
  const std::vector<GgufSpec> specs = gguf_specs(synth_specs(p, L), o);

  GgufWriter out(file);
  write_gguf_model_metadata(out, config, o.dtype, fmt::format("synthetic {} (random weights, seed {})", p.name, o.seed));
  // llama.cpp refuses a model without a vocabulary; any byte-level BPE one serves random weights.
  if (!o.tokenizer.empty())
    write_tokenizer_metadata(out, Tokenizer::load(o.tokenizer), TokenizerMetadataOptions{.vocab_size = kVocab});
  for (const GgufSpec& s : specs) out.declare(s.name, s.dtype, s.shape);
  out.begin_data();

  constexpr int kPool = 61;  // rows drawn per tensor; a prime, so row r and r + E*rows differ
  Xorshift rng(o.seed);
  std::vector<float> row;
  std::vector<std::byte> pool, chunk;
  Progress progress;
  for (const GgufSpec& s : specs) {
    const int64_t cols = s.shape.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < s.shape.size(); ++i) rows *= s.shape[i];
    const uint64_t row_bytes = *dtype_row_bytes(s.dtype, uint64_t(cols));
    const int64_t pool_rows = std::min<int64_t>(rows, kPool);
    row.resize(size_t(cols));
    pool.resize(size_t(row_bytes * uint64_t(pool_rows)));
    for (int64_t r = 0; r < pool_rows; ++r) {
      for (float& v : row) {
        v = s.offset + s.scale * rng.uniform();
        if (s.fold == Fold::PlusOne) v += 1.0f;
        if (s.fold == Fold::NegExp) v = -std::exp(v);
      }
      quantize_row(s.dtype, row.data(), cols, pool.data() + uint64_t(r) * row_bytes);
    }
    // Rows cycle through the pool in a shuffled order, in chunks of about 4 MB.
    const int64_t chunk_rows = std::max<int64_t>(1, int64_t((4u << 20) / row_bytes));
    chunk.resize(size_t(row_bytes * uint64_t(std::min(rows, chunk_rows))));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const int64_t n = std::min(chunk_rows, rows - r0);
      for (int64_t r = 0; r < n; ++r)
        std::memcpy(chunk.data() + uint64_t(r) * row_bytes,
                    pool.data() + uint64_t((r0 + r) * 7919 % pool_rows) * row_bytes, row_bytes);
      out.append(chunk.data(), uint64_t(n) * row_bytes);
      progress.add(uint64_t(n) * row_bytes, out.data_bytes());
    }
  }
  out.finish();
  return out.data_bytes();
}

}  // namespace fm
