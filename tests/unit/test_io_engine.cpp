// The expert reader's I/O engine: every backend x direct/page cache x split reads random ranges of a
// file of known bytes; demand-before-prefetch ordering, promote and cancel observed through a
// blocking fault injector on one I/O thread; injected and real (truncated file) failures fail one
// job with a message naming the file, and the engine goes on working.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "io/io_engine.h"
#include "test_util.h"

namespace fm::io {
namespace {

using fm::test::expect_error;
namespace fs = std::filesystem;

constexpr uint64_t kFileSize = (3 << 20) + 1234;  // a few MB, not a multiple of kAlign

// The byte at position i of the test file: a hash of i, so a range read from the wrong offset or into
// the wrong place is caught.
uint8_t pattern(uint64_t i) {
  uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull;
  x ^= x >> 29;
  return uint8_t(x >> 24);
}

void write_pattern_file(const fs::path& path, uint64_t size) {
  std::vector<char> bytes(static_cast<size_t>(size));
  for (uint64_t i = 0; i < size; ++i) bytes[size_t(i)] = char(pattern(i));
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(size));
  ASSERT_TRUE(out.good()) << path;
}

// A scratch folder on a filesystem that accepts O_DIRECT (the system temp folder, else /var/tmp, else
// the build folder); empty path if none does.
struct DirectDir {
  fs::path path;
  DirectDir() {
    std::random_device rd;
    for (const fs::path& base : {fs::temp_directory_path(), fs::path("/var/tmp"), fs::path(FM_BUILD_DIR)}) {
      std::error_code ec;
      const fs::path dir = base / fmt::format("fm_io_{}_{:08x}", ::getpid(), rd());
      if (!fs::create_directories(dir, ec)) continue;
      const fs::path probe = dir / "probe";
      { std::ofstream(probe) << "x"; }
      const int fd = ::open(probe.c_str(), O_RDONLY | O_DIRECT);
      if (fd >= 0) {
        ::close(fd);
        path = dir;
        return;
      }
      fs::remove_all(dir, ec);
    }
  }
  ~DirectDir() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
};

struct Buffer {
  std::byte* data;
  uint64_t size;
  explicit Buffer(uint64_t n) : data(alloc_aligned(n)), size(n) { std::memset(data, 0xAB, n); }
  ~Buffer() { free_aligned(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

// Checks that the buffer holds the file's bytes [offset, offset + length) at head(offset).
::testing::AssertionResult holds_range(const std::byte* dst, uint64_t offset, uint64_t length) {
  const std::byte* data = dst + head(offset);
  for (uint64_t i = 0; i < length; ++i) {
    if (uint8_t(data[i]) != pattern(offset + i)) {
      return ::testing::AssertionFailure()
             << "range at " << offset << " of " << length << " bytes: byte " << i << " is " << int(data[i])
             << ", want " << int(pattern(offset + i));
    }
  }
  return ::testing::AssertionSuccess();
}

// Observes the order in which pieces start: the first piece blocks until release(), so everything
// submitted meanwhile queues up behind it (with one I/O thread and split 1).
struct Gate {
  std::mutex m;
  std::condition_variable cv;
  bool entered = false, open = false;
  std::vector<uint64_t> order;  // piece offsets, in the order they started

  Fault operator()(const PieceInfo& piece) {
    std::unique_lock lock(m);
    order.push_back(piece.offset);
    if (!entered) {
      entered = true;
      cv.notify_all();
      cv.wait(lock, [&] { return open; });
    }
    return {};
  }
  void wait_entered() {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return entered; });
  }
  void release() {
    std::lock_guard lock(m);
    open = true;
    cv.notify_all();
  }
  std::vector<uint64_t> started() {
    std::lock_guard lock(m);
    return order;
  }
};

const char* backend_name(Backend b) { return b == Backend::Pread ? "pread" : "io_uring"; }

class IoEngineTest : public ::testing::Test {
 protected:
  DirectDir dir;
  fs::path file;
  void SetUp() override {
    if (dir.path.empty()) GTEST_SKIP() << "no filesystem here accepts O_DIRECT";
    file = dir.path / "pattern.bin";
    write_pattern_file(file, kFileSize);
  }
  // One range of `length` bytes at `offset` into a fresh buffer.
  JobId submit_one(IoEngine& engine, int f, uint64_t offset, uint64_t length, Buffer& buffer, Priority p) {
    const ReadRange r{.file = f, .offset = offset, .length = length, .dst = buffer.data};
    return engine.submit(std::span(&r, 1), p);
  }
};

TEST_F(IoEngineTest, ReadsRandomRangesInEveryMode) {
  for (Backend backend : {Backend::Pread, Backend::Uring}) {
    for (bool direct : {false, true}) {
      for (int split : {1, 3, 4}) {
        SCOPED_TRACE(fmt::format("{} direct={} split={}", backend_name(backend), direct, split));
        IoEngine engine({.threads = 3, .split = split, .direct = direct, .backend = backend});
        const int f = engine.add_file(file.string());
        EXPECT_EQ(engine.file_size(f), kFileSize);
        EXPECT_EQ(engine.file_path(f), file.string());

        std::mt19937_64 rng(uint64_t(split * 10 + direct * 2 + int(backend)));
        struct Want {
          uint64_t offset, length;
        };
        std::vector<Want> wants = {{0, 4096}, {kFileSize - 5000, 5000}, {kFileSize - 1, 1}, {4095, 2}};
        for (int i = 0; i < 14; ++i) {
          const uint64_t offset = rng() % kFileSize;
          wants.push_back({offset, 1 + rng() % std::min<uint64_t>(kFileSize - offset, 700000)});
        }
        std::vector<std::unique_ptr<Buffer>> buffers;
        std::vector<JobId> jobs;
        uint64_t requested = 0;
        // Jobs of two ranges each (an expert is several slices), alternating priorities.
        for (size_t i = 0; i < wants.size(); i += 2) {
          std::vector<ReadRange> ranges;
          for (size_t k = i; k < std::min(i + 2, wants.size()); ++k) {
            buffers.push_back(std::make_unique<Buffer>(padded_size(wants[k].offset, wants[k].length)));
            ranges.push_back(
                {.file = f, .offset = wants[k].offset, .length = wants[k].length, .dst = buffers[k]->data});
            requested += wants[k].length;
          }
          jobs.push_back(engine.submit(ranges, i % 4 == 0 ? Priority::Demand : Priority::Prefetch));
        }
        for (JobId j : jobs) {
          engine.wait(j);
        }
        for (size_t k = 0; k < wants.size(); ++k)
          EXPECT_TRUE(holds_range(buffers[k]->data, wants[k].offset, wants[k].length));

        const IoStats s = engine.stats();
        EXPECT_EQ(s.jobs_done, jobs.size());
        EXPECT_EQ(s.jobs_failed, 0u);
        EXPECT_EQ(s.jobs_cancelled, 0u);
        EXPECT_EQ(s.bytes_read, requested);
        if (direct) {
          EXPECT_GT(s.bytes_device, requested);  // the aligned enclosing ranges
        } else {
          EXPECT_EQ(s.bytes_device, requested);
        }
        EXPECT_GE(s.wait_seconds, 0.0);
      }
    }
  }
}

TEST_F(IoEngineTest, DemandGoesBeforePrefetch) {
  for (Backend backend : {Backend::Pread, Backend::Uring}) {
    SCOPED_TRACE(backend_name(backend));
    IoEngine engine({.threads = 1, .split = 1, .backend = backend});
    const int f = engine.add_file(file.string());
    Gate gate;
    engine.set_fault_injector([&gate](const PieceInfo& p) { return gate(p); });
    std::vector<std::unique_ptr<Buffer>> buffers;
    std::vector<JobId> jobs;
    auto add = [&](uint64_t block, Priority p) {
      buffers.push_back(std::make_unique<Buffer>(kAlign));
      jobs.push_back(submit_one(engine, f, block * kAlign, kAlign, *buffers.back(), p));
    };
    add(0, Priority::Prefetch);  // starts, then blocks in the gate
    gate.wait_entered();
    add(1, Priority::Prefetch);
    add(2, Priority::Prefetch);
    add(3, Priority::Demand);
    add(4, Priority::Prefetch);
    add(5, Priority::Demand);
    EXPECT_FALSE(engine.done(jobs[1]));
    gate.release();
    for (size_t i = 0; i < jobs.size(); ++i) {
      engine.wait(jobs[i]);
      EXPECT_TRUE(holds_range(buffers[i]->data, i * kAlign, kAlign));
    }
    EXPECT_EQ(gate.started(),
              (std::vector<uint64_t>{0, 3 * kAlign, 5 * kAlign, 1 * kAlign, 2 * kAlign, 4 * kAlign}));
  }
}

TEST_F(IoEngineTest, PromoteMovesAPrefetchAhead) {
  for (Backend backend : {Backend::Pread, Backend::Uring}) {
    SCOPED_TRACE(backend_name(backend));
    IoEngine engine({.threads = 1, .split = 1, .backend = backend});
    const int f = engine.add_file(file.string());
    Gate gate;
    engine.set_fault_injector([&gate](const PieceInfo& p) { return gate(p); });
    std::vector<std::unique_ptr<Buffer>> buffers;
    std::vector<JobId> jobs;
    for (uint64_t block = 0; block < 4; ++block) {
      buffers.push_back(std::make_unique<Buffer>(kAlign));
      jobs.push_back(submit_one(engine, f, block * kAlign, kAlign, *buffers.back(), Priority::Prefetch));
      if (block == 0) gate.wait_entered();
    }
    engine.promote(jobs[3]);
    engine.promote(jobs[0]);  // already running: no effect
    gate.release();
    for (JobId j : jobs) engine.wait(j);
    EXPECT_EQ(gate.started(), (std::vector<uint64_t>{0, 3 * kAlign, 1 * kAlign, 2 * kAlign}));
  }
}

TEST_F(IoEngineTest, CancelDropsOnlyJobsNotStarted) {
  for (Backend backend : {Backend::Pread, Backend::Uring}) {
    SCOPED_TRACE(backend_name(backend));
    IoEngine engine({.threads = 1, .split = 1, .backend = backend});
    const int f = engine.add_file(file.string());
    Gate gate;
    engine.set_fault_injector([&gate](const PieceInfo& p) { return gate(p); });
    Buffer a(kAlign), b(kAlign), c(kAlign), d(kAlign);
    const JobId ja = submit_one(engine, f, 0, kAlign, a, Priority::Prefetch);
    gate.wait_entered();
    const JobId jb = submit_one(engine, f, kAlign, kAlign, b, Priority::Prefetch);
    const JobId jc = submit_one(engine, f, 2 * kAlign, kAlign, c, Priority::Prefetch);
    const JobId jd = submit_one(engine, f, 3 * kAlign, kAlign, d, Priority::Demand);
    // Another thread waits on c meanwhile: cancelling b and d must not disturb it, and c is no longer
    // cancellable once waited for.
    std::thread waiter([&] { engine.wait(jc); });
    EXPECT_TRUE(engine.cancel(jb));
    EXPECT_TRUE(engine.cancel(jd));
    EXPECT_FALSE(engine.cancel(ja));  // running
    gate.release();
    waiter.join();
    engine.wait(ja);
    EXPECT_TRUE(holds_range(a.data, 0, kAlign));
    EXPECT_TRUE(holds_range(c.data, 2 * kAlign, kAlign));
    EXPECT_EQ(uint8_t(b.data[0]), 0xAB);  // never read
    EXPECT_EQ(uint8_t(d.data[0]), 0xAB);
    EXPECT_EQ(gate.started(), (std::vector<uint64_t>{0, 2 * kAlign}));
    const IoStats s = engine.stats();
    EXPECT_EQ(s.jobs_cancelled, 2u);
    EXPECT_EQ(s.jobs_done, 2u);
  }
}

TEST_F(IoEngineTest, InjectedErrorFailsThatJobOnly) {
  for (Backend backend : {Backend::Pread, Backend::Uring}) {
    for (bool direct : {false, true}) {
      SCOPED_TRACE(fmt::format("{} direct={}", backend_name(backend), direct));
      IoEngine engine({.threads = 2, .split = 4, .direct = direct, .backend = backend});
      const int f = engine.add_file(file.string());
      // One range of 16 pages at 64 KiB, split in 4: the piece at 80 KiB fails.
      const uint64_t offset = 16 * kAlign, length = 16 * kAlign, bad = offset + 4 * kAlign;
      engine.set_fault_injector(
          [&](const PieceInfo& p) { return Fault{.error = p.offset == bad ? EIO : 0}; });
      Buffer buffer(length), other(length);
      const JobId failing = submit_one(engine, f, offset, length, buffer, Priority::Demand);
      const JobId fine = submit_one(engine, f, 2 * offset, length, other, Priority::Prefetch);
      expect_error([&] { engine.wait(failing); }, {"Input/output error", fmt::format("offset {}", bad)},
                   file.string() + ":");
      engine.wait(fine);
      EXPECT_TRUE(holds_range(other.data, 2 * offset, length));
      // The engine goes on: the same range reads fine once the fault is gone.
      engine.set_fault_injector({});
      engine.wait(submit_one(engine, f, offset, length, buffer, Priority::Demand));
      EXPECT_TRUE(holds_range(buffer.data, offset, length));
      const IoStats s = engine.stats();
      EXPECT_EQ(s.jobs_failed, 1u);
      EXPECT_EQ(s.jobs_done, 2u);
    }
  }
}

TEST_F(IoEngineTest, InjectedShortRead) {
  for (Backend backend : {Backend::Pread, Backend::Uring}) {
    SCOPED_TRACE(backend_name(backend));
    IoEngine engine({.threads = 2, .split = 1, .backend = backend});
    const int f = engine.add_file(file.string());
    engine.set_fault_injector([](const PieceInfo&) { return Fault{.short_by = 100}; });
    Buffer buffer(padded_size(8192, 50000));
    const JobId job = submit_one(engine, f, 8192, 50000, buffer, Priority::Demand);
    expect_error([&] { engine.wait(job); }, {"offset 8192", "short read: got 49900 of 50000 bytes"},
                 file.string() + ":");
  }
}

TEST_F(IoEngineTest, TruncatedFileGivesShortRead) {
  const fs::path victim = dir.path / "truncated.bin";
  for (Backend backend : {Backend::Pread, Backend::Uring}) {
    for (bool direct : {false, true}) {
      SCOPED_TRACE(fmt::format("{} direct={}", backend_name(backend), direct));
      write_pattern_file(victim, kFileSize);
      IoEngine engine({.threads = 2, .split = 1, .direct = direct, .backend = backend});
      const int f = engine.add_file(victim.string());
      const uint64_t cut = (1 << 20) + 100;
      ASSERT_EQ(::truncate(victim.c_str(), off_t(cut)), 0) << std::strerror(errno);
      Buffer before(padded_size(4096, 100000)), after(padded_size(1 << 20, 50000));
      const JobId ok = submit_one(engine, f, 4096, 100000, before, Priority::Demand);
      const JobId bad = submit_one(engine, f, 1 << 20, 50000, after, Priority::Demand);
      expect_error([&] { engine.wait(bad); }, {"short read: got 100 of 50000 bytes"}, victim.string() + ":");
      engine.wait(ok);
      EXPECT_TRUE(holds_range(before.data, 4096, 100000));
    }
  }
}

TEST_F(IoEngineTest, ConcurrentSubmitters) {
  for (Backend backend : {Backend::Pread, Backend::Uring}) {
    SCOPED_TRACE(backend_name(backend));
    IoEngine engine({.threads = 4, .split = 2, .backend = backend});
    const int f = engine.add_file(file.string());
    std::atomic<int> bad{0};
    auto submitter = [&](int seed) {
      std::mt19937_64 rng(static_cast<uint64_t>(seed));
      struct Pending {
        JobId job;
        uint64_t offset, length;
        std::unique_ptr<Buffer> buffer;
      };
      std::vector<Pending> pending;
      for (int i = 0; i < 150; ++i) {
        const uint64_t offset = rng() % kFileSize;
        const uint64_t length = 1 + rng() % std::min<uint64_t>(kFileSize - offset, 40000);
        auto buffer = std::make_unique<Buffer>(padded_size(offset, length));
        const JobId job =
            submit_one(engine, f, offset, length, *buffer, rng() % 2 ? Priority::Demand : Priority::Prefetch);
        if (rng() % 5 == 0) engine.promote(job);
        if (rng() % 7 == 0 && engine.cancel(job)) continue;
        pending.push_back({job, offset, length, std::move(buffer)});
        if (pending.size() > 8) {  // wait on the oldest few, as a compute thread would
          for (Pending& p : pending) {
            engine.wait(p.job);
            if (!holds_range(p.buffer->data, p.offset, p.length)) bad++;
          }
          pending.clear();
        }
      }
      for (Pending& p : pending) {
        engine.wait(p.job);
        if (!holds_range(p.buffer->data, p.offset, p.length)) bad++;
      }
    };
    std::thread one(submitter, 1), two(submitter, 2);
    one.join();
    two.join();
    EXPECT_EQ(bad.load(), 0);
    const IoStats s = engine.stats();
    EXPECT_EQ(s.jobs_done + s.jobs_cancelled, 300u);
    EXPECT_EQ(s.jobs_failed, 0u);
  }
}

TEST_F(IoEngineTest, EmptyJobAndDestructionWithQueuedJobs) {
  IoEngine engine({.threads = 1, .split = 1});
  const int f = engine.add_file(file.string());
  const JobId empty = engine.submit({}, Priority::Demand);
  EXPECT_TRUE(engine.done(empty));
  engine.wait(empty);
  // Jobs left queued at destruction are cancelled; the one running finishes first.
  auto engine2 = std::make_unique<IoEngine>(IoOptions{.threads = 1, .backend = Backend::Uring});
  const int f2 = engine2->add_file(file.string());
  Gate gate;
  engine2->set_fault_injector([&gate](const PieceInfo& p) { return gate(p); });
  Buffer a(kAlign), b(kAlign);
  submit_one(*engine2, f2, 0, kAlign, a, Priority::Demand);
  gate.wait_entered();
  submit_one(*engine2, f2, kAlign, kAlign, b, Priority::Demand);
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    gate.release();
  });
  engine2.reset();
  releaser.join();
  EXPECT_TRUE(holds_range(a.data, 0, kAlign));
  EXPECT_EQ(uint8_t(b.data[0]), 0xAB);
  (void)f;
}

