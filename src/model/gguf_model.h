// GGUF as a model source: the file as a TensorSource for the weight binder, and the config read from
// its metadata.
#pragma once
#include "formats/gguf.h"
#include "model/config.h"

namespace fm {

class GgufTensors final : public TensorSource {
 public:
  explicit GgufTensors(GgufFile file) : file_(std::move(file)) {}
  const TensorView* find(std::string_view name) const override {
    const GgufTensor* t = file_.find_tensor(name);
    return t ? &t->view : nullptr;
  }
  const std::string& source() const override { return file_.path(); }
  bool locate(const std::byte* p, std::string* path, uint64_t* offset) const override {
    const MappedFile& m = file_.mapping();
    if (!m.data() || p < m.data() || p >= m.data() + m.size()) return false;
    *path = m.path();
    *offset = uint64_t(p - m.data());
    return true;
  }
  const GgufFile& file() const { return file_; }

 private:
  GgufFile file_;
};

ModelConfig config_from_gguf(const GgufFile& file);

}  // namespace fm
