// The AVX-512 build of the quantized kernels (ops/cpu/matmul_quant_x86.h with FM_QUANT_AVX512 = 1)
// on an AVX2-only CPU: the few AVX-512 instructions it uses are replaced here by exact AVX2
// equivalents, so its logic (unsigned offsets of the signed formats, mask-register signs, VNNI dot
// products, vpmovdw) is checked against the scalar kernels on every machine, CI's included, and not
// only where the CPU has AVX-512 VNNI. (The instructions themselves are checked where it has them:
// test_matmul_quant runs the real build there.)
#include <immintrin.h>

#include "ops/cpu/matmul_quant.h"

#define FM_EMU_TARGET __attribute__((target("avx2,fma,f16c")))

namespace fm::test::emu {

// 0xFF in byte i where bit i of k is set.
FM_EMU_TARGET inline __m256i byte_mask(uint32_t k) {
  const __m256i spread =
      _mm256_shuffle_epi8(_mm256_set1_epi32(int(k)),
                          _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

// vpdpbusd: src + the sums of four unsigned-by-signed byte products per 32-bit lane (exact).
FM_EMU_TARGET inline __m256i dpbusd(__m256i src, __m256i a, __m256i b) {
  const __m256i a_even = _mm256_and_si256(a, _mm256_set1_epi16(0xFF)), a_odd = _mm256_srli_epi16(a, 8);
  const __m256i b_even = _mm256_srai_epi16(_mm256_slli_epi16(b, 8), 8), b_odd = _mm256_srai_epi16(b, 8);
  return _mm256_add_epi32(src, _mm256_add_epi32(_mm256_madd_epi16(a_even, b_even), _mm256_madd_epi16(a_odd, b_odd)));
}

// vpmovdw: the low 16 bits of each 32-bit lane.
FM_EMU_TARGET inline __m128i cvtepi32_epi16(__m256i v) {
  const __m256i low = _mm256_shuffle_epi8(
      v, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13, -1,
                          -1, -1, -1, -1, -1, -1, -1));
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(low, 0x08));
}

// vpsubb under a mask: a - b where bit i of k is set, else src.
FM_EMU_TARGET inline __m256i mask_sub_epi8(__m256i src, __mmask32 k, __m256i a, __m256i b) {
  return _mm256_blendv_epi8(src, _mm256_sub_epi8(a, b), byte_mask(k));
}

// vmovdqu8 with zeroing: a where bit i of k is set, else 0.
FM_EMU_TARGET inline __m256i maskz_mov_epi8(__mmask32 k, __m256i a) { return _mm256_and_si256(a, byte_mask(k)); }

}  // namespace fm::test::emu

#undef _mm256_dpbusd_epi32  // some headers define it as a macro (AVX-VNNI's spelling)
#undef _mm256_cvtepi32_epi16
#undef _mm256_mask_sub_epi8
#undef _mm256_maskz_mov_epi8
#define _mm256_dpbusd_epi32 fm::test::emu::dpbusd
#define _mm256_cvtepi32_epi16 fm::test::emu::cvtepi32_epi16
#define _mm256_mask_sub_epi8 fm::test::emu::mask_sub_epi8
#define _mm256_maskz_mov_epi8 fm::test::emu::maskz_mov_epi8
#define FM_SIMD FM_EMU_TARGET
#define FM_QUANT_AVX512 1
#include "ops/cpu/matmul_quant_x86.h"

namespace fm::cpu::detail {

QuantKernel emulated_avx512_quant_kernel(DType dtype) { return simd_quant_kernel(dtype, "emulated AVX-512"); }

}  // namespace fm::cpu::detail
