// Process and machine measurements for reports.
#pragma once
#include <chrono>
#include <cstdint>

namespace fm {

uint64_t peak_rss_bytes();     // VmHWM of this process
uint64_t current_rss_bytes();  // VmRSS
int hardware_threads();  // CPUs this process may run on
int physical_cores();    // of those, distinct cores (SMT siblings counted once)

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace fm
