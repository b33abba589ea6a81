// The C++ twin of Sampler (src/sampling/sampler.ts) and Rng (src/sampling/rng.ts). Their headers are the
// specifications, and every result here equals the TypeScript one bit for bit: the same float64
// operations in the same order wherever a rounded value is produced (weights, totals, running
// sums). Where only comparisons are involved the work is organised differently, with identical
// outcomes: vector scans (kernels.h), a binary search over running sums instead of the linear
// scan (the sums are non-decreasing, so the first one above x is the same element), and, for a
// large top-p candidate set, a stable radix sort into rank order instead of heap pops (rank
// order is a total order, so both list the same tokens in the same order). A change to the
// TypeScript sampler must be mirrored here; test/native.test.ts compares the two on every kind
// of row.
#pragma once

#include <cstdint>
#include <vector>

namespace marginal {

/** xoshiro128** over the four state words, advanced in place; returns the 24-bit uniform. */
inline double next_uniform(uint32_t* s) {
  const uint32_t s0 = s[0];
  const uint32_t s1 = s[1];
  const uint32_t s2 = s[2] ^ s0;
  const uint32_t s3 = s[3] ^ s1;
  const uint32_t m = s1 * 5u;
  const uint32_t result = ((m << 7) | (m >> 25)) * 9u;
  s[1] = s1 ^ s2;
  s[0] = s0 ^ s3;
  s[2] = s2 ^ (s1 << 9);
  s[3] = (s3 << 11) | (s3 >> 21);
  return static_cast<double>(result >> 8) * 5.9604644775390625e-8;  // 2^-24
}

/**
 * LogitAdjust (src/sampling/penalties.ts) applied to one row in place: for each of the n
 * entries, v = logit + bias; the repetition penalty where the token is in the prompt (flag 1)
 * or was generated; minus frequency × count and presence where generated; -Infinity where
 * banned (flag 2); stored back as float32.
 */
void adjust_logits(float* row, const int32_t* tokens, const int32_t* counts, const uint8_t* flags, const double* bias, int32_t n,
                   double presence, double frequency, double repetition);

/**
 * One row at a time, with vocab-sized scratch reused across rows. Not thread-safe: each
 * thread of a parallel batch owns one.
 */
class RowSampler {
 public:
  explicit RowSampler(int32_t vocab);

  int32_t vocab() const { return vocab_; }

  /**
   * topK is a double because the TypeScript sampler compares the heap size against the raw
   * number, so a fractional k (which validation rejects, but the sampler accepts) behaves the
   * same in both.
   */
  int32_t sample(const float* row, double temperature, double top_p, double top_k, double min_p, uint32_t* state);

 private:
  int32_t rank_sort(const float* row, int32_t m);
  int32_t sample_full(const float* row, double inv_t, double min_p, double u);
  int32_t sample_top_k(const float* row, double inv_t, double k, double top_p, double min_p, double u);
  int32_t sample_top_p(const float* row, double t, double inv_t, double top_p, double min_p, double u);
  void sift_up_worst(const float* row, int32_t pos);
  void sift_down_worst(const float* row, int32_t pos, int32_t size);
  void sift_down_best(const float* row, int32_t pos, int32_t size);

  int32_t vocab_;
  std::vector<double> weights_;
  std::vector<int32_t> heap_;
  std::vector<int32_t> ranked_;
  /** Running sums in the order a draw scans them, so the draw is a binary search. */
  std::vector<double> prefix_;
  std::vector<uint32_t> keys_a_;
  std::vector<uint32_t> keys_b_;
  std::vector<uint32_t> counts_;
};

}  // namespace marginal
