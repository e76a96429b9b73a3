// matmul and embed on the CPU: the scalar reference kernels, the choice between them and the AVX2
// ones, and the blocking and threading that both share.
//
// The work is split over output rows (each thread streams its own slice of the weights). Tokens go
// through the tile kernels at most kMaxTileTokens at a time, so every weight loaded serves several
// tokens; with more tokens than one tile, rows are taken in blocks that stay in L2 while all the
// tiles pass over them, so prefill reads the weights from memory about once. Block-quantized
// weights take the same blocking and threading with the kernels of matmul_quant*.cpp, after their
// activation rows are quantized once per call (quant_act.h).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <vector>

#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/kernels.h"
#include "formats/quant.h"
#include "ops/cpu/matmul_mlx.h"
#include "ops/cpu/matmul_quant.h"
#include "util/error.h"

namespace fm::cpu {

namespace {

using detail::kMaxTileTokens;
using detail::TileKernel;

// Output rows per parallel chunk come in multiples of 16 (whole cache lines of y, no false sharing
// between threads) and carry at least this many weight bytes, so a share pays for its hand-off.
constexpr uint64_t kMinChunkBytes = 16 << 10;
// Weight bytes of a row block that the tiles of one prefill pass over: well inside L2.
constexpr uint64_t kBlockBytes = 256 << 10;

std::atomic<bool> g_force_scalar{false};

// The reference kernel: per row and token, four interleaved partial sums (fewer rounding steps
// in a row than one running sum, and independent for the compiler).
template <float (*at)(const std::byte*, int64_t)>
void scalar_tile(const Mat& w, int64_t r0, int64_t r1, const float* x, int n_tokens, float* y, int64_t ldy) {
  const int64_t cols = w.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const std::byte* row = w.data + uint64_t(r) * w.row_bytes;
    float acc[kMaxTileTokens][4] = {};
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) {
      for (int k = 0; k < 4; ++k) {
        const float wv = at(row, c + k);
        for (int t = 0; t < n_tokens; ++t) acc[t][k] += wv * x[t * cols + c + k];
      }
    }
    for (; c < cols; ++c) {
      const float wv = at(row, c);
      for (int t = 0; t < n_tokens; ++t) acc[t][0] += wv * x[t * cols + c];
    }
    for (int t = 0; t < n_tokens; ++t) y[t * ldy + r] = (acc[t][0] + acc[t][1]) + (acc[t][2] + acc[t][3]);
  }
}

TileKernel scalar_tile_kernel(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return scalar_tile<detail::f32_at>;
    case DType::F16:
      return scalar_tile<detail::f16_at>;
    case DType::BF16:
      return scalar_tile<detail::bf16_at>;
    default:
      break;
  }
  FM_CHECK(false, "matmul does not read {} weights", dtype_name(dtype));
}

bool use_avx2() { return have_avx2() && !g_force_scalar.load(std::memory_order_relaxed); }

// Float weights on the vector path: AVX-512 for F16 and BF16 where the CPU has it, else AVX2.
TileKernel vector_float_kernel(DType dtype) {
  const bool avx512 = detail::have_avx512_float() && (dtype == DType::F16 || dtype == DType::BF16);
  return avx512 ? detail::avx512_tile_kernel(dtype) : detail::avx2_tile_kernel(dtype);
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The quantized activations of the calling thread's matmul calls: it grows to the largest call the
// thread has made and is then reused, so steady decoding and prefill allocate nothing (the first
// chunk of a run sizes it; test_no_alloc checks the steady state).
std::byte* quant_act_scratch(uint64_t bytes) {
  constexpr uint64_t kAlign = 64;
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < bytes + kAlign) buffer.resize(bytes + kAlign);
  const auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return buffer.data() + (kAlign - address % kAlign) % kAlign;
}

