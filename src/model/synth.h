// Synthetic checkpoints with the real shapes of published models and random weights, for speed and
// scale tests of models we cannot download here. The routing of random weights is random, so
// these measure bandwidth, not expert prediction.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "formats/dtype.h"

namespace fm {

struct SynthOptions {
  std::string like;       // a preset name, see synth_presets()
  int layers = 0;         // 0: the preset's layer count
  DType dtype = DType::BF16;
  uint64_t seed = 1;
};

std::vector<std::string> synth_presets();

// Writes config.json (qwen3_5_moe_text) and model.safetensors (experts fused into 3-D tensors) into
// `dir`, created if needed. Returns the bytes written. Progress goes to stderr.
uint64_t write_synthetic_model(const std::filesystem::path& dir, const SynthOptions& options);

}  // namespace fm
