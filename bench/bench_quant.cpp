// Decode matvec (one token) over block-quantized weights, per format: weights per second
// (items = rows * cols per call) for a 4096 x 14336 matrix on 1, 2, 4, 8 and 16 threads, the shape of
// llama.cpp's `test-backend-ops perf -o MUL_MAT` cases (m = 4096, k = 14336, n = 1).
// scripts/bench_quant_vs_llama.sh runs this next to llama.cpp's own kernels on the same shape and
// threads (tools/ggml_matvec) and prints the ratios. The matrix (15 to 62 MB depending on the format)
// is reused every call. F16 and BF16 take the float path on the same shape.
// matmul takes the AVX-512 VNNI kernels where the CPU has them; FM_NO_AVX512=1 in the environment
// measures the AVX2 ones instead.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "formats/quant_blocks.h"
#include "ops/cpu/kernels.h"
#include "ops/mat.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace {

constexpr int64_t kRows = 4096, kCols = 14336;

// Random blocks with finite, moderate scales (the values do not change the work per block).
template <class Q>
std::vector<std::byte> random_weights(int64_t n_blocks) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<std::byte> out(size_t(n_blocks) * sizeof(typename Q::Block));
  for (auto& b : out) b = std::byte(byte(rng));
  for (int64_t i = 0; i < n_blocks; ++i) {
    typename Q::Block b;
    std::memcpy(&b, out.data() + i * int64_t(sizeof(b)), sizeof(b));
    const uint16_t scale = fm::f32_to_f16(std::ldexp(1.0f, -(byte(rng) % 8)));
    if constexpr (requires { b.d; }) b.d = scale;
    if constexpr (requires { b.dmin; }) b.dmin = scale;
    if constexpr (requires { b.m; }) b.m = scale;
    if constexpr (requires { b.e; }) b.e = uint8_t(120 + byte(rng) % 10);
    std::memcpy(out.data() + i * int64_t(sizeof(b)), &b, sizeof(b));
  }
  return out;
}

