#include "model/config.h"

#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "formats/dtype.h"
#include "util/error.h"

namespace fm {

using nlohmann::json;

namespace {

// Reads typed keys out of one JSON object. `prefix` ("text_config.") makes messages name the key the
// way the user sees it in the file. JSON null counts as absent: Hugging Face writes null for unset
// optional settings.
class Reader {
 public:
  Reader(const json& obj, std::string prefix, const std::string& source)
      : obj_(obj), prefix_(std::move(prefix)), source_(source) {}

  const json* find(const char* key) const {
    auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }
  bool has(const char* key) const { return find(key) != nullptr; }
  std::string name(const std::string& key) const { return prefix_ + key; }

  int req_int(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) fail("{}: missing config key '{}'", source_, name(key));
    return to_int(*v, key);
  }
  // Sizes, counts: a zero or negative value is a broken config.
  int req_pos(const char* key) const { return positive(req_int(key), key); }
  int opt_int(const char* key, int fallback) const {
    const json* v = find(key);
    return v == nullptr ? fallback : to_int(*v, key);
  }
  double opt_num(const char* key, double fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_number()) fail("{}: config key '{}' must be a number, got {}", source_, name(key), v->dump());
    return v->get<double>();
  }
  bool opt_bool(const char* key, bool fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean())
      fail("{}: config key '{}' must be true or false, got {}", source_, name(key), v->dump());
    return v->get<bool>();
  }
  int positive(int value, const char* key) const {
    if (value <= 0) fail("{}: config key '{}' must be positive, got {}", source_, name(key), value);
    return value;
  }
  int to_int(const json& v, const std::string& key) const {
    if (!v.is_number_integer())
      fail("{}: config key '{}' must be an integer, got {}", source_, name(key), v.dump());
    if (v.is_number_unsigned()) {
      if (v.get<uint64_t>() > uint64_t(INT_MAX))
        fail("{}: config key '{}' is too large: {}", source_, name(key), v.dump());
    } else if (v.get<int64_t>() < INT_MIN) {
      fail("{}: config key '{}' is too small: {}", source_, name(key), v.dump());
    }
    return int(v.get<int64_t>());
  }

 private:
  const json& obj_;
  std::string prefix_;
  const std::string& source_;
};

std::vector<int> parse_eos(const json& v, const std::string& key, const std::string& source) {
  auto bad = [&]() {
    fail("{}: config key '{}' must be an integer or a list of integers, got {}", source, key, v.dump());
  };
  std::vector<int> ids;
  auto one = [&](const json& x) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT_MAX) bad();
    ids.push_back(int(x.get<int64_t>()));
  };
  if (v.is_array()) {
    for (const json& x : v) one(x);
  } else {
    one(v);
  }
  return ids;
}

// rope_type values that mean plain RoPE. Qwen3.5's "default" also carries an mrope section, which only
// differs from plain RoPE when image/video positions are in play; text tokens share one position on all
// three axes.
bool is_default_rope(const std::string& type) { return type == "default"; }

