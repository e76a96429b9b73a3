// safetensors reader: one file, or a sharded checkpoint through model.safetensors.index.json.
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:
// [begin, end]}, "__metadata__": {...}}, then the data; offsets are relative to the data start.
// Every header is validated before any tensor is used: known dtype, non-negative shape, offsets
// inside the file, size = numel x element size, no two tensors overlapping. Errors name the file
// and the tensor.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/tensor.h"
#include "util/mapped_file.h"

namespace fm {

class SafetensorsArchive final : public TensorSource {
 public:
  // A folder holding model.safetensors or model.safetensors.index.json (and its shards).
  static SafetensorsArchive open_dir(const std::filesystem::path& dir);
  // A single .safetensors file.
  static SafetensorsArchive open_file(const std::filesystem::path& file);

  const TensorView* find(std::string_view name) const override;
  // Throws fm::Error "<dir>: tensor '<name>' not found" when absent.
  const TensorView& get(std::string_view name) const;
  const std::map<std::string, TensorView, std::less<>>& tensors() const { return tensors_; }
  const std::string& source() const override { return source_; }
  bool locate(const std::byte* p, std::string* path, uint64_t* offset) const override;
  uint64_t total_bytes() const;

 private:
  void add_file(const std::filesystem::path& file);
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorView, std::less<>> tensors_;
  std::string source_;
};

}  // namespace fm
