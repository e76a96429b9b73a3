// Model hyperparameters from GGUF metadata, under llama.cpp's key names (gguf-py constants.py Keys;
// llama.cpp's qwen35moe / qwen3moe loaders). Errors name the file and the key.
#include <algorithm>

#include "model/config.h"
#include "model/gguf_model.h"
#include "util/error.h"

namespace fm {

ModelConfig config_from_gguf(const GgufFile& f) {
  ModelConfig c;
  c.source = f.path();
  const std::string arch = f.get_string("general.architecture");
  if (arch == "qwen35moe") {
    c.arch = Arch::Qwen35Moe;
  } else if (arch == "qwen3moe") {
    c.arch = Arch::Qwen3Moe;
  } else {
    fail("{}: unsupported architecture '{}' (supported: qwen35moe, qwen3moe)", f.path(), arch);
  }
  c.model_type = arch;
  auto key = [&](const char* k) { return arch + "." + k; };
  auto positive = [&](const std::string& k, uint64_t v) {
    if (v == 0 || v > (1u << 30)) fail("{}: metadata key '{}' = {} is out of range", f.path(), k, v);
    return int(v);
  };
  auto req = [&](const char* k) { return positive(key(k), f.get_u64(key(k))); };

  // Blocks include the multi-token-prediction layers, which come last.
  const uint64_t nextn = f.try_u64(key("nextn_predict_layers")).value_or(0);
  const uint64_t blocks = f.get_u64(key("block_count"));
  if (nextn >= blocks) fail("{}: {} ({}) leaves no decoder layers", f.path(), key("block_count"), blocks);
  c.num_layers = positive(key("block_count"), blocks - nextn);
  c.hidden_size = req("embedding_length");
  c.max_position_embeddings = req("context_length");
  c.num_heads = req("attention.head_count");
  // head_count_kv may be per layer (0 on recurrent layers); every attention layer has the same count.
  if (const GgufValue* v = f.find(key("attention.head_count_kv")); v && v->type() == GgufType::ARRAY) {
    int64_t kv = 0;
    for (int64_t n : f.get_int_array(key("attention.head_count_kv"))) kv = std::max(kv, n);
    c.num_kv_heads = positive(key("attention.head_count_kv"), uint64_t(kv));
  } else {
    c.num_kv_heads = req("attention.head_count_kv");
  }
  c.head_dim = f.try_u64(key("attention.key_length")) ? req("attention.key_length") : c.hidden_size / c.num_heads;
  c.rms_norm_eps = float(f.get_f64(key("attention.layer_norm_rms_epsilon")));
  c.rope_theta = float(f.try_f64(key("rope.freq_base")).value_or(10000.0));
  c.rotary_dim = f.try_u64(key("rope.dimension_count")) ? req("rope.dimension_count") : c.head_dim;
  if (c.rotary_dim > c.head_dim || c.rotary_dim % 2)
    fail("{}: {} = {} does not fit head dim {}", f.path(), key("rope.dimension_count"), c.rotary_dim, c.head_dim);
  if (c.num_heads % c.num_kv_heads)
    fail("{}: {} is not a multiple of {}", f.path(), key("attention.head_count"), key("attention.head_count_kv"));

  c.num_experts = req("expert_count");
  c.num_experts_per_tok = req("expert_used_count");
  if (c.num_experts_per_tok > c.num_experts)
    fail("{}: {} exceeds {}", f.path(), key("expert_used_count"), key("expert_count"));
  c.moe_intermediate_size = req("expert_feed_forward_length");
  c.shared_expert_intermediate_size = int(f.try_u64(key("expert_shared_feed_forward_length")).value_or(0));
  c.norm_topk_prob = f.try_bool(key("expert_weights_norm")).value_or(true);

  const GgufTensor& embd = f.get_tensor("token_embd.weight");
  if (embd.view.rank() != 2 || embd.view.shape[1] != c.hidden_size)
    fail("{}: tensor 'token_embd.weight' has shape {}, expected [vocab, {}]", f.path(), shape_str(embd.view.shape),
         c.hidden_size);
  c.vocab_size = int(embd.view.shape[0]);
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  if (auto eos = f.try_u64("tokenizer.ggml.eos_token_id")) c.eos_token_ids = {int(*eos)};

  c.layer_kinds.assign(size_t(c.num_layers), LayerKind::FullAttention);
  c.layer_is_moe.assign(size_t(c.num_layers), true);
  if (c.arch == Arch::Qwen35Moe) {
    c.attn_output_gate = true;
    c.zero_centred_norm = true;
    c.linear_conv_kernel = req("ssm.conv_kernel");
    c.linear_k_head_dim = req("ssm.state_size");
    c.linear_num_k_heads = req("ssm.group_count");
    c.linear_num_v_heads = req("ssm.time_step_rank");
    const int inner = req("ssm.inner_size");
    if (inner % c.linear_num_v_heads || c.linear_num_v_heads % c.linear_num_k_heads)
      fail("{}: {} = {} does not split into {} = {} heads over {} key heads", f.path(), key("ssm.inner_size"), inner,
           key("ssm.time_step_rank"), c.linear_num_v_heads, c.linear_num_k_heads);
    c.linear_v_head_dim = inner / c.linear_num_v_heads;
    if (auto sections = f.try_int_array(key("rope.dimension_sections")))
      for (int64_t v : *sections)
        if (v > 0) c.mrope_section.push_back(int(v));
    // One flag per layer (llama.cpp's converter writes it from layer_types), else the interval.
    const GgufValue* flags = f.find(key("attention.recurrent_layers"));
    if (flags && flags->type() == GgufType::ARRAY &&
        std::get<GgufArray>(flags->data).elem_type() == GgufType::BOOL) {
      const auto& v = std::get<std::vector<bool>>(std::get<GgufArray>(flags->data).items);
      if (v.size() < size_t(c.num_layers))
        fail("{}: metadata key '{}' has {} entries for {} layers", f.path(), key("attention.recurrent_layers"),
             v.size(), c.num_layers);
      for (int i = 0; i < c.num_layers; ++i)
        c.layer_kinds[size_t(i)] = v[size_t(i)] ? LayerKind::LinearAttention : LayerKind::FullAttention;
    } else if (flags) {
      const std::vector<int64_t> v = f.get_int_array(key("attention.recurrent_layers"));
      if (v.size() < size_t(c.num_layers))
        fail("{}: metadata key '{}' has {} entries for {} layers", f.path(), key("attention.recurrent_layers"),
             v.size(), c.num_layers);
      for (int i = 0; i < c.num_layers; ++i)
        c.layer_kinds[size_t(i)] = v[size_t(i)] ? LayerKind::LinearAttention : LayerKind::FullAttention;
    } else {
      const int interval = int(f.try_u64(key("full_attention_interval")).value_or(4));
      if (interval <= 0) fail("{}: {} must be positive", f.path(), key("full_attention_interval"));
      for (int i = 0; i < c.num_layers; ++i)
        c.layer_kinds[size_t(i)] = (i + 1) % interval == 0 ? LayerKind::FullAttention : LayerKind::LinearAttention;
    }
  } else {
    // Layers without a router are dense SwiGLU layers (Qwen3-MoE's mlp_only_layers).
    for (int i = 0; i < c.num_layers; ++i)
      c.layer_is_moe[size_t(i)] = f.find_tensor("blk." + std::to_string(i) + ".ffn_gate_inp.weight") != nullptr;
    if (std::count(c.layer_is_moe.begin(), c.layer_is_moe.end(), false) > 0) c.intermediate_size = req("feed_forward_length");
  }
  return c;
}

}  // namespace fm