// One-token matvec of w (kRows x kCols) on `threads` threads: weights and bytes per second, and
// "sleeps": how often per call a pool worker slept between calls (its spin of `spin` ran out) and
// had to be woken, which a busy host makes slow.
void time_matvec(benchmark::State& state, const fm::Mat& w, int threads,
                 std::chrono::microseconds spin = fm::ThreadPool::kDefaultSpin) {
  std::vector<float> x(static_cast<size_t>(kCols), 0.5f), y(static_cast<size_t>(kRows));
  fm::ThreadPool pool(threads, spin);
  const uint64_t sleeps0 = pool.sleeps();
  for (auto _ : state) {
    fm::cpu::matmul(w, x.data(), 1, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * kRows * kCols);
  state.SetBytesProcessed(int64_t(state.iterations() * w.nbytes()));
  state.counters["sleeps"] =
      benchmark::Counter(double(pool.sleeps() - sleeps0), benchmark::Counter::kAvgIterations);
  state.SetLabel(fm::cpu::matmul_isa());
}

// interleaved: the rows interleaved by eight, as the CPU backend lays out resident weights at load.
template <class Q>
void matvec_quant(benchmark::State& state, std::chrono::microseconds spin, bool interleaved = false) {
  const int threads = int(state.range(0));
  const uint64_t row_bytes = uint64_t(kCols / Q::kBlock) * sizeof(typename Q::Block);
  const std::vector<std::byte> weights = random_weights<Q>(kRows * kCols / Q::kBlock);
  const fm::Mat w{Q::kType, kRows, kCols, weights.data(), row_bytes};
  std::vector<std::byte> packed(interleaved ? weights.size() : 0);
  time_matvec(state, interleaved ? fm::interleave_rows8(w, packed.data()) : w, threads, spin);
}

template <class Q>
void BM_matvec_quant(benchmark::State& state) {
  matvec_quant<Q>(state, fm::ThreadPool::kDefaultSpin);
}

template <class Q>
void BM_matvec_interleaved(benchmark::State& state) {
  matvec_quant<Q>(state, fm::ThreadPool::kDefaultSpin, true);
}

// The same with the pool's spin (microseconds) as the second argument.
template <class Q>
void BM_spin_quant(benchmark::State& state) {
  matvec_quant<Q>(state, std::chrono::microseconds(state.range(1)));
}

// The float weight types of the same table (F16 and BF16 rows of random finite values).
template <fm::DType kType>
void BM_matvec_float(benchmark::State& state) {
  const int threads = int(state.range(0));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint16_t> weights(static_cast<size_t>(kRows * kCols));
  for (uint16_t& v : weights)
    v = kType == fm::DType::F16 ? fm::f32_to_f16(dist(rng)) : fm::f32_to_bf16(dist(rng));
  const fm::Mat w{kType, kRows, kCols, reinterpret_cast<const std::byte*>(weights.data()),
                  uint64_t(kCols) * 2};
  time_matvec(state, w, threads);
}

// MLX affine b-bit (BF16 scales and biases, as mlx-community checkpoints), same shape; the names
// give bits and group: BM_matvec_MLX4 (group 64), BM_matvec_MLX4_G32 ...
template <int kBits, int kGroup>
void BM_matvec_mlx(benchmark::State& state) {
  const int threads = int(state.range(0));
  std::mt19937 rng(1);
  std::vector<std::byte> levels(static_cast<size_t>(kRows * kCols * kBits / 8));
  for (auto& b : levels) b = std::byte(rng() & 0xFF);
  std::vector<uint16_t> scales(static_cast<size_t>(kRows * kCols / kGroup)), biases(scales.size());
  std::uniform_real_distribution<float> scale(0.001f, 0.05f), bias(-0.5f, 0.5f);
  for (size_t i = 0; i < scales.size(); ++i)
    scales[i] = fm::f32_to_bf16(scale(rng)), biases[i] = fm::f32_to_bf16(bias(rng));
  fm::Mat w{*fm::mlx_dtype(kBits), kRows, kCols, levels.data(), uint64_t(kCols * kBits / 8)};
  w.mlx = fm::MlxGroups{reinterpret_cast<const std::byte*>(scales.data()),
                        reinterpret_cast<const std::byte*>(biases.data()), uint64_t(kCols / kGroup) * 2,
                        fm::DType::BF16, kGroup};
  time_matvec(state, w, threads);
}

#define FM_MLX_BENCH(BITS, GROUP, NAME)          \
  BENCHMARK_TEMPLATE(BM_matvec_mlx, BITS, GROUP) \
      ->Name("BM_matvec_" NAME)                  \
      ->ArgName("threads")                       \
      ->Arg(1)                                   \
      ->Arg(2)                                   \
      ->UseRealTime()                            \
      ->MinWarmUpTime(0.2)

FM_MLX_BENCH(4, 64, "MLX4");
FM_MLX_BENCH(2, 64, "MLX2");
FM_MLX_BENCH(3, 64, "MLX3");
FM_MLX_BENCH(6, 64, "MLX6");
FM_MLX_BENCH(8, 64, "MLX8");
FM_MLX_BENCH(4, 32, "MLX4_G32");
FM_MLX_BENCH(4, 128, "MLX4_G128");

BENCHMARK_TEMPLATE(BM_matvec_float, fm::DType::F16)
    ->Name("BM_matvec_F16")
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Arg(4)
    ->Arg(8)
    ->Arg(16)
    ->UseRealTime()
    ->MinWarmUpTime(0.2);
BENCHMARK_TEMPLATE(BM_matvec_float, fm::DType::BF16)
    ->Name("BM_matvec_BF16")
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Arg(4)
    ->Arg(8)
    ->Arg(16)
    ->UseRealTime()
    ->MinWarmUpTime(0.2);

#define FM_QUANT_BENCH_AS(FN, T, NAME) \
  BENCHMARK_TEMPLATE(FN, fm::quant::T) \
      ->Name(NAME)                     \
      ->ArgName("threads")             \
      ->Arg(1)                         \
      ->Arg(2)                         \
      ->Arg(4)                         \
      ->Arg(8)                         \
      ->Arg(16)                        \
      ->UseRealTime()                  \
      ->MinWarmUpTime(0.2)
#define FM_QUANT_BENCH(T) FM_QUANT_BENCH_AS(BM_matvec_quant, T, "BM_matvec_" #T)
// The blocks of 32 also with their rows interleaved (BM_matvec_Q4_0_interleaved ...).
#define FM_QUANT_BENCH32(T) \
  FM_QUANT_BENCH(T);        \
  FM_QUANT_BENCH_AS(BM_matvec_interleaved, T, "BM_matvec_" #T "_interleaved")

FM_QUANT_BENCH32(Q4_0);
FM_QUANT_BENCH32(Q4_1);
FM_QUANT_BENCH32(Q5_0);
FM_QUANT_BENCH32(Q5_1);
FM_QUANT_BENCH(Q8_0);  // not interleaved by the CPU backend (see CpuBackend::prepare_resident)
FM_QUANT_BENCH32(IQ4_NL);
FM_QUANT_BENCH32(MXFP4);
FM_QUANT_BENCH(Q2_K);
FM_QUANT_BENCH(Q3_K);
FM_QUANT_BENCH(Q4_K);
FM_QUANT_BENCH(Q5_K);
FM_QUANT_BENCH(Q6_K);
FM_QUANT_BENCH(IQ2_XXS);
FM_QUANT_BENCH(IQ2_XS);
FM_QUANT_BENCH(IQ2_S);
FM_QUANT_BENCH(IQ3_XXS);
FM_QUANT_BENCH(IQ3_S);
FM_QUANT_BENCH(IQ4_XS);

// interleave_rows8 itself, one thread: the load-time cost of the interleaved layout (bytes/s).
template <class Q>
void BM_interleave(benchmark::State& state) {
  const uint64_t row_bytes = uint64_t(kCols / Q::kBlock) * sizeof(typename Q::Block);
  const std::vector<std::byte> weights = random_weights<Q>(kRows * kCols / Q::kBlock);
  const fm::Mat w{Q::kType, kRows, kCols, weights.data(), row_bytes};
  std::vector<std::byte> packed(weights.size());
  for (auto _ : state) {
    fm::interleave_rows8(w, packed.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations() * w.nbytes()));
}
BENCHMARK_TEMPLATE(BM_interleave, fm::quant::IQ4_NL)->Name("BM_interleave_IQ4_NL")->UseRealTime();
BENCHMARK_TEMPLATE(BM_interleave, fm::quant::Q5_1)->Name("BM_interleave_Q5_1")->UseRealTime();

// The pool's spin before a worker sleeps, side by side: the default against milliseconds (as
// OpenMP's threads spin), on a compute-bound and a memory-bound format.
#define FM_SPIN_BENCH(T)                                                           \
  BENCHMARK_TEMPLATE(BM_spin_quant, fm::quant::T)                                  \
      ->Name("BM_spin_" #T)                                                        \
      ->ArgNames({"threads", "spin_us"})                                           \
      ->ArgsProduct({{2, 16}, {fm::ThreadPool::kDefaultSpin.count(), 1000, 5000}}) \
      ->UseRealTime()                                                              \
      ->MinWarmUpTime(0.2)

FM_SPIN_BENCH(IQ2_XXS);
FM_SPIN_BENCH(Q4_K);

}  // namespace

BENCHMARK_MAIN();
