#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "util/half.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace fm {
namespace {

// Suites are named after the file so that `ctest -R half` selects them.

TEST(half, F16KnownValues) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.5f), 0xc100);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::quiet_NaN()) & 0x7fff, 0x7e00);

  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc100), -2.5f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(f16_to_f32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_f32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7c01)));  // signalling NaN stays NaN, not inf
  EXPECT_TRUE(std::signbit(f16_to_f32(0x8000)));
}

TEST(half, F16Rounding) {
  // Ties to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(f32_to_f16(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3c01);
  // Overflow: below 65520 rounds to 65504, from 65520 (the tie, to even) up to infinity.
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);
  // Subnormals: 2^-25 is the tie between 0 and the smallest subnormal, goes to even (0);
  // 3 * 2^-25 is the tie between 1 and 2 subnormal units, goes to 2.
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);
  EXPECT_EQ(f32_to_f16(-std::ldexp(3.0f, -25)), 0x8002);
  // The largest subnormal rounding up into the smallest normal.
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.5f, -24)), 0x0400);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -40)), 0x0000);
}

TEST(half, F16RoundTripAllPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) << std::hex << h;
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("f16c"))) uint16_t hw_f32_to_f16(float f) {
  return uint16_t(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
__attribute__((target("f16c"))) float hw_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }

// The hardware conversion (F16C, the same the AVX2 kernels use) as the reference, over a spread of
// float32 bit patterns that reaches every exponent, including f32 subnormals.
TEST(half, F16MatchesHardware) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C";
  for (uint64_t u = 0; u <= 0xffffffffu; u += 257) {
    const float f = bits_to_f32(uint32_t(u));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), hw_f32_to_f16(f)) << std::hex << u;
  }
  for (uint32_t h = 0; h < 65536; ++h) {
    const float a = f16_to_f32(uint16_t(h)), b = hw_f16_to_f32(uint16_t(h));
    if (std::isnan(b)) {
      ASSERT_TRUE(std::isnan(a));
    } else {
      ASSERT_EQ(f32_to_bits(a), f32_to_bits(b)) << std::hex << h;
    }
  }
}
#endif

TEST(half, BF16KnownValues) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-2.5f), 0xc020);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xc020), -2.5f);
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7fc0)));
  // Ties to even: 0x3f808000 is halfway between 0x3f80 and 0x3f81, 0x3f818000 between 0x3f81 and 0x3f82.
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3f808000u)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3f818000u)), 0x3f82);
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3f808001u)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3f807fffu)), 0x3f80);
  // The largest finite values round to infinity past the last tie.
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x7f7f7fffu)), 0x7f7f);
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x7f7f8000u)), 0x7f80);
  // NaNs stay NaN, also those whose payload sits only in the low 16 bits.
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7f80ffffu}) {
    const uint16_t b = f32_to_bf16(bits_to_f32(nan));
    EXPECT_TRUE(std::isnan(bf16_to_f32(b))) << std::hex << nan;
    EXPECT_EQ(b & 0x8000, (nan >> 16) & 0x8000) << std::hex << nan;
  }
}

// Round to nearest even by definition: pick the nearer of the two neighbours in double.
uint16_t bf16_reference(float f) {
  const uint32_t u = f32_to_bits(f);
  const uint16_t lo = uint16_t(u >> 16);
  if ((u & 0xffffu) == 0) return lo;
  const uint16_t hi = uint16_t(lo + 1);  // the next bf16 away from zero
  const double d_lo = std::fabs(double(f) - double(bf16_to_f32(lo)));
  // Past the largest finite value the neighbour is infinity; measure to 2^128 as rounding does.
  const double v_hi =
      (hi & 0x7fff) == 0x7f80 ? std::copysign(std::ldexp(1.0, 128), double(f)) : double(bf16_to_f32(hi));
  const double d_hi = std::fabs(double(f) - v_hi);
  if (d_lo != d_hi) return d_lo < d_hi ? lo : hi;
  return (lo & 1) ? hi : lo;
}

TEST(half, BF16MatchesDefinition) {
  for (uint64_t u = 0; u <= 0xffffffffu; u += 257) {
    const float f = bits_to_f32(uint32_t(u));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), bf16_reference(f)) << std::hex << u;
  }
}

TEST(half, BF16RoundTripAllPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_bf16(f), h) << std::hex << h;
  }
}

}  // namespace
}  // namespace fm
