// Streaming safetensors writer: declare every tensor first (the header needs all offsets), then
// write their bytes in declaration order, in pieces of any size. The file is written under a
// temporary name and renamed by finish(); a writer destroyed before finish() removes it, so an
// interrupted write never leaves a file that looks complete.
#pragma once
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "util/atomic_file.h"

namespace fm {

class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(std::filesystem::path path);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  void declare(const std::string& name, DType dtype, const std::vector<int64_t>& shape);
  // Writes the header; then append() the tensors' bytes in declaration order.
  void begin_data();
  void append(const void* data, uint64_t nbytes);
  void finish();  // checks that every declared byte was written, then renames into place

  uint64_t data_bytes() const { return total_; }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::filesystem::path path_;
  std::vector<Entry> entries_;
  uint64_t total_ = 0;
  uint64_t written_ = 0;
  std::optional<AtomicFile> file_;  // from begin_data() to finish()
};

}  // namespace fm
