#include "util/sysinfo.h"

#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <set>
#include <thread>
#include <utility>

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
int hardware_threads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return int(std::max(1u, std::thread::hardware_concurrency()));
}

int physical_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return hardware_threads();
  std::set<std::pair<long, long>> cores;  // (package, core) of each CPU this process may run on
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    long id[2] = {-1, -1};
    const char* names[2] = {"physical_package_id", "core_id"};
    for (int k = 0; k < 2; ++k) {
      char path[128];
      std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/%s", cpu, names[k]);
      if (FILE* f = std::fopen(path, "r")) {
        if (std::fscanf(f, "%ld", &id[k]) != 1) id[k] = -1;
        std::fclose(f);
      }
    }
    if (id[1] < 0) return hardware_threads();  // no topology: count every CPU
    cores.insert({id[0], id[1]});
  }
  return cores.empty() ? hardware_threads() : int(cores.size());
}

}  // namespace fm
