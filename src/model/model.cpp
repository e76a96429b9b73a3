#include "model/model.h"

#include "util/error.h"

namespace fm {

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) fail("{}: not a model folder (expected config.json and safetensors)", dir.string());
  auto model = std::make_unique<Model>();
  model->config = load_config(dir / "config.json");
  model->archive = SafetensorsArchive::open_dir(dir);
  model->weights = bind_weights(model->config, model->archive, WeightLayout::HuggingFace);
  return model;
}

}  // namespace fm
