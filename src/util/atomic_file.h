// A file written under a temporary name beside its destination and renamed into place by commit().
// Destroyed before commit(), it removes the temporary: an interrupted or failed write never leaves a
// file that looks complete.
#pragma once
#include <cstdint>
#include <cstdio>
#include <filesystem>

namespace fm {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path);  // throws fm::Error naming the file
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, uint64_t nbytes);
  void commit();  // flush, fsync, close, rename; throws fm::Error and removes the temporary on failure
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_, tmp_;
  FILE* file_ = nullptr;
};

}  // namespace fm
