#include "model/model.h"

#include "model/gguf_model.h"
#include "util/error.h"

namespace fm {

std::unique_ptr<Model> Model::load(const std::filesystem::path& path) {
  std::error_code ec;
  auto model = std::make_unique<Model>();
  if (std::filesystem::is_regular_file(path, ec)) {
    auto gguf = std::make_unique<GgufTensors>(GgufFile::open(path));
    model->config = config_from_gguf(gguf->file());
    model->weights = bind_weights(model->config, *gguf, WeightLayout::Gguf);
    model->tensors = std::move(gguf);
    return model;
  }
  if (!std::filesystem::is_directory(path, ec))
    fail("{}: not found (expected a GGUF file or a folder with config.json and safetensors)", path.string());
  model->config = load_config(path / "config.json");
  auto archive = std::make_unique<SafetensorsArchive>(SafetensorsArchive::open_dir(path));
  model->weights = bind_weights(model->config, *archive, WeightLayout::HuggingFace);
  model->tensors = std::move(archive);
  return model;
}

}  // namespace fm