// Block-quantized weights (and MLX ones on the vector path): the activation rows are quantized once
// (quant_act.h), in parallel over tokens, then the tiles take them with the same blocking and
// threading as the float kernels.
// The weight rows split among the threads in chunks of at least kMinChunkBytes; for prefill, in
// blocks of about kBlockBytes so a block stays in cache across token tiles of kMaxTileTokens.
// fn(b0, b1, t0, tile) computes rows [b0, b1) for tokens [t0, t0 + tile).
template <class Fn>
void for_each_tile(const Mat& w, int n, ThreadPool& pool, const Fn& fn) {
  const uint64_t row_bytes = std::max<uint64_t>(w.row_bytes, 1);
  const int64_t grain = round_up(std::max<int64_t>(1, int64_t(kMinChunkBytes / row_bytes)), 16);
  const int64_t n_chunks = (w.rows + grain - 1) / grain;
  if (n <= kMaxTileTokens && n_chunks >= 4 * int64_t(pool.size())) {
    // Decode over a large matrix: chunks of `grain` rows handed out one at a time, so a thread that
    // is held up (another process on its core, a slower path to the data) leaves its rows to the
    // others instead of holding up the call. (Small matrices keep one static share per thread: there
    // the shared counter cost more than it balanced; the 2-core VM's default-model decode lost ~15%.)
    std::atomic<int64_t> next{0};
    pool.parallel_for(std::min<int64_t>(n_chunks, pool.size()), 1, [&](int64_t, int64_t, int) {
      for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < n_chunks;
           c = next.fetch_add(1, std::memory_order_relaxed))
        fn(c * grain, std::min(w.rows, (c + 1) * grain), 0, n);
    });
    return;
  }
  // Otherwise a static share per thread, for prefill in row blocks. Shares, chunks and blocks all
  // start at multiples of 16 rows: the quantized kernels take rows eight at a time from the start of
  // a range, so a row lands in the same group of eight whatever n is, and a sequence gets the same
  // bits alone as in a batch.
  const int64_t block_rows =
      n <= kMaxTileTokens ? w.rows : round_up(std::max<int64_t>(16, int64_t(kBlockBytes / row_bytes)), 16);
  pool.parallel_for(w.rows, grain, [&](int64_t r0, int64_t r1, int) {
    for (int64_t b0 = r0; b0 < r1; b0 += block_rows) {
      const int64_t b1 = std::min(r1, b0 + block_rows);
      for (int t0 = 0; t0 < n; t0 += kMaxTileTokens) fn(b0, b1, t0, std::min(kMaxTileTokens, n - t0));
    }
  });
}

void matmul_quant(const Mat& w, const detail::QuantKernel& kernel, uint64_t act_row_bytes, const float* x, int n,
                  float* y, ThreadPool& pool) {
  std::byte* xq = quant_act_scratch(act_row_bytes * uint64_t(n));
  pool.parallel_for(n, 1, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) kernel.quantize_act(x + t * w.cols, w.cols, xq + uint64_t(t) * act_row_bytes);
  });
  const int64_t ldy = w.rows;
  for_each_tile(w, n, pool, [&](int64_t b0, int64_t b1, int t0, int tile) {
    kernel.tile(w, b0, b1, xq + uint64_t(t0) * act_row_bytes, act_row_bytes, tile, y + int64_t(t0) * ldy, ldy);
  });
}

}  // namespace

bool have_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool have =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return have;
#else
  return false;
#endif
}

const char* matmul_isa() {
  // "avx512": the quantized and MLX kernels take their AVX-512 VNNI build (FM_NO_AVX512 unset);
  // the float kernels follow their own check (have_avx512_float, F16/BF16 only).
  return !use_avx2() ? "scalar" : detail::have_avx512_vnni() ? "avx512" : "avx2";
}

void set_force_scalar(bool force) { g_force_scalar.store(force, std::memory_order_relaxed); }

