#include "formats/safetensors_writer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace fm {

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path) : path_(std::move(path)) {}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::declare(const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  FM_CHECK(!file_, "declare after begin_data");
  uint64_t n = 1;
  for (int64_t d : shape) n *= uint64_t(d);
  const auto bytes = dtype_row_bytes(dtype, n);
  FM_CHECK(bytes.has_value(), "tensor {} is not a whole number of blocks", name);
  entries_.push_back(Entry{name, dtype, shape, total_, total_ + *bytes});
  total_ += *bytes;
}

void SafetensorsWriter::begin_data() {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"}};
  for (const Entry& e : entries_)
    header[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
  file_.emplace(path_);
  const uint64_t len = text.size();
  file_->write(&len, 8);
  file_->write(text.data(), text.size());
}

void SafetensorsWriter::append(const void* data, uint64_t nbytes) {
  FM_CHECK(file_ && written_ + nbytes <= total_, "append past the declared tensors");
  file_->write(data, nbytes);
  written_ += nbytes;
}

void SafetensorsWriter::finish() {
  FM_CHECK(file_ && written_ == total_, "finish with {} of {} bytes written", written_, total_);
  file_->commit();
  file_.reset();
}

}  // namespace fm
