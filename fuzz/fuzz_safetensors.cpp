// libFuzzer target for the safetensors reader. Any input must either open or throw fm::Error; a crash,
// a sanitizer report, an FM_CHECK abort or any other exception is a finding.
// SafetensorsArchive only opens paths, so each input is written to a memfd (a regular file in memory)
// and opened through /proc/self/fd. The reader then maps it: ASan cannot see a read past the end within
// the mapping's last page, but one past the page faults (SIGBUS), which libFuzzer reports.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "formats/safetensors.h"
#include "util/error.h"

namespace {

int memfd() {
  static const int fd = [] {
    const int f = ::memfd_create("fuzz.safetensors", MFD_CLOEXEC);
    if (f < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    return f;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd();
  if (::ftruncate(fd, 0) != 0 || (size > 0 && ::pwrite(fd, data, size, 0) != ssize_t(size))) {
    std::perror("memfd write");
    std::abort();
  }
  try {
    const auto archive = fm::SafetensorsArchive::open_file("/proc/self/fd/" + std::to_string(fd));
    // Touch every byte the reader vouched for.
    uint8_t sum = 0;
    for (const auto& [name, t] : archive.tensors())
      for (uint64_t i = 0; i < t.nbytes; ++i) sum = uint8_t(sum + uint8_t(t.data[i]));
    asm volatile("" : : "r"(sum));
  } catch (const fm::Error&) {
  }
  return 0;
}
