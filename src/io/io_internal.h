// The I/O engine's shared state, seen by the public API (io_engine.cpp) and by the two backends: the
// pread worker threads (io_engine.cpp) and the io_uring submission thread (io_uring_loop.cpp).
//
// A job is cut into pieces when it is submitted. The queues hold job ids; an I/O thread takes the
// next piece of the job at the front of the demand queue, or else of the prefetch queue, so the
// pieces of one job run in parallel and a demanded job overtakes every prefetch not yet started. A
// job is done when all its pieces have finished, failed or not: its buffers are never written after
// wait() returns or throws.
#pragma once
#include <liburing.h>  // io_uring

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "io/io_engine.h"

namespace fm::io {

// One read issued as a unit: [offset, offset + length) of a file into dst. With O_DIRECT everything
// is kAlign-aligned and only the first `need` bytes must be read (the rest is padding past the
// requested range, which may lie beyond the end of the file); otherwise need == length.
struct Piece {
  JobId job = 0;
  int fd = -1;
  const std::string* path = nullptr;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t need = 0;
  std::byte* dst = nullptr;
};

struct Job {
  std::vector<Piece> pieces;
  size_t next = 0;       // pieces[next..] not yet handed to an I/O thread
  size_t remaining = 0;  // pieces not yet finished
  Priority priority = Priority::Prefetch;
  bool queued = false;  // in demand or prefetch queue (some piece not yet handed out)
  int waiters = 0;
  uint64_t bytes_requested = 0;
  std::string error;  // the first failure, empty if none
};

struct OpenFile {
  std::string path;
  int fd = -1;         // buffered
  int fd_direct = -1;  // O_DIRECT, when options.direct
  uint64_t size = 0;   // at add_file time
};

struct IoEngine::Impl {
  IoOptions options;
  std::deque<OpenFile> files;  // a deque: a Piece keeps a pointer to its file's path

  mutable std::mutex mutex;
  std::condition_variable work_cv;  // pread workers sleep here
  std::condition_variable done_cv;  // wait() sleeps here
  std::unordered_map<JobId, Job> jobs;
  std::deque<JobId> demand, prefetch;
  JobId next_id = 1;
  bool stopping = false;
  std::shared_ptr<const FaultInjector> injector;
  IoStats stats;

  std::vector<std::thread> threads;
  // io_uring backend: the ring (used by its thread only) and an eventfd that wakes that thread when
  // work is queued or the engine stops.
  io_uring ring{};
  bool ring_ready = false;
  int wake_fd = -1;

  explicit Impl(const IoOptions& opts);
  ~Impl();

  bool has_work() const { return !demand.empty() || !prefetch.empty(); }
  // Hands out the next piece; requires has_work() and the mutex held.
  Piece take_piece();
  // Records a finished piece: err is an errno (0: read `got` bytes). Takes the mutex.
  void finish_piece(const Piece& piece, int err, uint64_t got);
  void wake_workers();

  void pread_worker();
  void uring_init();  // throws fm::Error when io_uring is not available
  void uring_loop();
};

// Reads piece.length bytes with pread, retrying partial reads; stops at end of file (and, with
// O_DIRECT, at a partial read that is not a multiple of kAlign: the end of the file). Returns 0 or an
// errno; `got` is the number of bytes read.
int pread_piece(const Piece& piece, bool direct, uint64_t& got);

// What the injector makes of a piece (no fault when there is none).
Fault inject(const std::shared_ptr<const FaultInjector>& injector, const Piece& piece);
uint64_t apply_short(uint64_t got, const Fault& fault);

}  // namespace fm::io
