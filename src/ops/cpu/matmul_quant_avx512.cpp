// matmul over block-quantized and MLX weights, AVX-512 path: the kernels of matmul_quant_x86.h and
// matmul_mlx_x86.h built for
// AVX-512 F/BW/VL/VNNI on 256-bit vectors (VNNI dot products, mask registers for signs, 32 vector
// registers). Only functions carry the target attribute; matmul.cpp takes this path only where
// have_avx512_vnni() says the CPU has it. FM_NO_AVX512=1 in the environment makes it say no, so the
// AVX2 kernels can be measured (bench_quant) and run on a CPU that has both.
#define FM_SIMD __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define FM_QUANT_AVX512 1
#include <cstdlib>
#include <string_view>

#include "ops/cpu/matmul_mlx_x86.h"
#include "ops/cpu/matmul_quant_x86.h"

namespace fm::cpu::detail {

namespace {

bool disabled_by_env() {
  const char* v = std::getenv("FM_NO_AVX512");
  return v != nullptr && *v != '\0' && std::string_view(v) != "0";
}

}  // namespace

bool have_avx512_vnni() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx512f") &&
                           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                           __builtin_cpu_supports("avx512vnni") && !disabled_by_env();
  return have;
#else
  return false;
#endif
}

QuantKernel avx512_quant_kernel(DType dtype) { return simd_quant_kernel(dtype, "AVX-512"); }

QuantKernel avx512_mlx_kernel(const Mat& w) { return simd_mlx_kernel(w); }

}  // namespace fm::cpu::detail
