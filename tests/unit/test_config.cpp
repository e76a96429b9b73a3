// config.json parsing: the four fixtures, and malformed configs written to a temp dir (each must be an
// fm::Error naming the file and the key at fault).
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <fstream>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "util/error.h"

namespace fs = std::filesystem;
using fm::LayerKind;
using nlohmann::json;

namespace {

constexpr LayerKind L = LayerKind::LinearAttention;
constexpr LayerKind F = LayerKind::FullAttention;

using fm::test::TempDir;

fs::path fixture(const std::string& name) { return fs::path(FM_FIXTURES) / name / "config.json"; }

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// A fixture's config changed by `edit`, written to a real file and loaded from it; requires an fm::Error
// whose message names that file and contains each of `needles`.
void expect_config_error(const std::string& fixture_name, const std::function<void(json&)>& edit,
                         std::initializer_list<std::string> needles) {
  TempDir tmp;
  json root = read_json(fixture(fixture_name));
  edit(root);
  const fs::path file = tmp.path / "config.json";
  write_text(file, root.dump(2));
  fm::test::expect_error([&] { fm::load_config(file); }, needles, file.string());
}

fm::ModelConfig load_edited(const std::string& fixture_name, const std::function<void(json&)>& edit) {
  json root = read_json(fixture(fixture_name));
  edit(root);
  return fm::parse_config(root, "edited.json");
}

}  // namespace

TEST(Config, Qwen35VlBf16) {
  const fm::ModelConfig c = fm::load_config(fixture("qwen35moe-vl-bf16"));
  EXPECT_EQ(c.arch, fm::Arch::Qwen35Moe);
  EXPECT_EQ(c.model_type, "qwen3_5_moe");
  EXPECT_EQ(c.source, fixture("qwen35moe-vl-bf16").string());
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.layer_kinds, (std::vector<LayerKind>{L, L, L, F}));
  EXPECT_EQ(c.layer_is_moe, (std::vector<bool>{true, true, true, true}));
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.rotary_dim, 8);
  EXPECT_FLOAT_EQ(c.rope_theta, 1e7f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_TRUE(c.attn_output_gate);
  EXPECT_TRUE(c.zero_centred_norm);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.linear_num_k_heads, 2);
  EXPECT_EQ(c.linear_num_v_heads, 4);
  EXPECT_EQ(c.linear_k_head_dim, 16);
  EXPECT_EQ(c.linear_v_head_dim, 24);
  EXPECT_EQ(c.linear_conv_kernel, 4);
  EXPECT_EQ(c.linear_conv_dim(), 2 * 2 * 16 + 4 * 24);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 32);
  EXPECT_EQ(c.shared_expert_intermediate_size, 48);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_TRUE(c.eos_token_ids.empty());
}

TEST(Config, Qwen35TextF32) {
  const fm::ModelConfig c = fm::load_config(fixture("qwen35moe-text-f32"));
  EXPECT_EQ(c.arch, fm::Arch::Qwen35Moe);
  EXPECT_EQ(c.model_type, "qwen3_5_moe_text");
  EXPECT_EQ(c.num_layers, 6);
  EXPECT_EQ(c.layer_kinds, (std::vector<LayerKind>{L, F, L, L, F, L}));
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.linear_num_k_heads, 2);
  EXPECT_EQ(c.linear_num_v_heads, 8);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.rotary_dim, 8);
  EXPECT_EQ(c.shared_expert_intermediate_size, 48);
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>(6, true));
}

