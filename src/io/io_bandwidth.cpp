// measure_read_bandwidth: the disk floor for the expert access pattern (reads of one expert's size
// at random aligned offsets), measured with the engine itself.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <random>
#include <vector>

#include "io/io_engine.h"
#include "util/error.h"

namespace fm::io {

double measure_read_bandwidth(const std::string& path, uint64_t read_size, int count,
                              const IoOptions& options) {
  FM_CHECK(read_size > 0 && count > 0, "read_size {} count {}", read_size, count);
  IoEngine engine(options);
  const int file = engine.add_file(path);
  const uint64_t size = engine.file_size(file);
  if (size < read_size) fail("{}: {} bytes, too small to measure reads of {} bytes", path, size, read_size);

  // Start cold: drop what the page cache holds of the file, so the page-cache mode measures the disk.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }

  // As many reads in flight as the engine has threads (each cut into `split` pieces), like the
  // expert store reading several experts of a layer at once.
  const int in_flight = std::max(1, std::min(options.threads, count));
  const uint64_t buffer_size = padded_size(0, read_size);
  std::vector<std::byte*> buffers;
  struct Guard {
    std::vector<std::byte*>& b;
    ~Guard() {
      for (std::byte* p : b) free_aligned(p);
    }
  } guard{buffers};
  for (int i = 0; i < in_flight; ++i) buffers.push_back(alloc_aligned(buffer_size));

  // Fresh offsets on every call: re-reading the same ranges would measure whatever caches sit below
  // the page cache (a virtual disk's host, a drive's own cache) instead of the disk.
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_int_distribution<uint64_t> block(0, (size - read_size) / kAlign);
  std::deque<std::pair<JobId, int>> running;  // job, buffer
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < count; ++i) {
    int buffer = i;
    if (i >= in_flight) {
      engine.wait(running.front().first);
      buffer = running.front().second;
      running.pop_front();
    }
    const ReadRange range{
        .file = file, .offset = block(rng) * kAlign, .length = read_size, .dst = buffers[size_t(buffer)]};
    running.emplace_back(engine.submit(std::span(&range, 1), Priority::Demand), buffer);
  }
  for (const auto& [job, buffer] : running) engine.wait(job);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return double(read_size) * count / std::max(seconds, 1e-9);
}

DiskFloor measure_disk_floor(const std::string& path, uint64_t read_size, uint64_t bytes, const IoOptions& options) {
  const int count = int(std::clamp<uint64_t>(bytes / std::max<uint64_t>(read_size, 1), 32, 4096));
  DiskFloor best;
  const int base = std::max(1, options.threads);
  for (const int threads : {base, 2 * base, 4 * base}) {
    if (threads > std::max(base, 64)) break;
    IoOptions o = options;
    o.threads = threads;
    const double bw = measure_read_bandwidth(path, read_size, count, o);
    if (bw > best.bytes_s) best = {.bytes_s = bw, .in_flight = threads};
  }
  return best;
}

}  // namespace fm::io
