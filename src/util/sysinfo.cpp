#include "util/sysinfo.h"

#include <cstdio>
#include <cstring>
#include <thread>

namespace fm {

namespace {
uint64_t status_kib(const char* key) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  uint64_t kib = 0;
  const size_t n = std::strlen(key);
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, key, n) == 0) {
      std::sscanf(line + n, " %lu", &kib);
      break;
    }
  std::fclose(f);
  return kib;
}
}  // namespace

uint64_t peak_rss_bytes() { return status_kib("VmHWM:") * 1024; }
uint64_t current_rss_bytes() { return status_kib("VmRSS:") * 1024; }
int hardware_threads() { return int(std::max(1u, std::thread::hardware_concurrency())); }

}  // namespace fm