void read_rope(const Reader& r, bool qwen35, ModelConfig& c) {
  const std::string& src = c.source;
  double theta = 10000.0;
  double factor = qwen35 ? 0.25 : 1.0;
  theta = r.opt_num("rope_theta", theta);
  factor = r.opt_num("partial_rotary_factor", factor);

  if (const json* rp = r.find("rope_parameters")) {
    if (!rp->is_object()) fail("{}: config key '{}' must be an object", src, r.name("rope_parameters"));
    Reader p(*rp, r.name("rope_parameters."), src);
    if (const json* type = p.find("rope_type")) {
      if (!type->is_string() || !is_default_rope(type->get<std::string>()))
        fail("{}: config key '{}' is {}: RoPE scaling is not supported (only 'default')", src,
             p.name("rope_type"), type->dump());
    }
    theta = p.opt_num("rope_theta", theta);
    factor = p.opt_num("partial_rotary_factor", factor);
    // M-RoPE's split of the rotary frequencies over (time, height, width); kept for GGUF export.
    if (const json* sections = p.find("mrope_section"); sections && sections->is_array())
      for (const json& v : *sections)
        if (v.is_number_integer()) c.mrope_section.push_back(v.get<int>());
  }
  // Older (transformers 4.x) configs spell scaling as rope_scaling; refuse it for the same reason, so
  // a YaRN-extended checkpoint never runs silently with the wrong positions.
  if (const json* rs = r.find("rope_scaling")) {
    std::string type = "?";
    if (rs->is_object()) {
      auto it = rs->find("rope_type");
      if (it == rs->end()) it = rs->find("type");
      if (it != rs->end() && it->is_string()) type = it->get<std::string>();
    }
    if (!is_default_rope(type))
      fail("{}: config key '{}' is {}: RoPE scaling is not supported", src, r.name("rope_scaling"),
           rs->dump());
  }

  if (!(theta > 0)) fail("{}: rope_theta must be positive, got {}", src, theta);
  if (!(factor > 0 && factor <= 1)) fail("{}: partial_rotary_factor must be in (0, 1], got {}", src, factor);
  c.rope_theta = float(theta);
  // As transformers computes it: int(head_dim * partial_rotary_factor).
  c.rotary_dim = int(double(c.head_dim) * factor);
  if (c.rotary_dim <= 0 || c.rotary_dim % 2 != 0 || c.rotary_dim > c.head_dim)
    fail(
        "{}: rotary dimension {} (head_dim {} x partial_rotary_factor {}) must be even, positive and at most "
        "head_dim",
        src, c.rotary_dim, c.head_dim, factor);
}

void read_qwen35(const Reader& r, ModelConfig& c) {
  const std::string& src = c.source;
  c.arch = Arch::Qwen35Moe;
  c.attn_output_gate = true;
  c.zero_centred_norm = true;
  c.norm_topk_prob = true;
  c.num_experts = r.req_pos("num_experts");
  c.linear_num_k_heads = r.req_pos("linear_num_key_heads");
  c.linear_num_v_heads = r.req_pos("linear_num_value_heads");
  c.linear_k_head_dim = r.req_pos("linear_key_head_dim");
  c.linear_v_head_dim = r.req_pos("linear_value_head_dim");
  c.linear_conv_kernel = r.req_pos("linear_conv_kernel_dim");
  c.shared_expert_intermediate_size = r.req_pos("shared_expert_intermediate_size");
  // Each key head is shared by a group of value heads (GQA-style), so the counts must divide.
  if (c.linear_num_v_heads % c.linear_num_k_heads != 0)
    fail("{}: {} ({}) must be a multiple of {} ({})", src, r.name("linear_num_value_heads"),
         c.linear_num_v_heads, r.name("linear_num_key_heads"), c.linear_num_k_heads);

  c.layer_kinds.assign(size_t(c.num_layers), LayerKind::LinearAttention);
  if (const json* types = r.find("layer_types")) {
    const std::string key = r.name("layer_types");
    if (!types->is_array()) fail("{}: config key '{}' must be a list", src, key);
    if (types->size() != size_t(c.num_layers))
      fail("{}: config key '{}' has {} entries but num_hidden_layers is {}", src, key, types->size(),
           c.num_layers);
    for (size_t i = 0; i < types->size(); ++i) {
      const json& t = (*types)[i];
      if (t.is_string() && t.get<std::string>() == "full_attention")
        c.layer_kinds[i] = LayerKind::FullAttention;
      else if (!(t.is_string() && t.get<std::string>() == "linear_attention"))
        fail("{}: config key '{}[{}]' is {} (expected \"linear_attention\" or \"full_attention\")", src, key,
             i, t.dump());
    }
  } else {
    const int interval = r.positive(r.opt_int("full_attention_interval", 4), "full_attention_interval");
    for (int i = 0; i < c.num_layers; ++i)
      if ((i + 1) % interval == 0) c.layer_kinds[size_t(i)] = LayerKind::FullAttention;
  }
  c.layer_is_moe.assign(size_t(c.num_layers), true);
}

