#include "formats/safetensors_writer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace fm {

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path)
    : path_(std::move(path)), tmp_(path_.string() + ".partial" + std::to_string(::getpid())) {}

SafetensorsWriter::~SafetensorsWriter() {
  if (file_) {
    std::fclose(file_);
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
}

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
  file_ = std::fopen(tmp_.c_str(), "wb");
  if (!file_) fail("{}: cannot create: {}", tmp_.string(), std::strerror(errno));
  const uint64_t len = text.size();
  if (std::fwrite(&len, 8, 1, file_) != 1 || std::fwrite(text.data(), 1, text.size(), file_) != text.size())
    fail("{}: write failed: {}", tmp_.string(), std::strerror(errno));
}

void SafetensorsWriter::append(const void* data, uint64_t nbytes) {
  FM_CHECK(file_ && written_ + nbytes <= total_, "append past the declared tensors");
  if (std::fwrite(data, 1, nbytes, file_) != nbytes) fail("{}: write failed: {}", tmp_.string(), std::strerror(errno));
  written_ += nbytes;
}

void SafetensorsWriter::finish() {
  FM_CHECK(file_ && written_ == total_, "finish with {} of {} bytes written", written_, total_);
  const bool ok = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  std::fclose(file_);
  file_ = nullptr;
  std::error_code ec;
  if (!ok) {
    std::filesystem::remove(tmp_, ec);
    fail("{}: write failed: {}", path_.string(), std::strerror(errno));
  }
  std::filesystem::rename(tmp_, path_, ec);
  if (ec) {
    std::filesystem::remove(tmp_, ec);
    fail("{}: cannot rename into place", path_.string());
  }
}

}  // namespace fm