TEST(Config, Qwen3MoeF16) {
  const fm::ModelConfig c = fm::load_config(fixture("qwen3moe-f16"));
  EXPECT_EQ(c.arch, fm::Arch::Qwen3Moe);
  EXPECT_EQ(c.model_type, "qwen3_moe");
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.layer_kinds, std::vector<LayerKind>(4, F));
  EXPECT_EQ(c.num_experts, 8);  // from num_local_experts
  EXPECT_EQ(c.num_experts_per_tok, 3);
  EXPECT_EQ(c.layer_is_moe, (std::vector<bool>{true, true, false, true}));
  EXPECT_EQ(c.intermediate_size, 96);
  EXPECT_EQ(c.moe_intermediate_size, 32);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rotary_dim, 16);
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_FALSE(c.attn_output_gate);
  EXPECT_FALSE(c.zero_centred_norm);
  EXPECT_EQ(c.shared_expert_intermediate_size, 0);
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(Config, Qwen3MoeNoNormBf16) {
  const fm::ModelConfig c = fm::load_config(fixture("qwen3moe-nonorm-bf16"));
  EXPECT_EQ(c.arch, fm::Arch::Qwen3Moe);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.num_layers, 3);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_experts, 16);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_EQ(c.layer_is_moe, std::vector<bool>(3, true));
  EXPECT_EQ(c.rotary_dim, 16);
}

TEST(Config, DefaultsAndFallbacks) {
  // Without layer_types, every full_attention_interval-th layer is full attention.
  auto c = load_edited("qwen35moe-text-f32", [](json& j) { j.erase("layer_types"); });
  EXPECT_EQ(c.layer_kinds, (std::vector<LayerKind>{L, L, L, F, L, L}));
  c = load_edited("qwen35moe-text-f32", [](json& j) {
    j.erase("layer_types");
    j["full_attention_interval"] = 2;
  });
  EXPECT_EQ(c.layer_kinds, (std::vector<LayerKind>{L, F, L, F, L, F}));

  // Rope settings at top level (transformers 4.x layout), and the defaults when absent.
  c = load_edited("qwen3moe-f16", [](json& j) {
    j.erase("rope_parameters");
    j["rope_theta"] = 5e5;
  });
  EXPECT_FLOAT_EQ(c.rope_theta, 5e5f);
  EXPECT_EQ(c.rotary_dim, 16);
  c = load_edited("qwen3moe-f16", [](json& j) {
    j.erase("rope_parameters");
    j.erase("head_dim");
    j.erase("norm_topk_prob");
    j.erase("max_position_embeddings");
    j.erase("rms_norm_eps");
    j["num_experts"] = 4;
    j["eos_token_id"] = json::array({7, 9});
    j["decoder_sparse_step"] = 2;
    j["mlp_only_layers"] = json::array();
  });
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.head_dim, 16);  // 64 / 4
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.num_experts, 4);  // num_experts wins over num_local_experts
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{7, 9}));
  EXPECT_EQ(c.layer_is_moe, (std::vector<bool>{false, true, false, true}));
  EXPECT_EQ(c.source, "edited.json");

  c = load_edited("qwen35moe-vl-bf16", [](json& j) {
    j["text_config"].erase("tie_word_embeddings");
    j["tie_word_embeddings"] = true;
    j["text_config"].erase("rope_parameters");
    j["text_config"].erase("partial_rotary_factor");
    j["eos_token_id"] = 5;
  });
  EXPECT_TRUE(c.tie_word_embeddings);  // from the root when text_config lacks it
  EXPECT_EQ(c.rotary_dim, 8);          // Qwen3.5 default factor 0.25
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{5}));
}

// ---- errors ----

TEST(ConfigErrors, MissingFile) {
  TempDir tmp;
  const fs::path file = tmp.path / "config.json";
  try {
    fm::load_config(file);
    ADD_FAILURE() << "no error";
  } catch (const fm::Error& e) {
    EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
  }
}

TEST(ConfigErrors, InvalidJson) {
  TempDir tmp;
  const fs::path file = tmp.path / "config.json";
  write_text(file, R"({"model_type": "qwen3_moe", )");
  try {
    fm::load_config(file);
    ADD_FAILURE() << "no error";
  } catch (const fm::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(file.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("invalid JSON"), std::string::npos) << msg;
  }
}

TEST(ConfigErrors, UnknownModelType) {
  expect_config_error("qwen3moe-f16", [](json& j) { j["model_type"] = "llama"; },
                      {"unsupported architecture 'llama'", "qwen3_5_moe_text"});
  expect_config_error("qwen3moe-f16", [](json& j) { j.erase("model_type"); },
                      {"unsupported architecture ''"});
}

