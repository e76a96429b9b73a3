// A whole file mapped read-only. Model weights are never copied: tensors point into the mapping and
// the page cache backs them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace fm {

class MappedFile {
 public:
  MappedFile() = default;
  // Throws fm::Error naming the file when it cannot be opened or mapped.
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  const std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  std::string path_;
};

}  // namespace fm
