// matmul over block-quantized and MLX weights, AVX2 path: the kernels of matmul_quant_x86.h and
// matmul_mlx_x86.h built for AVX2/FMA/F16C. As in matmul_avx2.cpp, only functions carry the target
// attribute, never the whole file, so the binary runs on any x86-64.
#define FM_SIMD __attribute__((target("avx2,fma,f16c")))
#define FM_QUANT_AVX512 0
#include "ops/cpu/matmul_mlx_x86.h"
#include "ops/cpu/matmul_quant_x86.h"

namespace fm::cpu::detail {

QuantKernel avx2_quant_kernel(DType dtype) { return simd_quant_kernel(dtype, "AVX2"); }

QuantKernel avx2_mlx_kernel(const Mat& w) { return simd_mlx_kernel(w); }

}  // namespace fm::cpu::detail
