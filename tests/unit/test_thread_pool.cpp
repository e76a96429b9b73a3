#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "util/thread_pool.h"

namespace fm {
namespace {

// Suites are named after the file so that `ctest -R thread_pool` selects them.

// Runs one parallel_for and checks its contract: every index once, chunk starts on a grain boundary,
// thread indices in range, no call for an empty range, and all done when it returns.
void check_cover(ThreadPool& pool, int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(size_t(std::max<int64_t>(n, 0)));
  std::atomic<int> bad_thread{0}, bad_range{0}, calls{0};
  pool.parallel_for(n, grain, [&](int64_t begin, int64_t end, int thread) {
    calls.fetch_add(1);
    if (thread < 0 || thread >= pool.size()) bad_thread.fetch_add(1);
    if (begin < 0 || end > n || begin >= end || begin % grain != 0 || (end != n && end % grain != 0))
      bad_range.fetch_add(1);
    for (int64_t i = begin; i < end && i < n; ++i) hits[size_t(i)].fetch_add(1);
  });
  SCOPED_TRACE(testing::Message() << "threads=" << pool.size() << " n=" << n << " grain=" << grain);
  EXPECT_EQ(bad_thread.load(), 0);
  EXPECT_EQ(bad_range.load(), 0);
  EXPECT_LE(calls.load(), pool.size());
  if (n <= 0) {
    EXPECT_EQ(calls.load(), 0);
  }
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << "index " << i;
}

TEST(thread_pool, CoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 4, 7}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 3, 5, 6, 7, 16, 17, 100, 1000, 4097})
      for (int64_t grain : {1, 2, 3, 4, 16, 64, 5000}) check_cover(pool, n, grain);
  }
}

TEST(thread_pool, EachThreadGetsOneContiguousShare) {
  ThreadPool pool(3);
  std::vector<int> owner(300, -1);
  pool.parallel_for(300, 10, [&](int64_t begin, int64_t end, int thread) {
    for (int64_t i = begin; i < end; ++i) owner[size_t(i)] = thread;
  });
  // Shares are in thread order and as even as whole grains allow: 10 chunks over 3 threads.
  EXPECT_EQ(owner[0], 0);
  EXPECT_EQ(owner[299], 2);
  for (size_t i = 1; i < owner.size(); ++i) EXPECT_LE(owner[i - 1], owner[i]);
  int counts[3] = {};
  for (int t : owner) ++counts[t];
  for (int c : counts) {
    EXPECT_GE(c, 90);
    EXPECT_LE(c, 120);
  }
}

TEST(thread_pool, CallerRunsShareZero) {
  ThreadPool pool(2);
  const auto caller = std::this_thread::get_id();
  std::thread::id share0;
  pool.parallel_for(2, 1, [&](int64_t begin, int64_t, int thread) {
    if (thread == 0) {
      EXPECT_EQ(begin, 0);
      share0 = std::this_thread::get_id();
    }
  });
  EXPECT_EQ(share0, caller);
}

TEST(thread_pool, ManyTinyJobsBackToBack) {
  // With more threads than some jobs have chunks, the set of threads taking part changes from one
  // job to the next: workers left out of a job must neither run it nor miss the next one.
  for (int threads : {2, 3, 5, 8}) {
    ThreadPool pool(threads);
    std::vector<int64_t> slots(64, 0);
    int64_t expected = 0;
    for (int job = 0; job < 10000; ++job) {
      // Each thread writes only its own slots, so a missed or repeated share shows in the sum.
      const int64_t n = 1 + job % 8;
      pool.parallel_for(n, 1, [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) slots[size_t(i)] += i + 1;
      });
      expected += n * (n + 1) / 2;
    }
    int64_t total = 0;
    for (int64_t v : slots) total += v;
    EXPECT_EQ(total, expected) << "threads=" << threads;
  }
}

TEST(thread_pool, OnlyAsManyThreadsAsChunksTakePart) {
  ThreadPool pool(6);
  for (int64_t chunks : {2, 3, 6, 9}) {
    std::atomic<int> seen{0};
    pool.parallel_for(chunks * 16, 16, [&](int64_t, int64_t, int thread) { seen.fetch_or(1 << thread); });
    const int taking_part = int(std::min<int64_t>(chunks, 6));
    EXPECT_EQ(seen.load(), (1 << taking_part) - 1) << chunks << " chunks";
  }
}

TEST(thread_pool, WorkersWakeAfterSleeping) {
  ThreadPool pool(3);
  for (int round = 0; round < 5; ++round) {
    // Long enough for the workers to stop spinning and block on the condition variable.
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::atomic<int> seen{0};
    pool.parallel_for(3, 1, [&](int64_t, int64_t, int thread) { seen.fetch_or(1 << thread); });
    EXPECT_EQ(seen.load(), 0b111);
  }
}

// sleeps() counts the times a worker's spin ran out: none while it spins across short gaps, and
// some once the pool has idled past the spin.
TEST(thread_pool, CountsSleeps) {
  ThreadPool pool(2, std::chrono::seconds(10));
  std::atomic<int> seen{0};
  for (int round = 0; round < 20; ++round)
    pool.parallel_for(2, 1, [&](int64_t, int64_t, int thread) { seen.fetch_or(1 << thread); });
  EXPECT_EQ(seen.load(), 0b11);
  EXPECT_EQ(pool.sleeps(), 0u);

  ThreadPool short_spin(2, std::chrono::microseconds(50));
  for (int round = 0; round < 3; ++round) {
    short_spin.parallel_for(2, 1, [](int64_t, int64_t, int) {});
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GE(short_spin.sleeps(), 1u);
}

TEST(thread_pool, ResultsVisibleToCaller) {
  ThreadPool pool(2);
  for (int round = 0; round < 1000; ++round) {
    std::vector<int> out(256, 0);  // plain ints: the pool's hand-off must order the writes
    pool.parallel_for(256, 16, [&](int64_t begin, int64_t end, int) {
      for (int64_t i = begin; i < end; ++i) out[size_t(i)] = int(i) + round;
    });
    for (int i = 0; i < 256; ++i) ASSERT_EQ(out[size_t(i)], i + round);
  }
}

TEST(thread_pool, ThrowFromCallerShareWaitsForWorkers) {
  ThreadPool pool(2);
  std::atomic<int> worker_done{0};
  EXPECT_THROW(pool.parallel_for(2, 1,
                                 [&](int64_t, int64_t, int thread) {
                                   if (thread == 0) throw std::runtime_error("share 0");
                                   std::this_thread::sleep_for(std::chrono::milliseconds(5));
                                   worker_done.store(1);
                                 }),
               std::runtime_error);
  EXPECT_EQ(worker_done.load(), 1);
  check_cover(pool, 100, 7);  // still usable
}

TEST(thread_pool, CreateAndDestroyRepeatedly) {
  for (int i = 0; i < 50; ++i) {
    auto pool = std::make_unique<ThreadPool>(1 + i % 4);
    if (i % 2) check_cover(*pool, 33, 4);
  }
}

}  // namespace
}  // namespace fm
