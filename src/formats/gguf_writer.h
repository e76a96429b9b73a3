// Streaming GGUF v3 writer, for files that llama.cpp and gguf-py read. Set metadata and declare every
// tensor first (the header holds all offsets), then write the tensors' bytes in declaration order, in
// pieces of any size; each tensor is padded to the alignment as llama.cpp expects (it requires tensor
// i + 1 to start exactly at the padded end of tensor i). The file is written under a temporary name and
// renamed by finish(); a writer destroyed before finish() removes it, so an interrupted write never
// leaves a file that looks complete.
#pragma once
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/gguf.h"
#include "util/atomic_file.h"

namespace fm {

class GgufWriter {
 public:
  // An alignment other than 32 is recorded as general.alignment (uint32), as gguf-py does.
  explicit GgufWriter(std::filesystem::path path, uint32_t alignment = kGgufDefaultAlignment);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Metadata, written in the order set. Throws fm::Error for an empty or repeated key, for
  // general.alignment (set through the constructor) and for arrays of arrays, which llama.cpp rejects.
  void set(const std::string& key, GgufValue value);
  void set_u8(const std::string& key, uint8_t v) { set(key, GgufValue{v}); }
  void set_i8(const std::string& key, int8_t v) { set(key, GgufValue{v}); }
  void set_u16(const std::string& key, uint16_t v) { set(key, GgufValue{v}); }
  void set_i16(const std::string& key, int16_t v) { set(key, GgufValue{v}); }
  void set_u32(const std::string& key, uint32_t v) { set(key, GgufValue{v}); }
  void set_i32(const std::string& key, int32_t v) { set(key, GgufValue{v}); }
  void set_u64(const std::string& key, uint64_t v) { set(key, GgufValue{v}); }
  void set_i64(const std::string& key, int64_t v) { set(key, GgufValue{v}); }
  void set_f32(const std::string& key, float v) { set(key, GgufValue{v}); }
  void set_f64(const std::string& key, double v) { set(key, GgufValue{v}); }
  void set_bool(const std::string& key, bool v) { set(key, GgufValue{v}); }
  void set_string(const std::string& key, std::string v) { set(key, GgufValue{std::move(v)}); }
  // Any element type of GgufArray::Items: std::vector<std::string>, <int32_t>, <float>, ...
  template <class T>
  void set_array(const std::string& key, std::vector<T> values) {
    set(key, GgufValue{GgufArray{std::move(values)}});
  }

  // `shape` in PyTorch order (outermost first); stored reversed as GGML's ne. Throws fm::Error for a
  // repeated name or one of 64 bytes or more (llama.cpp's GGML_MAX_NAME), a type without a GGML id,
  // a rank outside 1..4, or an innermost dimension that is not a whole number of blocks.
  void declare(const std::string& name, DType dtype, const std::vector<int64_t>& shape);
  // Writes the header; then append() the tensors' bytes in declaration order.
  void begin_data();
  void append(const void* data, uint64_t nbytes);
  void finish();  // checks that every declared byte was written, then renames into place

  uint64_t data_bytes() const { return data_size_; }  // the data section, padding included

 private:
  struct Entry {
    std::string name;
    uint32_t ggml_type;
    std::vector<uint64_t> ne;
    uint64_t offset, nbytes;
  };
  void write(const void* data, uint64_t nbytes);
  void skip_finished_tensors();

  std::filesystem::path path_;
  uint32_t alignment_;
  std::vector<GgufKv> metadata_;
  std::set<std::string, std::less<>> keys_, names_;
  std::vector<Entry> entries_;
  uint64_t data_size_ = 0;
  size_t current_ = 0;         // the tensor append() is writing
  uint64_t current_done_ = 0;  // its bytes written so far
  std::optional<AtomicFile> file_;  // from begin_data() to finish()
};

}  // namespace fm
