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

// The whole pages of [p, p + n), which lie in a read-only file mapping, leave the process's resident
// set: they stay in the page cache (reclaimable), and reading them again maps them back in. For
// mapped weights the process has made its own copy of.
void drop_mapped_pages(const std::byte* p, uint64_t n);

}  // namespace fm
