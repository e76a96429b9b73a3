#include "util/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "util/error.h"

namespace fm {

AtomicFile::AtomicFile(std::filesystem::path path)
    : path_(std::move(path)), tmp_(path_.string() + ".partial" + std::to_string(::getpid())) {
  file_ = std::fopen(tmp_.c_str(), "wb");
  if (!file_) fail("{}: cannot create: {}", path_.string(), std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (file_) {
    std::fclose(file_);
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
}

void AtomicFile::write(const void* data, uint64_t nbytes) {
  FM_CHECK(file_, "write after commit");
  if (std::fwrite(data, 1, nbytes, file_) != nbytes) fail("{}: write failed: {}", path_.string(), std::strerror(errno));
}

void AtomicFile::commit() {
  FM_CHECK(file_, "commit twice");
  const bool flushed = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  const int err = errno;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  std::error_code ec;
  if (!flushed || !closed) {
    std::filesystem::remove(tmp_, ec);
    fail("{}: write failed: {}", path_.string(), std::strerror(flushed ? errno : err));
  }
  std::filesystem::rename(tmp_, path_, ec);
  if (ec) {
    std::filesystem::remove(tmp_, ec);
    fail("{}: cannot rename into place: {}", path_.string(), ec.message());
  }
}

}  // namespace fm
