// The row-wide loops of the sampler, several lanes at a time, each returning exactly what the
// scalar loop in src/sampling/sampler.ts returns (see kernels.cc for why that holds).
#pragma once

#include <cstdint>

namespace marginal {

/**
 * The weights (z > -Infinity ? exp(z) : 0) with z = (row[i] - max) * inv_t in float64 and V8's
 * exp, for i in [0, n), and their sum in index order, which it returns. w[i] receives the weight,
 * or with `prefix` the running sum through i.
 */
double dense_weights(const float* row, int32_t n, double max, double inv_t, double* w, bool prefix);

/** The first index of the largest non-NaN value; 0 when there is none above -Infinity. */
int32_t argmax(const float* row, int32_t n);

/** The first i in [from, n) with row[i] > threshold (NaN never is), or n. */
int32_t first_above(const float* row, int32_t from, int32_t n, float threshold);

/** Which instruction set the kernels use here: "avx2", "vector" (portable SIMD) or "scalar". */
const char* kernel_name();

/** One implementation of the three kernels. */
struct KernelSet {
  double (*weights)(const float*, int32_t, double, double, double*, bool);
  int32_t (*argmax)(const float*, int32_t);
  int32_t (*first_above)(const float*, int32_t, int32_t, float);
  const char* name;
};

/** The kernels by name ("avx2", "vector", "scalar"), for the agreement test; null if unavailable here. */
const KernelSet* kernel_set(const char* name);

}  // namespace marginal
