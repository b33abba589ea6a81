// Vector versions of the sampler's row-wide loops, dispatched once to AVX2 where the CPU has it.
//
// dense_weights: the TypeScript sampler spends most of a softmax row in Math.exp, which V8 runs
// as scalar fdlibm, so a scalar port gains little. fdlibm's exp is, on its main path, a fixed
// sequence of IEEE additions, multiplications, one division and one truncation to int, each of
// which a SIMD lane rounds exactly as scalar code does. This evaluates that path on four lanes
// at once and hands every lane the path does not cover (|z| < 2^-28, |z| >= 709.78, NaN,
// z == 1, and results that would be subnormal or need fdlibm's separate 2^1024 step) to the
// scalar port, so each weight is the same double, bit for bit. Two rewrites of fdlibm's
// expressions, both exact in IEEE arithmetic: (x*c)/(c-2) is -((x*c)/(2-c)) (c - 2 is exactly
// -(2 - c), and negating a divisor negates the rounded quotient), so one division serves both
// final formulas; and 2^k is built from the exponent bits, as fdlibm's INSERT_WORDS does.
// Needs -ffp-contract=off: nothing may fuse.
//
// argmax and first_above only compare, which is exact in any width; they keep the scalar
// loops' first-index-wins rule by locating the first lane that qualifies.
#include "kernels.h"

#include <cstring>
#include <limits>
#include <string>

#include "fdlibm.h"