void read_qwen3(const Reader& r, ModelConfig& c) {
  const std::string& src = c.source;
  c.arch = Arch::Qwen3Moe;
  c.attn_output_gate = false;
  c.zero_centred_norm = false;
  c.shared_expert_intermediate_size = 0;
  c.layer_kinds.assign(size_t(c.num_layers), LayerKind::FullAttention);
  if (r.opt_bool("use_sliding_window", false))
    fail("{}: use_sliding_window is true: sliding-window attention is not supported", src);
  // transformers' Qwen3MoeConfig default: routing weights are the raw softmax probabilities of the top k.
  c.norm_topk_prob = r.opt_bool("norm_topk_prob", false);

  const char* experts_key =
      r.has("num_experts") || !r.has("num_local_experts") ? "num_experts" : "num_local_experts";
  c.num_experts = r.req_int(experts_key);
  if (c.num_experts < 0)
    fail("{}: config key '{}' must not be negative, got {}", src, r.name(experts_key), c.num_experts);

  const int step = r.positive(r.opt_int("decoder_sparse_step", 1), "decoder_sparse_step");
  std::set<int> mlp_only;
  if (const json* m = r.find("mlp_only_layers")) {
    if (!m->is_array())
      fail("{}: config key '{}' must be a list of layer indices", src, r.name("mlp_only_layers"));
    for (const json& x : *m) {
      const int i = r.to_int(x, "mlp_only_layers");
      if (i < 0 || i >= c.num_layers)
        fail("{}: config key '{}' names layer {}, but there are {} layers", src, r.name("mlp_only_layers"), i,
             c.num_layers);
      mlp_only.insert(i);
    }
  }
  c.layer_is_moe.resize(size_t(c.num_layers));
  bool any_dense = false;
  for (int i = 0; i < c.num_layers; ++i) {
    const bool moe = !mlp_only.count(i) && c.num_experts > 0 && (i + 1) % step == 0;
    c.layer_is_moe[size_t(i)] = moe;
    any_dense = any_dense || !moe;
  }
  if (any_dense) c.intermediate_size = r.req_pos("intermediate_size");
}

// MLX's quantization entry: "quantization" (mlx_lm), or "quantization_config" where it holds MLX's
// keys (mlx_lm writes both; "quantization_config" of other tools names a quant_method flashmoe does
// not read).
void read_mlx_quantization(const json& root, const json* text, ModelConfig& c) {
  const std::string& src = c.source;
  const json* q = nullptr;
  std::string key;
  for (const json* obj : {&root, text}) {
    if (!obj || q) continue;
    const std::string prefix = obj == &root ? "" : "text_config.";
    if (auto it = obj->find("quantization"); it != obj->end() && !it->is_null()) {
      q = &*it;
      key = prefix + "quantization";
    } else if (auto jt = obj->find("quantization_config"); jt != obj->end() && !jt->is_null()) {
      if (jt->is_object() && jt->contains("quant_method"))
        fail("{}: config key '{}quantization_config' has quant_method {}: only MLX quantization (or none) is "
             "supported for safetensors checkpoints",
             src, prefix, (*jt)["quant_method"].dump());
      q = &*jt;
      key = prefix + "quantization_config";
    }
  }
  if (!q) return;
  if (!q->is_object()) fail("{}: config key '{}' must be an object", src, key);
  auto params = [&](const json& obj, const std::string& name, const MlxQuantization::Params* fallback) {
    const Reader r(obj, name + ".", src);
    MlxQuantization::Params p;
    p.bits = fallback && !r.has("bits") ? fallback->bits : r.req_int("bits");
    p.group_size = fallback && !r.has("group_size") ? fallback->group_size : r.req_int("group_size");
    if (const json* mode = r.find("mode"); mode && !(mode->is_string() && mode->get<std::string>() == "affine"))
      fail("{}: config key '{}' is {}: only MLX's affine quantization is supported", src, r.name("mode"),
           mode->dump());
    if (!mlx_dtype(p.bits))
      fail("{}: config key '{}' is {}: MLX quantization with {} bits is not supported (2, 3, 4, 6 or 8)", src,
           r.name("bits"), p.bits, p.bits);
    if (p.group_size != 32 && p.group_size != 64 && p.group_size != 128)
      fail("{}: config key '{}' is {}: MLX group size must be 32, 64 or 128", src, r.name("group_size"),
           p.group_size);
    return p;
  };
  MlxQuantization& m = c.mlx_quant;
  m.present = true;
  m.defaults = params(*q, key, nullptr);
  for (const auto& [name, v] : q->items()) {
    if (v.is_object())
      m.per_module[name] = params(v, key + "." + name, &m.defaults);
    else if (v.is_boolean())
      m.per_module[name] = v.get<bool>() ? std::optional(m.defaults) : std::nullopt;
  }
}

}  // namespace

