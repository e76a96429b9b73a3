// Reading the reference fixtures made by tools/make_fixtures.py (transformers, float32).
#pragma once
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "util/npy.h"

namespace fm::test {

inline const char* kFixtureModels[] = {"qwen35moe-vl-bf16",   "qwen35moe-text-f32", "qwen35moe-dkdv-bf16",
                                       "qwen3moe-f16",        "qwen3moe-nonorm-bf16", "qwen3moe-norm-bf16"};

struct Reference {
  std::string dir;
  std::vector<int32_t> prompt;
  std::vector<int32_t> greedy;
  NpyArray logits;  // [n_prompt + n_gen - 1][vocab]
};

inline Reference load_reference(const std::string& name) {
  Reference r;
  r.dir = std::string(FM_FIXTURES) + "/" + name;
  std::ifstream f(r.dir + "/ref.json");
  const nlohmann::json j = nlohmann::json::parse(f);
  r.prompt = j.at("prompt_ids").get<std::vector<int32_t>>();
  r.greedy = j.at("greedy_ids").get<std::vector<int32_t>>();
  r.logits = read_npy(r.dir + "/logits.npy");
  return r;
}

// Largest |a - b| over n floats.
inline double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0.0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, double(std::abs(a[i] - b[i])));
  return m;
}

}  // namespace fm::test
