// The I/O engine: job bookkeeping (queues, promote, cancel, wait), the pread backend, and the
// buffers. The io_uring backend is in io_uring_loop.cpp; see io_internal.h for how a job is cut into
// pieces and handed out.
#include "io/io_engine.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <system_error>

#include "io/io_internal.h"
#include "util/error.h"

namespace fm::io {

namespace {

// Pieces larger than this are cut further (io_uring lengths are 32-bit; long reads also balance
// worse across threads).
constexpr uint64_t kMaxPiece = uint64_t(64) << 20;

std::string errno_text(int err) { return std::generic_category().message(err); }

uint64_t round_up(uint64_t x, uint64_t to) { return (x + to - 1) / to * to; }

// Cuts one range into `split` pieces of equal kAlign-multiple size (the last one shorter). With
// O_DIRECT the pieces cover the aligned enclosing range; otherwise exactly the requested bytes, cut at
// the same aligned boundaries, so the data lands at the same place either way.
void cut_range(const ReadRange& r, const OpenFile& file, JobId job, const IoOptions& opt,
               std::vector<Piece>& out) {
  const uint64_t begin = r.offset - head(r.offset);
  const uint64_t total = padded_size(r.offset, r.length);
  const uint64_t end = r.offset + r.length;
  uint64_t n = std::max<uint64_t>(uint64_t(opt.split), (total + kMaxPiece - 1) / kMaxPiece);
  const uint64_t chunk = round_up((total + n - 1) / n, kAlign);
  for (uint64_t at = begin; at < begin + total; at += chunk) {
    const uint64_t piece_end = std::min(at + chunk, begin + total);
    Piece p;
    p.job = job;
    p.path = &file.path;
    if (opt.direct) {
      p.fd = file.fd_direct;
      p.offset = at;
      p.length = piece_end - at;
      p.need = std::min(piece_end, end) - at;  // > 0: every aligned piece starts before `end`
    } else {
      p.fd = file.fd;
      p.offset = std::max(at, r.offset);
      p.length = std::min(piece_end, end) - p.offset;
      p.need = p.length;
    }
    p.dst = r.dst + (p.offset - begin);
    out.push_back(p);
  }
}

}  // namespace

// ---- shared helpers ----

int pread_piece(const Piece& piece, bool direct, uint64_t& got) {
  got = 0;
  while (got < piece.length) {
    const ssize_t r = ::pread(piece.fd, piece.dst + got, piece.length - got, off_t(piece.offset + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) break;  // end of file
    got += uint64_t(r);
    if (direct && got % kAlign != 0) break;  // an O_DIRECT read ends short only at the end of the file
  }
  return 0;
}

Fault inject(const std::shared_ptr<const FaultInjector>& injector, const Piece& piece) {
  if (!injector || !*injector) return {};
  return (*injector)(PieceInfo{*piece.path, piece.offset, piece.length});
}

uint64_t apply_short(uint64_t got, const Fault& fault) {
  if (fault.short_by <= 0) return got;
  return got > uint64_t(fault.short_by) ? got - uint64_t(fault.short_by) : 0;
}

// ---- Impl ----

IoEngine::Impl::Impl(const IoOptions& opts) : options(opts) {
  if (options.threads < 1) fail("I/O threads must be at least 1 (got {})", options.threads);
  if (options.split < 1) fail("I/O split must be at least 1 (got {})", options.split);
  if (options.backend == Backend::Uring) {
    uring_init();
    threads.emplace_back([this] { uring_loop(); });
  } else {
    for (int i = 0; i < options.threads; ++i) threads.emplace_back([this] { pread_worker(); });
  }
}

IoEngine::Impl::~Impl() {
  {
    std::lock_guard lock(mutex);
    stopping = true;
    // Jobs none of whose pieces started are cancelled; the I/O threads finish the pieces in flight.
    for (std::deque<JobId>* q : {&demand, &prefetch}) {
      for (JobId id : *q) {
        if (jobs.at(id).next == 0) stats.jobs_cancelled++;
      }
      q->clear();
    }
  }
  wake_workers();
  for (std::thread& t : threads) t.join();
  if (ring_ready) io_uring_queue_exit(&ring);
  if (wake_fd >= 0) ::close(wake_fd);
  for (OpenFile& f : files) {
    if (f.fd >= 0) ::close(f.fd);
    if (f.fd_direct >= 0) ::close(f.fd_direct);
  }
}

Piece IoEngine::Impl::take_piece() {
  std::deque<JobId>& queue = demand.empty() ? prefetch : demand;
  Job& job = jobs.at(queue.front());
  Piece piece = job.pieces[job.next++];
  if (job.next == job.pieces.size()) {
    job.queued = false;
    queue.pop_front();
  }
  return piece;
}

void IoEngine::Impl::finish_piece(const Piece& piece, int err, uint64_t got) {
  std::string error;
  if (err != 0) {
    error = fmt::format("{}: read of {} bytes at offset {} failed: {}", *piece.path, piece.length,
                        piece.offset, errno_text(err));
  } else if (got < piece.need) {
    error = fmt::format("{}: read at offset {}: short read: got {} of {} bytes (file truncated?)",
                        *piece.path, piece.offset, got, piece.need);
  }
  if (!options.direct && !options.keep_page_cache) {
    // Whole pages, so that the partly read pages at either end are dropped too.
    const uint64_t begin = piece.offset - head(piece.offset);
    ::posix_fadvise(piece.fd, off_t(begin), off_t(round_up(piece.offset + piece.length, kAlign) - begin),
                    POSIX_FADV_DONTNEED);
  }
  std::lock_guard lock(mutex);
  Job& job = jobs.at(piece.job);
  stats.bytes_device += got;
  if (!error.empty() && job.error.empty()) job.error = std::move(error);
  if (--job.remaining == 0) {
    if (job.error.empty()) {
      stats.jobs_done++;
      stats.bytes_read += job.bytes_requested;
    } else {
      stats.jobs_failed++;
    }
    done_cv.notify_all();
  }
}

void IoEngine::Impl::wake_workers() {
  if (options.backend == Backend::Uring) {
    const uint64_t one = 1;
    // The counter only saturates after 2^64 - 2 unread wake-ups; a failed write cannot lose one.
    [[maybe_unused]] ssize_t r = ::write(wake_fd, &one, sizeof one);
  } else {
    work_cv.notify_all();
  }
}

void IoEngine::Impl::pread_worker() {
  for (;;) {
    Piece piece;
    std::shared_ptr<const FaultInjector> inj;
    {
      std::unique_lock lock(mutex);
      work_cv.wait(lock, [&] { return stopping || has_work(); });
      if (stopping) return;
      piece = take_piece();
      inj = injector;
    }
    const Fault fault = inject(inj, piece);
    uint64_t got = 0;
    int err = fault.error;
    if (err == 0) err = pread_piece(piece, options.direct, got);
    finish_piece(piece, err, apply_short(got, fault));
  }
}

// ---- IoEngine ----

IoEngine::IoEngine(const IoOptions& options) : impl_(std::make_unique<Impl>(options)) {}
IoEngine::~IoEngine() = default;

const IoOptions& IoEngine::options() const { return impl_->options; }

int IoEngine::add_file(const std::string& path) {
  OpenFile f;
  f.path = path;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) fail("{}: cannot open: {}", path, errno_text(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(f.fd);
    fail("{}: not a regular file", path);
  }
  f.size = uint64_t(st.st_size);
  // Expert reads are random: no readahead, so a read brings in exactly the pages asked for (and the
  // page cache holds no more than what finish_piece drops again).
  ::posix_fadvise(f.fd, 0, 0, POSIX_FADV_RANDOM);
  if (impl_->options.direct) {
    f.fd_direct = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    if (f.fd_direct < 0) {
      const int err = errno;
      ::close(f.fd);
      if (err == EINVAL) {
        fail("{}: the filesystem does not support direct I/O (O_DIRECT); read through the page cache instead",
             path);
      }
      fail("{}: cannot open for direct I/O: {}", path, errno_text(err));
    }
  }
  std::lock_guard lock(impl_->mutex);
  impl_->files.push_back(std::move(f));
  return int(impl_->files.size()) - 1;
}

const std::string& IoEngine::file_path(int file) const {
  FM_CHECK(file >= 0 && size_t(file) < impl_->files.size(), "no file {}", file);
  return impl_->files[size_t(file)].path;
}

uint64_t IoEngine::file_size(int file) const {
  FM_CHECK(file >= 0 && size_t(file) < impl_->files.size(), "no file {}", file);
  return impl_->files[size_t(file)].size;
}

JobId IoEngine::submit(std::span<const ReadRange> ranges, Priority priority) {
  Impl& m = *impl_;
  Job job;
  job.priority = priority;
  JobId id;
  {
    std::lock_guard lock(m.mutex);
    id = m.next_id++;
  }
  for (const ReadRange& r : ranges) {
    FM_CHECK(r.file >= 0 && size_t(r.file) < m.files.size(), "read of unknown file {}", r.file);
    FM_CHECK(reinterpret_cast<uintptr_t>(r.dst) % kAlign == 0, "read buffer {} not aligned to {}",
             static_cast<void*>(r.dst), kAlign);
    if (r.length == 0) continue;
    cut_range(r, m.files[size_t(r.file)], id, m.options, job.pieces);
    job.bytes_requested += r.length;
  }
  job.remaining = job.pieces.size();
  bool queued = false;
  {
    std::lock_guard lock(m.mutex);
    if (job.pieces.empty()) {
      m.stats.jobs_done++;
    } else {
      job.queued = queued = true;
      (priority == Priority::Demand ? m.demand : m.prefetch).push_back(id);
    }
    m.jobs.emplace(id, std::move(job));
  }
  if (queued) m.wake_workers();
  return id;
}

void IoEngine::promote(JobId id) {
  Impl& m = *impl_;
  std::lock_guard lock(m.mutex);
  auto it = m.jobs.find(id);
  FM_CHECK(it != m.jobs.end(), "promote of unknown job {}", id);
  Job& job = it->second;
  if (!job.queued || job.priority == Priority::Demand) return;
  m.prefetch.erase(std::find(m.prefetch.begin(), m.prefetch.end(), id));
  m.demand.push_back(id);
  job.priority = Priority::Demand;
}

bool IoEngine::cancel(JobId id) {
  Impl& m = *impl_;
  std::lock_guard lock(m.mutex);
  auto it = m.jobs.find(id);
  FM_CHECK(it != m.jobs.end(), "cancel of unknown job {}", id);
  Job& job = it->second;
  if (!job.queued || job.next > 0 || job.waiters > 0) return false;
  std::deque<JobId>& queue = job.priority == Priority::Demand ? m.demand : m.prefetch;
  queue.erase(std::find(queue.begin(), queue.end(), id));
  m.jobs.erase(it);
  m.stats.jobs_cancelled++;
  return true;
}

void IoEngine::wait(JobId id) {
  Impl& m = *impl_;
  const auto start = std::chrono::steady_clock::now();
  std::unique_lock lock(m.mutex);
  auto it = m.jobs.find(id);
  FM_CHECK(it != m.jobs.end(), "wait on unknown, cancelled or already waited job {}", id);
  Job& job = it->second;
  FM_CHECK(job.waiters == 0, "job {} waited on by two threads", id);
  if (job.queued && job.priority == Priority::Prefetch) {  // someone needs it now
    m.prefetch.erase(std::find(m.prefetch.begin(), m.prefetch.end(), id));
    m.demand.push_back(id);
    job.priority = Priority::Demand;
  }
  job.waiters++;
  m.done_cv.wait(lock, [&] { return job.remaining == 0; });
  std::string error = std::move(job.error);
  m.jobs.erase(it);
  m.stats.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  lock.unlock();
  if (!error.empty()) throw Error(error);
}

bool IoEngine::done(JobId id) const {
  const Impl& m = *impl_;
  std::lock_guard lock(m.mutex);
  auto it = m.jobs.find(id);
  FM_CHECK(it != m.jobs.end(), "done() of unknown, cancelled or already waited job {}", id);
  return it->second.remaining == 0;
}

void IoEngine::set_fault_injector(FaultInjector injector) {
  std::lock_guard lock(impl_->mutex);
  impl_->injector = injector ? std::make_shared<const FaultInjector>(std::move(injector)) : nullptr;
}

IoStats IoEngine::stats() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->stats;
}

// ---- buffers ----

std::byte* alloc_aligned(uint64_t bytes) {
  void* p = std::aligned_alloc(kAlign, round_up(std::max<uint64_t>(bytes, 1), kAlign));
  if (p == nullptr) fail("out of memory allocating an I/O buffer of {} bytes", bytes);
  return static_cast<std::byte*>(p);
}

void free_aligned(std::byte* p) { std::free(p); }

}  // namespace fm::io
