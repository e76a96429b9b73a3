// Hyperparameters of the supported architectures, read from a Hugging Face config.json.
//   qwen3_5_moe       the published multimodal wrapper: text settings under "text_config"
//   qwen3_5_moe_text  the text model alone
//   qwen3_moe         Qwen3-MoE (full attention only, no shared expert)
// A missing or ill-typed key is an fm::Error naming the file and the key.
#pragma once
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace fm {

enum class Arch { Qwen35Moe, Qwen3Moe };

// MLX quantization as mlx_lm writes it in config.json: "quantization": {"group_size": 64, "bits": 4,
// "mode": "affine", "<module path>": {"group_size": .., "bits": ..} or false, ...} (also copied to
// "quantization_config"). A quantized Linear or Embedding X is stored as X.weight (uint32, packed),
// X.scales and X.biases; which modules are quantized is told by the presence of X.scales.
struct MlxQuantization {
  struct Params {
    int bits = 0;
    int group_size = 0;
  };
  bool present = false;
  Params defaults;
  std::map<std::string, std::optional<Params>> per_module;  // nullopt: the module is not quantized

  // The parameters for a module path ("model.layers.0.mlp.gate"): its entry, else the defaults.
  std::optional<Params> params_for(const std::string& module) const {
    if (auto it = per_module.find(module); it != per_module.end()) return it->second;
    return defaults;
  }
};
enum class LayerKind { LinearAttention, FullAttention };

struct ModelConfig {
  Arch arch = Arch::Qwen35Moe;
  std::string model_type;  // as config.json spells it
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;
  int max_position_embeddings = 0;
  std::vector<LayerKind> layer_kinds;  // [num_layers]

  // Full (softmax) attention.
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;           // leading dims of each head that are rotated (partial rotary)
  float rope_theta = 10000.0f;
  std::vector<int> mrope_section;  // Qwen3.5 M-RoPE sections (text-only input reduces to plain RoPE)
  bool attn_output_gate = false;   // Qwen3.5: q_proj emits [q_h | gate_h] per head, o = attn * sigmoid(gate)
  bool zero_centred_norm = false;  // Qwen3.5: RMSNorm weight w is applied as (1 + w)

  // Gated DeltaNet linear attention (Qwen3.5).
  int linear_num_k_heads = 0;
  int linear_num_v_heads = 0;
  int linear_k_head_dim = 0;
  int linear_v_head_dim = 0;
  int linear_conv_kernel = 0;

  // Mixture of experts.
  int num_experts = 0;
  int num_experts_per_tok = 0;
  int moe_intermediate_size = 0;
  int shared_expert_intermediate_size = 0;  // 0: no shared expert
  bool norm_topk_prob = true;
  std::vector<bool> layer_is_moe;  // [num_layers]; false: dense SwiGLU MLP of intermediate_size
  int intermediate_size = 0;       // dense MLP layers (Qwen3-MoE mlp_only_layers)

  std::vector<int> eos_token_ids;
  MlxQuantization mlx_quant;  // MLX-quantized checkpoints
  std::string source;  // the config file, for messages

  int linear_conv_dim() const { return 2 * linear_num_k_heads * linear_k_head_dim + linear_num_v_heads * linear_v_head_dim; }
};

ModelConfig load_config(const std::filesystem::path& config_json);
// `source` names the file in error messages.
ModelConfig parse_config(const nlohmann::json& root, const std::string& source);

}  // namespace fm