namespace marginal {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

inline double scalar_weight(float logit, double max, double inv_t) {
  const double z = (static_cast<double>(logit) - max) * inv_t;
  return z > -kInf ? fdlibm::exp(z) : 0.0;
}

[[maybe_unused]] double dense_weights_scalar(const float* row, int32_t n, double max, double inv_t, double* w, bool prefix) {
  double total = 0;
  for (int32_t i = 0; i < n; i++) {
    const double e = scalar_weight(row[i], max, inv_t);
    total += e;
    w[i] = prefix ? total : e;
  }
  return total;
}

[[maybe_unused]] int32_t argmax_scalar(const float* row, int32_t n) {
  float best = -std::numeric_limits<float>::infinity();
  int32_t bi = 0;
  for (int32_t i = 0; i < n; i++) {
    if (row[i] > best) {
      best = row[i];
      bi = i;
    }
  }
  return bi;
}

[[maybe_unused]] int32_t first_above_scalar(const float* row, int32_t from, int32_t n, float threshold) {
  for (int32_t i = from; i < n; i++) {
    if (row[i] > threshold) return i;
  }
  return n;
}

#if defined(__GNUC__) || defined(__clang__)
#define MARGINAL_VECTOR 1

typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define ALWAYS_INLINE __attribute__((always_inline)) inline

ALWAYS_INLINE v4d dsplat(double v) { return v4d{v, v, v, v}; }
ALWAYS_INLINE v4i isplat(int32_t v) { return v4i{v, v, v, v}; }
ALWAYS_INLINE v8f fsplat(float v) { return v8f{v, v, v, v, v, v, v, v}; }

ALWAYS_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

ALWAYS_INLINE bool any8(v8i m) {
  return (m[0] | m[1] | m[2] | m[3] | m[4] | m[5] | m[6] | m[7]) != 0;
}

ALWAYS_INLINE void weights4(const float* row, double max, double inv_t, double* w) {
  const v4d one = dsplat(1.0), two = dsplat(2.0);
  const v4d ln2hi = dsplat(6.93147180369123816490e-01), ln2lo = dsplat(1.90821492927058770002e-10);
  const v4d invln2 = dsplat(1.44269504088896338700e+00);
  const v4d P1 = dsplat(1.66666666666666019037e-01), P2 = dsplat(-2.77777777770155933842e-03),
            P3 = dsplat(6.61375632143793436117e-05), P4 = dsplat(-1.65339022054652515390e-06),
            P5 = dsplat(4.13813679705723846039e-08);

  v4f lf;
  std::memcpy(&lf, row, sizeof lf);
  const v4d l = __builtin_convertvector(lf, v4d);
  const v4d z = (l - dsplat(max)) * dsplat(inv_t);

  v4l bits;
  std::memcpy(&bits, &z, sizeof bits);
  const v4l hx = (bits >> 32) & 0x7FFFFFFF;
  const v4l neg = bits < 0;  // all ones where the sign bit is set
  const v4l big = hx >= 0x40862E42;
  // Lanes left to the scalar port are computed on 0 instead, so the vector arithmetic stays
  // finite and the int conversion in range; their results are discarded.
  const v4d x = big ? dsplat(0.0) : z;

  const v4l mid = hx > 0x3FD62E42;   // |x| > 0.5 ln2
  const v4l near = hx < 0x3FF0A2B2;  // |x| < 1.5 ln2
  // 0.5 ln2 < |x| < 1.5 ln2: k = +-1.
  const v4d hi1 = x - (neg ? -ln2hi : ln2hi);
  const v4d lo1 = neg ? -ln2lo : ln2lo;
  const v4i k1 = __builtin_convertvector(neg, v4i) * 2 + 1;  // neg is -1 or 0: k = -1 or +1
  // Larger |x|: k = (int)(invln2 * x +- 0.5).
  const v4i k2 = __builtin_convertvector(invln2 * x + (neg ? dsplat(-0.5) : dsplat(0.5)), v4i);
  const v4d t2 = __builtin_convertvector(k2, v4d);
  const v4d hi2 = x - t2 * ln2hi;
  const v4d lo2 = t2 * ln2lo;

  const v4d hi = mid ? (near ? hi1 : hi2) : dsplat(0.0);
  const v4d lo = mid ? (near ? lo1 : lo2) : dsplat(0.0);
  const v4i k = __builtin_convertvector(mid, v4i) ? (__builtin_convertvector(near, v4i) ? k1 : k2) : isplat(0);
  const v4d r = mid ? (hi - lo) : x;

  const v4d t = r * r;
  const v4d c = r - t * (P1 + t * (P2 + t * (P3 + t * (P4 + t * P5))));
  const v4d q = (r * c) / (two - c);
  const v4d y0 = one - ((-q) - r);       // k == 0: one - ((x*c)/(c-2) - x)
  const v4d y1 = one - ((lo - q) - hi);  // k != 0: one - ((lo - (x*c)/(2-c)) - hi)
  const v4l k64 = __builtin_convertvector(k, v4l);
  const v4l twopk_bits = (k64 + 0x3FF) << 52;
  v4d twopk;
  std::memcpy(&twopk, &twopk_bits, sizeof twopk);
  const v4d e = (k64 == 0) ? y0 : y1 * twopk;

  const v4l valid = z > dsplat(-kInf);
  const v4d out = valid ? e : dsplat(0.0);
  std::memcpy(w, &out, sizeof out);
  const v4l rare = big | (hx < 0x3E300000) | (z == one) | (k64 < -1021) | (k64 > 1023);
  if ((rare[0] | rare[1] | rare[2] | rare[3]) != 0) {
    for (int j = 0; j < 4; j++) {
      if (rare[j]) w[j] = scalar_weight(row[j], max, inv_t);
    }
  }
}

ALWAYS_INLINE double dense_weights_impl(const float* row, int32_t n, double max, double inv_t, double* w, bool prefix) {
  // The sum runs in the same loop as the exponentials so that its serial chain of additions
  // (one per weight, in id order, as in the TypeScript loop) overlaps their arithmetic.
  double total = 0;
  int32_t i = 0;
  for (; i + 4 <= n; i += 4) {
    double e[4];
    weights4(row + i, max, inv_t, e);
    for (int j = 0; j < 4; j++) {
      total += e[j];
      w[i + j] = prefix ? total : e[j];
    }
  }
  for (; i < n; i++) {
    const double e = scalar_weight(row[i], max, inv_t);
    total += e;
    w[i] = prefix ? total : e;
  }
  return total;
}

ALWAYS_INLINE int32_t argmax_impl(const float* row, int32_t n) {
  // Lane-wise maximum, skipping NaN as `>` does, then the first index holding it.
  int32_t i = 0;
  v8f m = fsplat(-std::numeric_limits<float>::infinity());
  for (; i + 8 <= n; i += 8) {
    const v8f v = load8(row + i);
    m = (v > m) ? v : m;
  }
  float best = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < 8; j++) {
    if (m[j] > best) best = m[j];
  }
  for (; i < n; i++) {
    if (row[i] > best) best = row[i];
  }
  if (!(best > -std::numeric_limits<float>::infinity())) return 0;
  // == also matches -0 against +0, as the scalar loop's strict > keeps the first of them.
  const v8f b = fsplat(best);
  i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8i eq = load8(row + i) == b;
    if (any8(eq)) {
      for (int j = 0; j < 8; j++) {
        if (eq[j]) return i + j;
      }
    }
  }
  for (; i < n; i++) {
    if (row[i] == best) return i;
  }
  return 0;  // unreachable: best came from the row
}