void matmul(const Mat& w, const float* x, int n, float* y, ThreadPool& pool) {
  const bool mlx = is_mlx(w.dtype);  // MLX affine: the kernels of matmul_mlx*.cpp, blocked as the float ones
  const bool quantized = is_quantized(w.dtype) && !mlx;
  FM_CHECK(is_float_weight(w.dtype) || (quantized && detail::quant_tile_supported(w.dtype)) ||
               (mlx && detail::mlx_tile_supported(w)),
           "matmul does not read {} weights", dtype_name(w.dtype));
  FM_CHECK(n >= 0 && w.rows >= 0 && w.cols >= 0, "matmul shape: n={} rows={} cols={}", n, w.rows, w.cols);
  const std::optional<uint64_t> min_row_bytes = dtype_row_bytes(w.dtype, uint64_t(w.cols));
  FM_CHECK(min_row_bytes && w.row_bytes >= *min_row_bytes, "matmul row of {} {} values in {} bytes", w.cols,
           dtype_name(w.dtype), w.row_bytes);
  if (n == 0 || w.rows == 0) return;

  if (quantized) {
    const detail::QuantKernel kernel = !use_avx2()                  ? detail::scalar_quant_kernel(w.dtype)
                                       : detail::have_avx512_vnni() ? detail::avx512_quant_kernel(w.dtype)
                                                                    : detail::avx2_quant_kernel(w.dtype);
    return matmul_quant(w, kernel, detail::quant_act_row_bytes(w.dtype, w.cols), x, n, y, pool);
  }
  // MLX: the vector kernels quantize the activations as the block-quantized ones do; the scalar one
  // computes in float from the dequantized values (the exact path, below).
  if (mlx && use_avx2()) {
    const detail::QuantKernel kernel =
        detail::have_avx512_vnni() ? detail::avx512_mlx_kernel(w) : detail::avx2_mlx_kernel(w);
    return matmul_quant(w, kernel, detail::mlx_act_row_bytes(w.cols), x, n, y, pool);
  }
  const TileKernel kernel = mlx          ? detail::scalar_mlx_tile_kernel(w.dtype)
                            : use_avx2() ? vector_float_kernel(w.dtype)
                                         : scalar_tile_kernel(w.dtype);
  const int64_t ldy = w.rows;
  for_each_tile(w, n, pool, [&](int64_t b0, int64_t b1, int t0, int tile) {
    kernel(w, b0, b1, x + int64_t(t0) * w.cols, tile, y + int64_t(t0) * ldy, ldy);
  });
}

void embed(const Mat& table, const int32_t* ids, int n, float* out) {
  FM_CHECK(can_dequantize(table.dtype) || (is_mlx(table.dtype) && detail::mlx_tile_supported(table)),
           "embed does not read {} tables", dtype_name(table.dtype));
  for (int t = 0; t < n; ++t) {
    FM_CHECK(ids[t] >= 0 && ids[t] < table.rows, "token id {} outside the table of {} rows", ids[t],
             table.rows);
    dequantize_mat_row(table, ids[t], out + int64_t(t) * table.cols);
  }
}

}  // namespace fm::cpu

namespace fm {

Mat CpuBackend::prepare_resident(const Mat& w, std::vector<std::byte>& storage) {
  const std::optional<uint64_t> packed_row = dtype_row_bytes(w.dtype, uint64_t(w.cols));
  // Q8_0 stays as stored: its eight-row loop is bound by memory either way (one core of the 2-core
  // AMD EPYC VM, best of 5 short timings in four rounds: 17.0-18.4 G weights/s stored, 15.5-19.4
  // interleaved; two cores 29.7-35.7 / 27.0-31.7).
  if (w.interleaved || w.rows < 8 || w.dtype == DType::Q8_0 || !can_interleave_rows8(w.dtype) ||
      packed_row != w.row_bytes)
    return w;
  storage.resize(size_t(w.nbytes()));
  // In parallel over groups of eight rows; the last share takes the rows past the last group too.
  const int64_t groups = w.rows / 8;
  pool_.parallel_for(groups, 64, [&](int64_t g0, int64_t g1, int) {
    const int64_t rows = g1 == groups ? w.rows - 8 * g0 : 8 * (g1 - g0);
    interleave_rows8(w.slice_rows(8 * g0, rows), storage.data() + uint64_t(8 * g0) * w.row_bytes);
  });
  Mat m = w;
  m.data = storage.data();
  m.interleaved = true;
  return m;
}

void CpuBackend::matmul(const Mat& w, const float* x, int n, float* y) { cpu::matmul(w, x, n, y, pool_); }

void CpuBackend::embed(const Mat& table, const int32_t* ids, int n, float* out) {
  cpu::embed(table, ids, n, out);
}

}  // namespace fm