ModelConfig parse_config(const json& root, const std::string& source) {
  if (!root.is_object()) fail("{}: config is not a JSON object", source);
  ModelConfig c;
  c.source = source;

  std::string model_type;
  if (auto it = root.find("model_type"); it != root.end())
    model_type = it->is_string() ? it->get<std::string>() : it->dump();
  c.model_type = model_type;

  const bool qwen35 = model_type == "qwen3_5_moe" || model_type == "qwen3_5_moe_text";
  if (!qwen35 && model_type != "qwen3_moe")
    fail("{}: unsupported architecture '{}' (supported: qwen3_5_moe, qwen3_5_moe_text, qwen3_moe)", source,
         model_type);

  // The multimodal wrapper keeps the language model's settings under text_config; the vision tower's
  // settings are ignored (text-only inference).
  const json* text = &root;
  std::string prefix;
  if (model_type == "qwen3_5_moe") {
    auto it = root.find("text_config");
    if (it == root.end() || it->is_null()) fail("{}: missing config key 'text_config'", source);
    if (!it->is_object()) fail("{}: config key 'text_config' must be an object", source);
    text = &*it;
    prefix = "text_config.";
  }
  const Reader r(*text, prefix, source);
  const Reader top(root, "", source);

  c.vocab_size = r.req_pos("vocab_size");
  c.hidden_size = r.req_pos("hidden_size");
  c.num_layers = r.req_pos("num_hidden_layers");
  c.num_heads = r.req_pos("num_attention_heads");
  c.num_kv_heads = r.req_pos("num_key_value_heads");
  c.moe_intermediate_size = r.req_pos("moe_intermediate_size");
  c.num_experts_per_tok = r.req_pos("num_experts_per_tok");
  c.head_dim = r.positive(r.opt_int("head_dim", c.hidden_size / c.num_heads), "head_dim");
  c.max_position_embeddings =
      r.positive(r.opt_int("max_position_embeddings", 32768), "max_position_embeddings");
  const double eps = r.opt_num("rms_norm_eps", 1e-6);
  if (!(eps > 0)) fail("{}: config key '{}' must be positive, got {}", source, r.name("rms_norm_eps"), eps);
  c.rms_norm_eps = float(eps);
  c.tie_word_embeddings = r.has("tie_word_embeddings") ? r.opt_bool("tie_word_embeddings", false)
                                                       : top.opt_bool("tie_word_embeddings", false);

  if (c.num_heads % c.num_kv_heads != 0)
    fail("{}: {} ({}) must be a multiple of {} ({})", source, r.name("num_attention_heads"), c.num_heads,
         r.name("num_key_value_heads"), c.num_kv_heads);

  if (qwen35)
    read_qwen35(r, c);
  else
    read_qwen3(r, c);
  read_rope(r, qwen35, c);

  bool any_moe = false;
  for (bool m : c.layer_is_moe) any_moe = any_moe || m;
  if (any_moe && c.num_experts_per_tok > c.num_experts)
    fail("{}: {} ({}) must not exceed the number of experts ({})", source, r.name("num_experts_per_tok"),
         c.num_experts_per_tok, c.num_experts);

  read_mlx_quantization(root, text == &root ? nullptr : text, c);

  if (const json* eos = r.find("eos_token_id"))
    c.eos_token_ids = parse_eos(*eos, r.name("eos_token_id"), source);
  else if (const json* root_eos = top.find("eos_token_id"))
    c.eos_token_ids = parse_eos(*root_eos, "eos_token_id", source);
  return c;
}

ModelConfig load_config(const std::filesystem::path& config_json) {
  const std::string path = config_json.string();
  std::error_code ec;
  if (std::filesystem::is_directory(config_json, ec)) fail("{}: is a directory, not a config file", path);
  std::ifstream in(config_json, std::ios::binary);
  if (!in) fail("{}: cannot open config file: {}", path, std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail("{}: cannot read config file", path);
  json root;
  try {
    root = json::parse(text.str());
  } catch (const json::parse_error& e) {
    fail("{}: invalid JSON: {}", path, e.what());
  }
  return parse_config(root, path);
}

}  // namespace fm
