// The pool's hand-off works by generation: the caller publishes a job and bumps the generation in
// job_word_, together with the number of shares; each worker whose index is below that runs its share
// and counts pending_ down, and the caller returns once pending_ reaches zero. A taking part worker
// cannot skip a generation, because the next job starts only after every such worker has finished
// the current one; a worker left out may skip generations, and never touches the job's fields. An exception from fn reaches the caller only from share 0; on a worker
// it terminates, so kernels report broken invariants with FM_CHECK.
// parallel_for is neither reentrant (fn must not call it) nor safe to call from two threads at once.
#include "util/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <exception>

#include "util/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace fm {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Share `index` of `n_shares` over [0, n): whole chunks of `grain`, as evenly as chunks allow.
inline void share_range(int64_t n, int64_t grain, int n_shares, int index, int64_t& begin, int64_t& end) {
  const int64_t chunks = (n + grain - 1) / grain;
  begin = std::min(n, chunks * index / n_shares * grain);
  end = std::min(n, chunks * (index + 1) / n_shares * grain);
}

}  // namespace

// The spin (kDefaultSpin): a decode step issues kernels a few microseconds apart, and a futex
// wake-up costs about as much as a small kernel, so the workers stay hot across that gap; a long
// idle stretch (between requests) still puts them to sleep. Longer spins were slower on a quiet
// 16-core Xeon (bench_quant BM_spin_*, 16 threads: IQ2_XXS 100 / 91 / 86 G weights/s at 50 us / 1 ms
// / 5 ms, with 0.57 / 0 / 0 sleeps a call): spinning workers cost more than the wake-ups they save.
ThreadPool::ThreadPool(int n_threads, std::chrono::microseconds spin) : n_threads_(n_threads), spin_(spin) {
  FM_CHECK(n_threads >= 1 && n_threads < (1 << kShareBits), "thread pool needs 1 to {} threads, got {}",
           (1 << kShareBits) - 1, n_threads);
  threads_.reserve(size_t(n_threads - 1));
  for (int i = 1; i < n_threads; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true, std::memory_order_release);
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::run(int64_t n, int64_t grain, RangeFn fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  // One chunk or one thread: the whole range is share 0, and waking the workers would only cost.
  const int64_t chunks = (n + grain - 1) / grain;
  const int shares = int(std::min<int64_t>(n_threads_, chunks));
  if (shares == 1) {
    fn(0, n, 0);
    return;
  }
  {
    // Bumping the generation under the mutex pairs with the predicate check of a worker about to
    // sleep, so the notify below cannot fall between its check and its wait.
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_n_ = n;
    job_grain_ = grain;
    pending_.store(shares - 1, std::memory_order_relaxed);
    const uint64_t generation = (job_word_.load(std::memory_order_relaxed) >> kShareBits) + 1;
    job_word_.store(generation << kShareBits | uint64_t(shares), std::memory_order_release);
  }
  // Cheap when every worker is spinning: glibc skips the futex call when nobody waits.
  wake_.notify_all();

  // If our share throws, the workers still hold fn and the job: let them finish before unwinding.
  std::exception_ptr error;
  try {
    run_share(0, shares);
  } catch (...) {
    error = std::current_exception();
  }

  // The workers' shares are about as long as ours, so they finish soon. The periodic yield matters
  // when a worker shares our core (more threads than cores, or before the scheduler has spread a new
  // pool): spinning there would hold off the very thread we wait for.
  for (int spins = 1; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins % 64 == 0) {
      std::this_thread::yield();
    } else {
      cpu_relax();
    }
  }
  if (error) std::rethrow_exception(error);
}

void ThreadPool::run_share(int index, int n_shares) {
  int64_t begin, end;
  share_range(job_n_, job_grain_, n_shares, index, begin, end);
  if (begin < end) (*job_)(begin, end, index);
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;  // the generation last handled (taken part in or left out of)
  for (;;) {
    // Poll first; the clock is read only every few dozen pauses to keep the loop light.
    const auto spin_until = std::chrono::steady_clock::now() + spin_;
    uint64_t word = job_word_.load(std::memory_order_acquire);
    for (int spins = 1; word >> kShareBits == seen && !stop_.load(std::memory_order_acquire); ++spins) {
      if (spins % 64 == 0) {
        if (std::chrono::steady_clock::now() >= spin_until) break;
        // Let the caller run if it shares our core (more threads than cores).
        std::this_thread::yield();
      } else {
        cpu_relax();
      }
      word = job_word_.load(std::memory_order_acquire);
    }
    if (word >> kShareBits == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      bool counted = false;
      wake_.wait(lock, [&] {
        word = job_word_.load(std::memory_order_acquire);
        const bool go = word >> kShareBits != seen || stop_.load(std::memory_order_acquire);
        if (!go && !counted) {  // about to block: count it once, however often it wakes spuriously
          sleeps_.fetch_add(1, std::memory_order_relaxed);
          counted = true;
        }
        return go;
      });
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = word >> kShareBits;
    const int shares = int(word & ((uint64_t(1) << kShareBits) - 1));
    if (index >= shares) continue;
    run_share(index, shares);
    // Release: the caller's acquire of pending_ == 0 makes our outputs visible to it.
    pending_.fetch_sub(1, std::memory_order_release);
  }
}

}  // namespace fm
