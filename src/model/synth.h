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
  DType dtype = DType::BF16;      // safetensors: every matrix; GGUF: the dense matrices
  DType expert_dtype = DType::BF16;  // GGUF only: the routed experts
  uint64_t seed = 1;
  std::filesystem::path tokenizer;  // GGUF only: a tokenizer to embed (model folder, tokenizer.json, .gguf)
};

std::vector<std::string> synth_presets();

// Writes config.json (qwen3_5_moe_text) and model.safetensors (experts fused into 3-D tensors) into
// `dir`, created if needed. Returns the bytes written. Progress goes to stderr.
uint64_t write_synthetic_model(const std::filesystem::path& dir, const SynthOptions& options);

// Writes a GGUF file as llama.cpp names and lays it out (qwen35moe), dense matrices of type
// options.dtype and experts of options.expert_dtype, any type flashmoe can quantize to. Matrix rows
// are drawn from a pool of random rows quantized once per tensor shape, so writing runs at disk
// speed whatever the type. Written under a temporary name, renamed when complete. Returns bytes.
uint64_t write_synthetic_gguf(const std::filesystem::path& file, const SynthOptions& options);

}  // namespace fm
