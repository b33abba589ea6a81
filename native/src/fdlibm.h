// exp and log exactly as V8 computes Math.exp and Math.log (src/base/ieee754.cc, itself fdlibm),
// so that float64 sampling weights agree bit for bit with the TypeScript sampler. The platform
// libm is not used: glibc's exp is correctly rounded and fdlibm's is not, so they differ in the
// last bit for some inputs, and one ulp in a weight is enough to move a token across a bucket
// edge of the cumulative sum.
//
// Must be compiled without floating-point contraction (-ffp-contract=off) and without
// -ffast-math: a fused multiply-add rounds once where fdlibm rounds twice.
//
// ====================================================
// Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
//
// Developed at SunSoft, a Sun Microsystems, Inc. business.
// Permission to use, copy, modify, and distribute this
// software is freely granted, provided that this notice
// is preserved.
// ====================================================
//
// Adapted from V8 (Copyright 2016 the V8 project authors, BSD-style license), which modified
// the fdlibm original.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace marginal {
namespace fdlibm {

inline uint32_t high_word(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<uint32_t>(bits >> 32);
}

inline uint32_t low_word(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<uint32_t>(bits);
}

inline double from_words(uint32_t hi, uint32_t lo) {
  const uint64_t bits = (static_cast<uint64_t>(hi) << 32) | lo;
  double x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

inline double with_high_word(double x, uint32_t hi) { return from_words(hi, low_word(x)); }

inline double exp(double x) {
  static const double one = 1.0, halF[2] = {0.5, -0.5},
                      o_threshold = 7.09782712893383973096e+02,  /* 0x40862E42, 0xFEFA39EF */
      u_threshold = -7.45133219101941108420e+02,                 /* 0xC0874910, 0xD52D3051 */
      ln2HI[2] = {6.93147180369123816490e-01, -6.93147180369123816490e-01},
                      ln2LO[2] = {1.90821492927058770002e-10, -1.90821492927058770002e-10},
                      invln2 = 1.44269504088896338700e+00, P1 = 1.66666666666666019037e-01,
                      P2 = -2.77777777770155933842e-03, P3 = 6.61375632143793436117e-05,
                      P4 = -1.65339022054652515390e-06, P5 = 4.13813679705723846039e-08,
                      E = 2.718281828459045, huge = 1.0e+300,
                      twom1000 = 9.33263618503218878990e-302, two1023 = 8.988465674311579539e307;

  double y, hi = 0.0, lo = 0.0, c, t, twopk;
  int32_t k = 0;
  uint32_t hx = high_word(x);
  const int32_t xsb = static_cast<int32_t>((hx >> 31) & 1);
  hx &= 0x7FFFFFFF;

  if (hx >= 0x40862E42) { /* |x| >= 709.78... */
    if (hx >= 0x7FF00000) {
      if (((hx & 0xFFFFF) | low_word(x)) != 0) return x + x; /* NaN */
      return (xsb == 0) ? x : 0.0;                             /* exp(+-inf) = {inf, 0} */
    }
    if (x > o_threshold) return huge * huge;
    if (x < u_threshold) return twom1000 * twom1000;
  }

  if (hx > 0x3FD62E42) {   /* |x| > 0.5 ln2 */
    if (hx < 0x3FF0A2B2) { /* and |x| < 1.5 ln2 */
      if (x == 1.0) return E;
      hi = x - ln2HI[xsb];
      lo = ln2LO[xsb];
      k = 1 - xsb - xsb;
    } else {
      k = static_cast<int32_t>(invln2 * x + halF[xsb]);
      t = k;
      hi = x - t * ln2HI[0]; /* t*ln2HI is exact here */
      lo = t * ln2LO[0];
    }
    x = hi - lo;
  } else if (hx < 0x3E300000) {         /* |x| < 2**-28 */
    if (huge + x > one) return one + x; /* trigger inexact */
  } else {
    k = 0;
  }

  t = x * x;
  if (k >= -1021) {
    twopk = from_words(0x3FF00000u + (static_cast<uint32_t>(k) << 20), 0);
  } else {
    twopk = from_words(0x3FF00000u + (static_cast<uint32_t>(k + 1000) << 20), 0);
  }
  c = x - t * (P1 + t * (P2 + t * (P3 + t * (P4 + t * P5))));
  if (k == 0) return one - ((x * c) / (c - 2.0) - x);
  y = one - ((lo - (x * c) / (2.0 - c)) - hi);
  if (k >= -1021) {
    if (k == 1024) return y * 2.0 * two1023;
    return y * twopk;
  }
  return y * twopk * twom1000;
}

inline double log(double x) {
  static const double ln2_hi = 6.93147180369123816490e-01, /* 3fe62e42 fee00000 */
      ln2_lo = 1.90821492927058770002e-10,                 /* 3dea39ef 35793c76 */
      two54 = 1.80143985094819840000e+16,                  /* 43500000 00000000 */
      Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                      Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                      Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                      Lg7 = 1.479819860511658591e-01, zero = 0.0;

  double hfsq, f, s, z, R, w, t1, t2, dk;
  int32_t k, hx, i, j;
  hx = static_cast<int32_t>(high_word(x));
  const uint32_t lx = low_word(x);

  k = 0;
  if (hx < 0x00100000) { /* x < 2**-1022 */
    if (((hx & 0x7FFFFFFF) | static_cast<int32_t>(lx)) == 0) return -std::numeric_limits<double>::infinity();
    if (hx < 0) return std::numeric_limits<double>::quiet_NaN();
    k -= 54;
    x *= two54; /* subnormal: scale up */
    hx = static_cast<int32_t>(high_word(x));
  }
  if (hx >= 0x7FF00000) return x + x;
  k += (hx >> 20) - 1023;
  hx &= 0x000FFFFF;
  i = (hx + 0x95F64) & 0x100000;
  x = with_high_word(x, static_cast<uint32_t>(hx | (i ^ 0x3FF00000))); /* normalize x or x/2 */
  k += (i >> 20);
  f = x - 1.0;
  if ((0x000FFFFF & (2 + hx)) < 3) { /* -2**-20 <= f < 2**-20 */
    if (f == zero) {
      if (k == 0) return zero;
      dk = static_cast<double>(k);
      return dk * ln2_hi + dk * ln2_lo;
    }
    R = f * f * (0.5 - 0.33333333333333333 * f);
    if (k == 0) return f - R;
    dk = static_cast<double>(k);
    return dk * ln2_hi - ((R - dk * ln2_lo) - f);
  }
  s = f / (2.0 + f);
  dk = static_cast<double>(k);
  z = s * s;
  i = hx - 0x6147A;
  w = z * z;
  j = 0x6B851 - hx;
  t1 = w * (Lg2 + w * (Lg4 + w * Lg6));
  t2 = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7)));
  i |= j;
  R = t2 + t1;
  if (i > 0) {
    hfsq = 0.5 * f * f;
    if (k == 0) return f - (hfsq - s * (hfsq + R));
    return dk * ln2_hi - ((hfsq - (s * (hfsq + R) + dk * ln2_lo)) - f);
  }
  if (k == 0) return f - s * (f - R);
  return dk * ln2_hi - ((s * (f - R) - dk * ln2_lo) - f);
}

}  // namespace fdlibm
}  // namespace marginal