ALWAYS_INLINE int32_t first_above_impl(const float* row, int32_t from, int32_t n, float threshold) {
  int32_t i = from;
  const v8f t = fsplat(threshold);
  for (; i + 8 <= n; i += 8) {
    const v8i gt = load8(row + i) > t;
    if (any8(gt)) {
      for (int j = 0; j < 8; j++) {
        if (gt[j]) return i + j;
      }
    }
  }
  for (; i < n; i++) {
    if (row[i] > threshold) return i;
  }
  return n;
}

double dense_weights_vector(const float* row, int32_t n, double max, double inv_t, double* w, bool prefix) {
  return dense_weights_impl(row, n, max, inv_t, w, prefix);
}
int32_t argmax_vector(const float* row, int32_t n) { return argmax_impl(row, n); }
int32_t first_above_vector(const float* row, int32_t from, int32_t n, float threshold) { return first_above_impl(row, from, n, threshold); }

#if defined(__x86_64__) || defined(__i386__)
#define MARGINAL_AVX2 1
// AVX2 only, not "fma": with contraction off nothing may fuse anyway.
__attribute__((target("avx2"))) double dense_weights_avx2(const float* row, int32_t n, double max, double inv_t, double* w, bool prefix) {
  return dense_weights_impl(row, n, max, inv_t, w, prefix);
}
__attribute__((target("avx2"))) int32_t argmax_avx2(const float* row, int32_t n) { return argmax_impl(row, n); }
__attribute__((target("avx2"))) int32_t first_above_avx2(const float* row, int32_t from, int32_t n, float threshold) {
  return first_above_impl(row, from, n, threshold);
}
#endif
#endif

bool has_avx2() {
#if defined(MARGINAL_AVX2)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

KernelSet choose() {
#if defined(MARGINAL_AVX2)
  if (has_avx2()) return {dense_weights_avx2, argmax_avx2, first_above_avx2, "avx2"};
#endif
#if defined(MARGINAL_VECTOR)
  return {dense_weights_vector, argmax_vector, first_above_vector, "vector"};
#else
  return {dense_weights_scalar, argmax_scalar, first_above_scalar, "scalar"};
#endif
}

const KernelSet& kernels() {
  static const KernelSet k = choose();
  return k;
}

}  // namespace

double dense_weights(const float* row, int32_t n, double max, double inv_t, double* w, bool prefix) {
  return kernels().weights(row, n, max, inv_t, w, prefix);
}

int32_t argmax(const float* row, int32_t n) { return kernels().argmax(row, n); }

int32_t first_above(const float* row, int32_t from, int32_t n, float threshold) { return kernels().first_above(row, from, n, threshold); }

const char* kernel_name() { return kernels().name; }

const KernelSet* kernel_set(const char* name) {
  static const KernelSet scalar{dense_weights_scalar, argmax_scalar, first_above_scalar, "scalar"};
  const std::string k(name);
  if (k == "scalar") return &scalar;
#if defined(MARGINAL_VECTOR)
  static const KernelSet vector{dense_weights_vector, argmax_vector, first_above_vector, "vector"};
  if (k == "vector") return &vector;
#endif
#if defined(MARGINAL_AVX2)
  static const KernelSet avx2{dense_weights_avx2, argmax_avx2, first_above_avx2, "avx2"};
  if (k == "avx2" && has_avx2()) return &avx2;
#endif
  return nullptr;
}

}  // namespace marginal
