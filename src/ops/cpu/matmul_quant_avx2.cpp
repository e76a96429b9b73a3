// matmul over block-quantized weights, AVX2 path: the kernels of matmul_quant_x86.h built for
// AVX2/FMA/F16C. As in matmul_avx2.cpp, only functions carry the target attribute, never the whole
// file, so the binary runs on any x86-64.
#define FM_SIMD __attribute__((target("avx2,fma,f16c")))
#define FM_QUANT_AVX512 0
#include "ops/cpu/matmul_quant_x86.h"

namespace fm::cpu::detail {

QuantKernel avx2_quant_kernel(DType dtype) { return simd_quant_kernel(dtype, "AVX2"); }

}  // namespace fm::cpu::detail