TEST(ConfigErrors, MissingKey) {
  expect_config_error("qwen35moe-vl-bf16", [](json& j) { j["text_config"].erase("hidden_size"); },
                      {"missing config key 'text_config.hidden_size'"});
  expect_config_error("qwen35moe-text-f32", [](json& j) { j.erase("linear_num_key_heads"); },
                      {"missing config key 'linear_num_key_heads'"});
  expect_config_error("qwen35moe-vl-bf16", [](json& j) { j.erase("text_config"); },
                      {"missing config key 'text_config'"});
  expect_config_error("qwen3moe-f16", [](json& j) { j.erase("num_local_experts"); },
                      {"missing config key 'num_experts'"});
  // A dense layer (mlp_only_layers) needs intermediate_size.
  expect_config_error("qwen3moe-f16", [](json& j) { j.erase("intermediate_size"); },
                      {"missing config key 'intermediate_size'"});
}

TEST(ConfigErrors, WrongType) {
  expect_config_error("qwen3moe-f16", [](json& j) { j["num_attention_heads"] = "4"; },
                      {"'num_attention_heads'", "must be an integer"});
  expect_config_error("qwen3moe-f16", [](json& j) { j["hidden_size"] = 64.5; },
                      {"'hidden_size'", "must be an integer"});
  expect_config_error("qwen35moe-vl-bf16", [](json& j) { j["text_config"] = json::array(); },
                      {"'text_config'", "must be an object"});
  expect_config_error("qwen3moe-f16", [](json& j) { j["norm_topk_prob"] = 1; }, {"'norm_topk_prob'"});
  expect_config_error("qwen3moe-f16", [](json& j) { j["eos_token_id"] = "</s>"; }, {"'eos_token_id'"});
}

TEST(ConfigErrors, BadLayerTypes) {
  expect_config_error("qwen35moe-text-f32", [](json& j) { j["layer_types"][3] = "sliding_attention"; },
                      {"'layer_types[3]'", "sliding_attention"});
  expect_config_error("qwen35moe-vl-bf16", [](json& j) { j["text_config"]["layer_types"].erase(0); },
                      {"'text_config.layer_types'", "3 entries", "4"});
}

TEST(ConfigErrors, ValueHeadsNotMultipleOfKeyHeads) {
  expect_config_error("qwen35moe-text-f32", [](json& j) { j["linear_num_value_heads"] = 5; },
                      {"linear_num_value_heads", "linear_num_key_heads", "multiple"});
}

TEST(ConfigErrors, SanityChecks) {
  expect_config_error("qwen3moe-f16", [](json& j) { j["num_key_value_heads"] = 3; },
                      {"num_attention_heads", "num_key_value_heads", "multiple"});
  expect_config_error("qwen3moe-f16", [](json& j) { j["num_experts_per_tok"] = 9; },
                      {"num_experts_per_tok", "must not exceed"});
  expect_config_error("qwen3moe-f16", [](json& j) { j["num_experts_per_tok"] = 0; },
                      {"'num_experts_per_tok'", "positive"});
  expect_config_error("qwen3moe-f16", [](json& j) { j["vocab_size"] = -1; }, {"'vocab_size'", "positive"});
  expect_config_error("qwen3moe-f16", [](json& j) { j["use_sliding_window"] = true; },
                      {"use_sliding_window"});
  expect_config_error("qwen3moe-f16", [](json& j) { j["mlp_only_layers"] = json::array({4}); },
                      {"'mlp_only_layers'", "layer 4"});
}

TEST(ConfigErrors, Rope) {
  expect_config_error("qwen3moe-f16", [](json& j) { j["rope_parameters"]["rope_type"] = "yarn"; },
                      {"rope_type", "yarn"});
  expect_config_error("qwen3moe-f16",
                      [](json& j) {
                        j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
                      },
                      {"rope_scaling"});
  // head_dim 16 x 0.3 = 4.8 -> 4 is fine; 16 x 0.2 = 3.2 -> 3 is odd.
  expect_config_error("qwen3moe-f16", [](json& j) { j["rope_parameters"]["partial_rotary_factor"] = 0.2; },
                      {"rotary dimension 3", "even"});
}
