// Matmul throughput against the machine's memory read bandwidth. Decode (one token) has to stream
// every weight once, so its GB/s of weights read, next to BM_read_bandwidth, says how close the
// kernel gets to the hardware floor.
//
// "cold" runs rotate over 512 MiB of distinct weight matrices, far more than any last-level cache,
// so every call reads from DRAM, as a MoE decode step does with its experts; "hot" runs repeat one
// matrix, which then sits in L2/L3 and shows the kernel's own ceiling.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "ops/cpu/kernels.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace {

constexpr uint64_t kMiB = uint64_t(1) << 20;
constexpr uint64_t kColdBytes = 512 * kMiB;

// Raw storage that is only ever read through Mat: no value-initialisation, page-aligned.
struct Buffer {
  std::unique_ptr<std::byte[]> bytes;
  std::byte* data = nullptr;
  explicit Buffer(uint64_t n) : bytes(new std::byte[n + 4096]) {
    data = bytes.get() + (4096 - reinterpret_cast<uintptr_t>(bytes.get()) % 4096) % 4096;
  }
};

// Fills 16-bit float weights (F16 or BF16) with small random values (page-faulting everything in
// before timing).
void fill_16bit(fm::DType dtype, std::byte* p, uint64_t n_values) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  uint16_t table[4096];
  for (uint16_t& h : table)
    h = dtype == fm::DType::F16 ? fm::f32_to_f16(dist(rng)) : fm::f32_to_bf16(dist(rng));
  auto* h = reinterpret_cast<uint16_t*>(p);
  for (uint64_t i = 0; i < n_values; ++i) h[i] = table[(i * 2654435761u) % 4096];
}

// Args: rows, cols, tokens, threads, cold.
template <fm::DType kType>
void BM_matmul(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const int n = int(state.range(2));
  const int threads = int(state.range(3));
  const bool cold = state.range(4) != 0;
  const uint64_t mat_bytes = uint64_t(rows * cols) * 2;
  const uint64_t n_mats = cold ? std::max<uint64_t>(1, kColdBytes / mat_bytes) : 1;
  Buffer weights(n_mats * mat_bytes);
  fill_16bit(kType, weights.data, n_mats * mat_bytes / 2);
  std::vector<float> x(size_t(n * cols), 0.5f), y(size_t(n * rows));
  fm::ThreadPool pool(threads);

  uint64_t i = 0;
  for (auto _ : state) {
    const fm::Mat w{kType, rows, cols, weights.data + (i++ % n_mats) * mat_bytes, uint64_t(cols) * 2};
    fm::cpu::matmul(w, x.data(), n, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations() * mat_bytes));
  state.counters["GFLOPS"] = benchmark::Counter(
      double(state.iterations()) * 2.0 * double(rows * cols) * n * 1e-9, benchmark::Counter::kIsRate);
  state.SetLabel(fm::cpu::matmul_isa());
}

// Expert-sized matrices (Qwen3.5-35B-A3B's 512 x 2048 gate/up and 2048 x 512 down, and a square
// one), cold and hot; and, cold, one with rows too wide for the activation to stay in L1 (the
// kernels interleave rows there: ops/cpu/matmul_float_avx512.cpp).
void matmul_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "n", "threads", "cold"});
  for (int cold : {1, 0})
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{2048, 2048}, {512, 2048}, {2048, 512}})
      for (int n : {1, 8})
        for (int threads : {1, 2}) b->Args({rows, cols, n, threads, cold});
  for (int n : {1, 8})
    for (int threads : {1, 2}) b->Args({2048, 8192, n, threads, 1});
  // Warm-up lets the scheduler spread a new pool's threads over the cores before timing starts.
  b->UseRealTime()->MinWarmUpTime(0.2);
}
BENCHMARK_TEMPLATE(BM_matmul, fm::DType::BF16)->Name("BM_matmul_bf16")->Apply(matmul_args);
BENCHMARK_TEMPLATE(BM_matmul, fm::DType::F16)->Name("BM_matmul_f16")->Apply(matmul_args);

__attribute__((target("avx2"))) float sum_avx2(const float* p, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  float lanes[8];
  _mm256_storeu_ps(lanes, s);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
}

// The floor: sum a 512 MiB float buffer, split over the pool like a matmul's rows.
void BM_read_bandwidth(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx2")) {
    state.SkipWithError("no AVX2");
    return;
  }
  const int threads = int(state.range(0));
  const int64_t n = int64_t(kColdBytes / 4);
  Buffer buf(kColdBytes);
  std::memset(buf.data, 0, kColdBytes);
  const float* p = reinterpret_cast<const float*>(buf.data);
  fm::ThreadPool pool(threads);
  float partial[64] = {};
  for (auto _ : state) {
    pool.parallel_for(n, 1 << 14, [&](int64_t begin, int64_t end, int t) {
      partial[t * 16] = sum_avx2(p + begin, end - begin);  // one cache line per thread
    });
    benchmark::DoNotOptimize(partial);
  }
  state.SetBytesProcessed(int64_t(state.iterations() * kColdBytes));
}
BENCHMARK(BM_read_bandwidth)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->MinWarmUpTime(0.2);

// The pool's hand-off cost: an empty job per thread, back to back.
void BM_parallel_for_empty(benchmark::State& state) {
  fm::ThreadPool pool(int(state.range(0)));
  for (auto _ : state) pool.parallel_for(pool.size(), 1, [](int64_t, int64_t, int) {});
}
BENCHMARK(BM_parallel_for_empty)->ArgName("threads")->Arg(2)->UseRealTime()->MinWarmUpTime(0.2);

}  // namespace

BENCHMARK_MAIN();
