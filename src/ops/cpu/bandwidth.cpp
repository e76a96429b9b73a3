#include "ops/cpu/bandwidth.h"

#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include "util/sysinfo.h"

namespace fm {

namespace {
// Four independent sums so the loads, not the adds, set the pace; the result is kept so the loop
// is not optimised away.
uint64_t sum_words(const uint64_t* p, int64_t n) {
  uint64_t a = 0, b = 0, c = 0, d = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a += p[i];
    b += p[i + 1];
    c += p[i + 2];
    d += p[i + 3];
  }
  for (; i < n; ++i) a += p[i];
  return a ^ b ^ c ^ d;
}
}  // namespace

double measure_read_bandwidth(ThreadPool& pool, uint64_t bytes, int passes) {
  const int64_t words = int64_t(bytes / 8);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[size_t(words)]);
  for (int64_t i = 0; i < words; ++i) buf[size_t(i)] = uint64_t(i);
  std::vector<uint64_t> sink(size_t(pool.size()));
  double best = 0.0;
  for (int pass = 0; pass < passes; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(words, 4096, [&](int64_t b, int64_t e, int thread) {
      sink[size_t(thread)] += sum_words(buf.get() + b, e - b);
    });
    const double s = seconds_since(t0);
    if (s > 0) best = std::max(best, double(bytes) / s);
  }
  volatile uint64_t keep = 0;
  for (uint64_t v : sink) keep = keep + v;
  (void)keep;
  return best;
}

}  // namespace fm
