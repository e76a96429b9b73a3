// The memory-read floor: how fast this machine's threads can stream bytes from RAM.
#pragma once
#include <cstdint>

#include "util/thread_pool.h"

namespace fm {

// Best of `passes` timed reads of a buffer of `bytes` (touched once before timing), in bytes/s.
double measure_read_bandwidth(ThreadPool& pool, uint64_t bytes = uint64_t(1) << 30, int passes = 3);

}  // namespace fm
