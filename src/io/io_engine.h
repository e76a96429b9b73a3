// The expert reader's I/O layer: a pool of I/O threads reading byte ranges of model files into
// caller-owned aligned buffers, with pread or io_uring, through the page cache or around it
// (O_DIRECT), each read optionally split into S parallel pieces.
//
// A *job* is a group of ranges that complete together (one expert: its gate, up and down slices).
// Jobs have a priority: demanded reads (the compute thread waits on them) always go before
// prefetches, and a prefetch not yet started can be cancelled. A failed or short read (EIO, a file
// truncated under us) fails that job only: wait() throws fm::Error naming the file, offset and
// cause, and the engine stays usable.
//
// With O_DIRECT the kernel needs offsets, lengths and buffer addresses aligned to the device's
// logical block size; the engine reads the aligned range that encloses each requested range, so the
// destination must hold padded_size() bytes and the data starts at dst + head(offset). In page-cache
// mode the same layout is used (no copy either way) but only the requested bytes are read; the files
// are opened without readahead (POSIX_FADV_RANDOM), and the pages read are dropped from the page
// cache afterwards (posix_fadvise DONTNEED over whole pages) unless keep_page_cache is set, so that
// reading experts does not grow the page cache against a memory limit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

namespace fm::io {

enum class Backend { Pread, Uring };
enum class Priority { Demand, Prefetch };

struct IoOptions {
  int threads = 4;               // pread: I/O threads. io_uring: one submission thread whose ring keeps up
                                 // to threads * split reads in flight
  int split = 1;                 // each range is read as `split` pieces of about equal, aligned size
  bool direct = false;           // O_DIRECT: no page cache
  bool keep_page_cache = false;  // page-cache mode only: do not drop what was read
  Backend backend = Backend::Pread;
};

inline constexpr uint64_t kAlign = 4096;  // alignment used for offsets, lengths and buffers

// The aligned range enclosing [offset, offset + length): where the data starts inside it, and how
// many bytes a destination buffer needs.
inline uint64_t head(uint64_t offset) { return offset % kAlign; }
inline uint64_t padded_size(uint64_t offset, uint64_t length) {
  const uint64_t begin = offset - head(offset);
  const uint64_t end = (offset + length + kAlign - 1) / kAlign * kAlign;
  return end - begin;
}

// Memory aligned to kAlign, freed with free_aligned. Throws fm::Error when out of memory.
std::byte* alloc_aligned(uint64_t bytes);
void free_aligned(std::byte* p);

struct ReadRange {
  int file = 0;         // index returned by IoEngine::add_file
  uint64_t offset = 0;  // in the file
  uint64_t length = 0;
  std::byte* dst = nullptr;  // kAlign-aligned, at least padded_size(offset, length) bytes; the data
                             // lands at dst + head(offset)
};

using JobId = uint64_t;

// What a fault injector may do to one read piece: nothing, fail with an errno, or return fewer bytes.
// The injector is called on an I/O thread just before the piece is read (it may block, to hold the
// engine still in tests); PieceInfo is the piece as issued (aligned with O_DIRECT).
struct Fault {
  int error = 0;         // errno to report instead of reading (0: none)
  int64_t short_by = 0;  // bytes to drop from the end of the piece (0: none)
};
struct PieceInfo {
  const std::string& path;
  uint64_t offset;
  uint64_t length;
};
using FaultInjector = std::function<Fault(const PieceInfo&)>;

struct IoStats {
  uint64_t bytes_read = 0;    // bytes requested by completed jobs (not counting alignment padding)
  uint64_t bytes_device = 0;  // bytes actually read, padding included
  uint64_t jobs_done = 0;
  uint64_t jobs_failed = 0;
  uint64_t jobs_cancelled = 0;
  double wait_seconds = 0;  // time callers spent blocked in wait()
};

class IoEngine {
 public:
  explicit IoEngine(const IoOptions& options);
  ~IoEngine();  // cancels what is queued, waits for the pieces in flight; no thread may be in wait()
  IoEngine(const IoEngine&) = delete;
  IoEngine& operator=(const IoEngine&) = delete;

  const IoOptions& options() const;

  // Opens a file for reading (O_DIRECT too when options.direct); returns its index. Throws
  // fm::Error naming the path if it cannot be opened. Not thread-safe against submit().
  int add_file(const std::string& path);
  const std::string& file_path(int file) const;
  uint64_t file_size(int file) const;

  // Every call below that takes a JobId needs a job that was submitted and neither waited for nor
  // cancelled yet (an FM_CHECK failure otherwise). All of them may be called from any thread.

  // Queues a job; returns at once. Demand jobs go before every queued prefetch; within a priority,
  // first in, first out. The pieces of a job are read in parallel. An empty job is done at once.
  JobId submit(std::span<const ReadRange> ranges, Priority priority);
  // Turns a queued prefetch into a demand read: it joins the end of the demand queue, ahead of every
  // prefetch. No-op once all its pieces have started, or for a demand job.
  void promote(JobId job);
  // Cancels a job none of whose pieces has started and that no thread waits on; the job is then
  // forgotten (do not wait for it). Returns false when it has started, is done, or is waited on:
  // then it must still be waited for.
  bool cancel(JobId job);
  // Blocks until the job is done (a queued prefetch is promoted first: someone needs it now). Throws
  // fm::Error if any piece failed, starting with the file's path and naming the offset and the errno
  // text or "short read: got N of M bytes"; the job is forgotten either way, and its buffers are no
  // longer written. One waiter per job.
  void wait(JobId job);
  // True if the job is done (successfully or not); does not forget it.
  bool done(JobId job) const;

  void set_fault_injector(FaultInjector injector);  // tests only; empty to clear
  // Counters since construction. bytes_device counts failed jobs' bytes too.
  IoStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Reads `count` ranges of `read_size` bytes at random aligned offsets of `path` with the given
// options (threads, split, direct; the file's pages are dropped from the page cache first), keeping
// options.threads reads in flight, and returns bytes per second: the disk floor for that access
// pattern. The offsets differ from call to call.
double measure_read_bandwidth(const std::string& path, uint64_t read_size, int count,
                              const IoOptions& options);

// The disk's best for reads of read_size bytes: measure_read_bandwidth with options.threads, twice and
// four times as many reads in flight (at most 64), about `bytes` read at each level; the fastest
// level wins. An upper bound for what streaming with these read sizes can reach, whatever its
// concurrency: the floor a decode speed is compared with.
struct DiskFloor {
  double bytes_s = 0;
  int in_flight = 0;  // reads in flight at the fastest level
};
DiskFloor measure_disk_floor(const std::string& path, uint64_t read_size, uint64_t bytes, const IoOptions& options);

}  // namespace fm::io