TEST_F(IoEngineTest, MeasureReadBandwidth) {
  for (Backend backend : {Backend::Pread, Backend::Uring}) {
    const double bw = measure_read_bandwidth(file.string(), 256 << 10, 8,
                                             {.threads = 2, .split = 2, .direct = true, .backend = backend});
    EXPECT_GT(bw, 0.0);
  }
  expect_error([&] { measure_read_bandwidth(file.string(), kFileSize + 1, 1, {}); }, {"too small"},
               file.string());
}

TEST(IoEngine, BadInput) {
  expect_error([] { IoEngine engine({.threads = 0}); }, {"I/O threads must be at least 1"});
  expect_error([] { IoEngine engine({.split = 0}); }, {"I/O split must be at least 1"});
  IoEngine engine({});
  expect_error([&] { engine.add_file("/nonexistent/expert.bin"); }, {"cannot open", "No such file"},
               "/nonexistent/expert.bin:");
  expect_error([&] { engine.add_file("/"); }, {"not a regular file"}, "/:");
}

// procfs refuses O_DIRECT as filesystems without direct I/O do (tmpfs before Linux 6.6).
TEST(IoEngine, DirectIoRefusedByTheFilesystem) {
  const char* path = "/proc/version";
  const int fd = ::open(path, O_RDONLY | O_DIRECT);
  if (fd >= 0) ::close(fd);
  if (fd >= 0 || errno != EINVAL) GTEST_SKIP() << path << " accepts O_DIRECT here";
  IoEngine engine({.direct = true});
  expect_error([&] { engine.add_file(path); }, {"does not support direct I/O"}, std::string(path) + ":");
  IoEngine buffered({.direct = false});
  EXPECT_EQ(buffered.add_file(path), 0);
}

TEST(IoEngine, AlignedHelpers) {
  EXPECT_EQ(head(4097), 1u);
  EXPECT_EQ(padded_size(4097, 4095), 4096u);
  EXPECT_EQ(padded_size(4097, 4096), 8192u);
  EXPECT_EQ(padded_size(0, 1), 4096u);
  std::byte* p = alloc_aligned(10);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kAlign, 0u);
  free_aligned(p);
}

}  // namespace
}  // namespace fm::io
