// The weights of one Qwen3.5-MoE / Qwen3-MoE model, bound to tensors of a checkpoint.
// Matrices stay in the mapped files in their stored type (Mat). Small vectors (norms, gates, conv
// taps) are converted to float32 once at load, with the architecture's conventions folded in:
// zero-centred RMSNorm weights become (1 + w); A_log becomes -exp(A_log).
// Shapes use transformers' [out][in] order: H = hidden, V = vocab, E = experts, I = expert FFN.
#pragma once
#include <functional>
#include <vector>

#include "formats/safetensors.h"
#include "model/config.h"
#include "ops/mat.h"

namespace fm {

struct FfnWeights {  // SwiGLU: down(silu(gate x) * up x)
  Mat gate;  // [I][H]
  Mat up;    // [I][H]
  Mat down;  // [H][I]
};

struct AttentionWeights {
  Mat q;  // [n_heads * head_dim * (output gate ? 2 : 1)][H]; with the gate, per head [q_h | gate_h]
  Mat k;  // [n_kv_heads * head_dim][H]
  Mat v;  // [n_kv_heads * head_dim][H]
  Mat o;  // [H][n_heads * head_dim]
  std::vector<float> q_norm;  // [head_dim]
  std::vector<float> k_norm;  // [head_dim]
};

struct DeltaNetWeights {
  Mat qkv;  // [2 * n_k * dk + n_v * dv][H], rows [Q | K | V]
  Mat z;    // [n_v * dv][H]
  Mat b;    // [n_v][H]
  Mat a;    // [n_v][H]
  Mat out;  // [H][n_v * dv]
  std::vector<float> conv;         // [conv_dim][kernel]
  std::vector<float> dt_bias;      // [n_v]
  std::vector<float> decay_scale;  // [n_v] = -exp(A_log)
  bool v_heads_tiled = false;      // K head of V head h: h % n_k (GGUF) rather than h / (n_v / n_k)
  std::vector<float> norm;         // [dv], gated RMSNorm weight (not zero-centred)
};

struct MoeWeights {
  Mat router;                      // [E][H]
  std::vector<FfnWeights> experts;  // [E]
  bool has_shared = false;
  FfnWeights shared;               // [I_s][H] / [H][I_s]
  Mat shared_gate;                 // [1][H]
};

struct LayerWeights {
  LayerKind kind = LayerKind::FullAttention;
  std::vector<float> input_norm;  // [H]
  std::vector<float> post_norm;   // [H]
  AttentionWeights attn;          // full-attention layers
  DeltaNetWeights linear;         // linear-attention layers
  bool is_moe = true;
  MoeWeights moe;                 // MoE layers
  FfnWeights mlp;                 // dense layers
};

struct ModelWeights {
  Mat embed;                      // [V][H]
  Mat lm_head;                    // [V][H]; the embedding when tied
  std::vector<float> final_norm;  // [H]
  std::vector<LayerWeights> layers;
  uint64_t dense_bytes = 0;       // bytes of weights outside the routed experts
  uint64_t expert_bytes = 0;      // bytes of all routed experts
};

// Calls fn(mat) for every matrix of the model (experts included), each once.
void for_each_matrix(const ModelWeights& w, const std::function<void(const Mat&)>& fn);
// The same, to change them (routed_expert: one of a layer's routed experts). A tied LM head is the
// embedding's matrix: visited once, as the embedding.
void for_each_matrix(ModelWeights& w, const std::function<void(Mat&, bool routed_expert)>& fn);

// How a checkpoint format names the weights and what it has already folded into them.
enum class WeightLayout {
  HuggingFace,  // transformers' names; zero-centred norms store w; A_log; V heads grouped per K head
  Gguf,         // llama.cpp's names; norms store 1 + w; ssm_a = -exp(A_log); V heads tiled
};

// llama.cpp's GGUF name of a Hugging Face tensor ("model.layers.3.self_attn.q_proj.weight" ->
// "blk.3.attn_q.weight"; the embedding, final norm and LM head too); "" for names with no single
// counterpart (routed experts, which GGUF stacks as blk.N.ffn_{gate,up,down}_exps.weight).
std::string gguf_tensor_name(const std::string& hf_name, Arch arch);

// Binds every tensor the config calls for; an absent tensor or one whose dtype or shape disagrees
// with the config is an fm::Error naming the file, the tensor and both shapes.
ModelWeights bind_weights(const ModelConfig& config, const TensorSource& tensors, WeightLayout layout);

}  // namespace fm
