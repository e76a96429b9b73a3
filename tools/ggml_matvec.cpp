// llama.cpp's side of scripts/bench_quant_vs_llama.sh: one decode matvec (ROWS x COLS weights of a
// type times one f32 token) through ggml's CPU backend, as llama.cpp computes it: its MUL_MAT,
// which quantizes the activation to the type's vec_dot partner on every call, on a thread pool made
// once (as llama.cpp's contexts keep one), weights per second printed. Built against ggml's own
// headers and libraries (the llama-cpp-python source package vendors them), never part of flashmoe:
//   g++ -std=c++17 -O2 tools/ggml_matvec.cpp -I$LLAMA/ggml/include -L$LIB -lggml -lggml-base -lggml-cpu
//   ./ggml_matvec TYPE THREADS [--repack] [--rows 4096] [--cols 14336] [--seconds 1] [--repetitions 1]
// TYPE is ggml's name (q4_K, iq2_xxs, bf16 ...). --repack puts the weights in the CPU backend's
// repacking buffer, the interleaved layout llama.cpp gives a model's weights when it loads one on
// the CPU (for the types and CPUs that have one: Q4_0, Q4_K, IQ4_NL, MXFP4 on AVX2, Q2_K on AVX-512;
// exit status 3 where the type has none). Without it, the plain layout, as test-backend-ops times.
// Weights: 16 rows of random normal values quantized by ggml_quantize_chunk (an importance matrix of
// ones for the types that need one), repeated over all rows; the work per block does not depend on
// the values.
// Output, one line per repetition (each timed over --seconds): TYPE THREADS LAYOUT us_per_call
// weights_per_second
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "ggml_matvec: %s\n", what);
  std::exit(1);
}

ggml_type type_by_name(const std::string& name) {
  for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
    const char* n = ggml_type_name(ggml_type(t));
    if (n != nullptr && name == n) return ggml_type(t);
  }
  die(("unknown type " + name).c_str());
}

ggml_backend_buffer_type_t repack_buffer_type(ggml_backend_t backend) {
  ggml_backend_dev_t dev = ggml_backend_get_device(backend);
  auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
      ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts"));
  if (get_extra == nullptr) return nullptr;
  for (ggml_backend_buffer_type_t* b = get_extra(dev); *b != nullptr; ++b)
    if (std::strstr(ggml_backend_buft_name(*b), "REPACK") != nullptr) return *b;
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: %s TYPE THREADS [--repack] [--rows N] [--cols N] [--seconds S] [--repetitions N]\n",
                 argv[0]);
    return 2;
  }
  const ggml_type type = type_by_name(argv[1]);
  const int threads = std::atoi(argv[2]);
  bool repack = false;
  int64_t rows = 4096, cols = 14336;
  double seconds = 1.0;
  int repetitions = 1;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--repack") {
      repack = true;
    } else if (i + 1 < argc && a == "--rows") {
      rows = std::atoll(argv[++i]);
    } else if (i + 1 < argc && a == "--cols") {
      cols = std::atoll(argv[++i]);
    } else if (i + 1 < argc && a == "--seconds") {
      seconds = std::atof(argv[++i]);
    } else if (i + 1 < argc && a == "--repetitions") {
      repetitions = std::atoi(argv[++i]);
    } else {
      die(("unknown argument " + a).c_str());
    }
  }
  if (repetitions < 1) die("bad repetitions");
  if (threads < 1 || rows < 16 || rows % 16 != 0 || cols % 256 != 0) die("bad threads, rows or cols");

  ggml_backend_t backend = ggml_backend_cpu_init();
  if (backend == nullptr) die("no CPU backend");
  ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
  ggml_threadpool* pool = ggml_threadpool_new(&tpp);
  ggml_backend_cpu_set_n_threads(backend, threads);
  ggml_backend_cpu_set_threadpool(backend, pool);

  // Weights (their own context, so they can live in the repacking buffer) and the activation.
  ggml_init_params wp = {ggml_tensor_overhead() * 4, nullptr, true};
  ggml_context* ctx_w = ggml_init(wp);
  ggml_tensor* a = ggml_new_tensor_2d(ctx_w, type, cols, rows);
  ggml_backend_buffer_t wbuf;
  if (repack) {
    ggml_backend_buffer_type_t buft = repack_buffer_type(backend);
    if (buft == nullptr) die("this ggml has no repacking buffer type");
    wbuf = ggml_backend_alloc_ctx_tensors_from_buft(ctx_w, buft);
    if (wbuf == nullptr) die("allocation failed");
    if (a->extra == nullptr) {
      std::fprintf(stderr, "ggml_matvec: %s has no repacked layout on this CPU\n", argv[1]);
      return 3;
    }
  } else {
    wbuf = ggml_backend_alloc_ctx_tensors(ctx_w, backend);
    if (wbuf == nullptr) die("allocation failed");
  }

  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  constexpr int64_t kDistinct = 16;
  std::vector<float> src(size_t(kDistinct * cols));
  for (float& v : src) v = normal(rng);
  const size_t row_bytes = ggml_row_size(type, cols);
  std::vector<uint8_t> q(row_bytes * size_t(rows));
  std::vector<float> imatrix(size_t(cols), 1.0f);
  ggml_quantize_chunk(type, src.data(), q.data(), 0, kDistinct, cols,
                      ggml_quantize_requires_imatrix(type) ? imatrix.data() : nullptr);
  for (int64_t r = kDistinct; r < rows; ++r)
    std::memcpy(q.data() + size_t(r) * row_bytes, q.data() + size_t(r % kDistinct) * row_bytes, row_bytes);
  ggml_backend_tensor_set(a, q.data(), 0, q.size());

  ggml_init_params xp = {ggml_tensor_overhead() * 8 + ggml_graph_overhead(), nullptr, true};
  ggml_context* ctx_x = ggml_init(xp);
  ggml_tensor* x = ggml_new_tensor_2d(ctx_x, GGML_TYPE_F32, cols, 1);
  ggml_tensor* y = ggml_mul_mat(ctx_x, a, x);
  ggml_cgraph* graph = ggml_new_graph(ctx_x);
  ggml_build_forward_expand(graph, y);
  ggml_backend_buffer_t xbuf = ggml_backend_alloc_ctx_tensors(ctx_x, backend);
  if (xbuf == nullptr) die("allocation failed");
  std::vector<float> xv(static_cast<size_t>(cols));
  for (float& v : xv) v = normal(rng);
  ggml_backend_tensor_set(x, xv.data(), 0, xv.size() * sizeof(float));

  using clock = std::chrono::steady_clock;
  const auto run_for = [&](double s) {
    const auto t0 = clock::now();
    int64_t n = 0;
    double elapsed = 0.0;
    do {
      if (ggml_backend_graph_compute(backend, graph) != GGML_STATUS_SUCCESS) die("graph compute failed");
      ++n;
      elapsed = std::chrono::duration<double>(clock::now() - t0).count();
    } while (elapsed < s);
    return elapsed / double(n);
  };
  run_for(0.2);  // warm-up: threads spun up, weights in cache as far as they fit
  for (int r = 0; r < repetitions; ++r) {
    const double per_call = run_for(seconds);
    std::printf("%s %d %s %.3f %.6g\n", argv[1], threads, repack ? "repack" : "plain", per_call * 1e6,
                double(rows) * double(cols) / per_call);
  }

  ggml_backend_buffer_free(xbuf);
  ggml_backend_buffer_free(wbuf);
  ggml_free(ctx_x);
  ggml_free(ctx_w);
  ggml_backend_free(backend);
  ggml_threadpool_free(pool);
  return 0;
}
