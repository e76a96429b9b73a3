// A loaded model: config, the mapped checkpoint and the weights bound to it. Loading maps the files
// and converts only the small vectors, so its cost grows with the dense part, not the experts.
#pragma once
#include <filesystem>
#include <memory>

#include "formats/safetensors.h"
#include "model/config.h"
#include "model/weights.h"

namespace fm {

struct Model {
  ModelConfig config;
  std::unique_ptr<TensorSource> tensors;  // owns the mappings the weights point into
  ModelWeights weights;

  // A Hugging Face checkpoint folder (config.json + safetensors) or a GGUF file.
  static std::unique_ptr<Model> load(const std::filesystem::path& path);
};

}  // namespace fm
