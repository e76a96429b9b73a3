// A fixed pool of worker threads for data-parallel kernels. parallel_for splits [0, n) into one
// contiguous range per taking part thread (the calling thread is one) and returns when all are done.
// Only as many threads take part as there are chunks of `grain`: a small kernel on a many-core
// machine waits for 4 threads, not for all of them. Workers spin briefly before sleeping, so the many
// short kernels of a decode step do not pay a futex wake-up each.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace fm {

// A non-owning reference to a callable fn(begin, end, thread_index). Unlike std::function it never
// allocates, so dispatching a kernel costs no heap traffic on the per-token path.
class RangeFn {
 public:
  template <class F>
  RangeFn(F& f) : object_(&f), call_([](void* o, int64_t b, int64_t e, int t) { (*static_cast<F*>(o))(b, e, t); }) {}
  void operator()(int64_t begin, int64_t end, int thread) const { call_(object_, begin, end, thread); }

 private:
  void* object_;
  void (*call_)(void*, int64_t, int64_t, int);
};

class ThreadPool {
 public:
  // How long an idle worker polls for the next job before it sleeps (see thread_pool.cpp).
  static constexpr std::chrono::microseconds kDefaultSpin{50};

  // n_threads >= 1, counting the caller.
  explicit ThreadPool(int n_threads, std::chrono::microseconds spin = kDefaultSpin);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // How many times a worker has gone to sleep (its spin ran out before the next job came): each
  // costs a futex wake-up on the next job, which on a busy virtual machine can hold up a whole call.
  uint64_t sleeps() const { return sleeps_.load(std::memory_order_relaxed); }

  // fn(begin, end, thread_index) over a partition of [0, n) in chunks that are multiples of `grain`.
  template <class F>
  void parallel_for(int64_t n, int64_t grain, F&& fn) {
    run(n, grain, RangeFn(fn));
  }

 private:
  void run(int64_t n, int64_t grain, RangeFn fn);
  void worker(int index);
  void run_share(int index, int n_shares);

  // The job word: generation << kShareBits | number of shares. One atomic load tells a worker both
  // that a job is new and whether it takes part, so one that does not never reads the job's fields.
  static constexpr int kShareBits = 16;

  int n_threads_;
  std::chrono::microseconds spin_;
  std::atomic<uint64_t> sleeps_{0};
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> job_word_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const RangeFn* job_ = nullptr;
  int64_t job_n_ = 0;
  int64_t job_grain_ = 1;
};

}  // namespace fm
