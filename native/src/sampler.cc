#include "sampler.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "fdlibm.h"
#include "kernels.h"

namespace marginal {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Below this many top-p candidates, popping a heap only as far as the nucleus reaches is
// cheaper than sorting them all.
constexpr int32_t kRadixMin = 1024;

// `z > -Infinity` is false for NaN, so NaN logits weigh 0 (as in src/sampling/sampler.ts).
inline double weight(float logit, double max, double inv_t) {
  const double z = (static_cast<double>(logit) - max) * inv_t;
  return z > -kInf ? fdlibm::exp(z) : 0.0;
}

/** Index of the first running sum above x in prefix[0, n), or n. */
inline int32_t first_sum_above(const double* prefix, int32_t n, double x) {
  return static_cast<int32_t>(std::upper_bound(prefix, prefix + n, x) - prefix);
}

/**
 * Sort key for rank order (logit descending): ascending keys are descending logits. -0 is
 * folded into +0 because the comparisons treat them as equal (the id then decides).
 */
inline uint32_t rank_key(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  if ((b & 0x7FFFFFFFu) == 0) b = 0;
  const uint32_t ascending = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return ~ascending;
}

/** min_p: a weight below it counts as 0 (as in src/sampling/sampler.ts). */
inline double keep(double e, double min_p) { return e < min_p ? 0.0 : e; }

}  // namespace

void adjust_logits(float* row, const int32_t* tokens, const int32_t* counts, const uint8_t* flags, const double* bias, int32_t n,
                   double presence, double frequency, double repetition) {
  for (int32_t j = 0; j < n; j++) {
    float* at = row + tokens[j];
    double v = static_cast<double>(*at) + bias[j];
    const int32_t c = counts[j];
    if (repetition != 1 && ((flags[j] & 1) != 0 || c > 0)) v = v > 0 ? v / repetition : v * repetition;
    if (c > 0) {
      v = v - frequency * static_cast<double>(c);
      v = v - presence;
    }
    if ((flags[j] & 2) != 0) v = -kInf;
    *at = static_cast<float>(v);
  }
}

RowSampler::RowSampler(int32_t vocab)
    : vocab_(vocab),
      weights_(static_cast<size_t>(vocab)),
      heap_(static_cast<size_t>(vocab)),
      ranked_(static_cast<size_t>(vocab)),
      prefix_(static_cast<size_t>(vocab)),
      keys_a_(static_cast<size_t>(vocab)),
      keys_b_(static_cast<size_t>(vocab)),
      counts_(3 * 2048) {}

int32_t RowSampler::sample(const float* row, double temperature, double top_p, double top_k, double min_p, uint32_t* state) {
  const double t = temperature;
  if (!(t > 0)) return argmax(row, vocab_);
  const double u = next_uniform(state);
  const double inv_t = 1.0 / t;
  if (inv_t == kInf) return argmax(row, vocab_);
  if (top_k > 0 && top_k < static_cast<double>(vocab_)) return sample_top_k(row, inv_t, top_k, top_p, min_p, u);
  if (top_p < 1) return sample_top_p(row, t, inv_t, top_p, min_p, u);
  return sample_full(row, inv_t, min_p, u);
}

int32_t RowSampler::sample_full(const float* row, double inv_t, double min_p, double u) {
  const int32_t V = vocab_;
  double* w = weights_.data();
  const int32_t am = argmax(row, V);
  const double max = row[am];
  if (!(max > -kInf && max < kInf)) return am;
  // The running sums of the TypeScript loop (same additions, same order) in place of the
  // weights: the draw's scan becomes a search.
  double total;
  if (min_p > 0) {
    dense_weights(row, V, max, inv_t, w, false);
    total = 0;
    for (int32_t i = 0; i < V; i++) {
      total += keep(w[i], min_p);
      w[i] = total;
    }
  } else {
    total = dense_weights(row, V, max, inv_t, w, true);
  }
  const int32_t i = first_sum_above(w, V, u * total);
  return i < V ? i : am;
}

int32_t RowSampler::sample_top_k(const float* row, double inv_t, double k, double top_p, double min_p, double u) {
  const int32_t V = vocab_;
  int32_t* h = heap_.data();
  double* w = weights_.data();
  int32_t size = 0;
  int32_t i = 0;
  for (; i < V && static_cast<double>(size) < k; i++) {
    const float l = row[i];
    if (l != l) continue;
    h[size] = i;
    sift_up_worst(row, size);
    size++;
  }
  // Heap full: a logit must beat the root's to enter, and the root's logit only rises, so a
  // logit that fails against the current root fails against every later one; the vector scan
  // skips straight to the next candidate (NaN never qualifies, as in the scalar loop).
  while (i < V) {
    i = first_above(row, i, V, row[h[0]]);
    if (i >= V) break;
    h[0] = i;
    sift_down_worst(row, 0, size);
    i++;
  }
  if (size == 0) return 0;
  for (int32_t end = size - 1; end > 0; end--) {
    const int32_t tmp = h[0];
    h[0] = h[end];
    h[end] = tmp;
    sift_down_worst(row, 0, end);
  }
  const int32_t first = h[0];
  const double max = row[first];
  if (!(max > -kInf && max < kInf)) return first;
  double total = 0;
  for (int32_t j = 0; j < size; j++) {
    const double e = keep(weight(row[h[j]], max, inv_t), min_p);
    w[j] = e;
    total += e;
  }
  int32_t n = size;
  double kept = total;
  if (top_p < 1) {
    const double target = top_p * total;
    double cum = 0;
    n = 0;
    while (n < size) {
      cum += w[n];
      n++;
      if (cum >= target) break;
    }
    kept = cum;
  }
  const double x = u * kept;
  double cum = 0;
  for (int32_t j = 0; j < n; j++) {
    cum += w[j];
    if (cum > x) return h[j];
  }
  return first;
}

int32_t RowSampler::sample_top_p(const float* row, double t, double inv_t, double top_p, double min_p, double u) {
  const int32_t V = vocab_;
  int32_t* h = heap_.data();
  double* w = weights_.data();
  double* prefix = prefix_.data();
  const int32_t am = argmax(row, V);
  const double max = row[am];
  if (!(max > -kInf && max < kInf)) return am;
  double total = dense_weights(row, V, max, inv_t, w, false);
  if (min_p > 0) {
    total = 0;
    for (int32_t i = 0; i < V; i++) {
      w[i] = keep(w[i], min_p);
      total += w[i];
    }
  }
  const double target = top_p * total;
  // V8's log, so that even the candidate set (not only the result, which does not depend on
  // it) is the TypeScript sampler's.
  double threshold = max + t * fdlibm::log(((1 - top_p) * total) / static_cast<double>(V));
  const int32_t* r = ranked_.data();
  int32_t n = 0;
  double cum = 0;
  for (;;) {
    int32_t m = 0;
    for (int32_t i = 0; i < V; i++) {
      h[m] = i;
      m += static_cast<double>(row[i]) >= threshold ? 1 : 0;
    }
    n = 0;
    cum = 0;
    bool reached = false;
    if (m >= kRadixMin) {
      r = rank_sort(row, m) == 0 ? heap_.data() : ranked_.data();
      while (n < m) {
        cum += w[r[n]];
        prefix[n] = cum;
        n++;
        if (cum >= target) {
          reached = true;
          break;
        }
      }
    } else {
      int32_t* out = ranked_.data();
      r = out;
      for (int32_t p = (m >> 1) - 1; p >= 0; p--) sift_down_best(row, p, m);
      while (m > 0) {
        const int32_t top = h[0];
        out[n] = top;
        cum += w[top];
        prefix[n] = cum;
        n++;
        if (cum >= target) {
          reached = true;
          break;
        }
        m--;
        if (m > 0) {
          h[0] = h[m];
          sift_down_best(row, 0, m);
        }
      }
    }
    if (reached || threshold == -kInf) break;
    threshold = -kInf;
  }
  if (n == 0) return am;
  const int32_t j = first_sum_above(prefix, n, u * cum);
  return j < n ? r[j] : r[0];
}

int32_t RowSampler::rank_sort(const float* row, int32_t m) {
  // Stable LSD radix sort of heap_[0, m) (ids, ascending) by rank key, three 11-bit digits.
  // Stability keeps equal logits in id order, which is rank order's tie rule. Returns which
  // buffer holds the result: 0 for heap_, 1 for ranked_.
  int32_t* ids[2] = {heap_.data(), ranked_.data()};
  uint32_t* keys[2] = {keys_a_.data(), keys_b_.data()};
  for (int32_t j = 0; j < m; j++) keys[0][j] = rank_key(row[ids[0][j]]);
  constexpr int kBits = 11;
  constexpr uint32_t kBuckets = 1u << kBits;
  uint32_t* counts[3] = {counts_.data(), counts_.data() + kBuckets, counts_.data() + 2 * kBuckets};
  std::fill(counts_.begin(), counts_.end(), 0u);
  for (int32_t j = 0; j < m; j++) {
    const uint32_t key = keys[0][j];
    counts[0][key & (kBuckets - 1)]++;
    counts[1][(key >> kBits) & (kBuckets - 1)]++;
    counts[2][key >> (2 * kBits)]++;
  }
  int src = 0;
  for (int pass = 0; pass < 3; pass++) {
    uint32_t* c = counts[pass];
    const int shift = pass * kBits;
    // A digit shared by every key leaves the order as it is.
    const uint32_t first_key_digit = (keys[src][0] >> shift) & (kBuckets - 1);
    if (c[first_key_digit] == static_cast<uint32_t>(m)) continue;
    uint32_t sum = 0;
    for (uint32_t b = 0; b < kBuckets; b++) {
      const uint32_t n = c[b];
      c[b] = sum;
      sum += n;
    }
    const int dst = 1 - src;
    for (int32_t j = 0; j < m; j++) {
      const uint32_t key = keys[src][j];
      const uint32_t pos = c[(key >> shift) & (kBuckets - 1)]++;
      keys[dst][pos] = key;
      ids[dst][pos] = ids[src][j];
    }
    src = dst;
  }
  return src;
}

void RowSampler::sift_up_worst(const float* row, int32_t pos) {
  int32_t* h = heap_.data();
  const int32_t id = h[pos];
  const float l = row[id];
  while (pos > 0) {
    const int32_t parent = (pos - 1) >> 1;
    const int32_t pid = h[parent];
    const float pl = row[pid];
    if (pl < l || (pl == l && pid > id)) break;
    h[pos] = pid;
    pos = parent;
  }
  h[pos] = id;
}

void RowSampler::sift_down_worst(const float* row, int32_t pos, int32_t size) {
  int32_t* h = heap_.data();
  const int32_t id = h[pos];
  const float l = row[id];
  for (;;) {
    int32_t child = 2 * pos + 1;
    if (child >= size) break;
    int32_t cid = h[child];
    float cl = row[cid];
    const int32_t right = child + 1;
    if (right < size) {
      const int32_t rid = h[right];
      const float rl = row[rid];
      if (rl < cl || (rl == cl && rid > cid)) {
        child = right;
        cid = rid;
        cl = rl;
      }
    }
    if (!(cl < l || (cl == l && cid > id))) break;
    h[pos] = cid;
    pos = child;
  }
  h[pos] = id;
}

void RowSampler::sift_down_best(const float* row, int32_t pos, int32_t size) {
  int32_t* h = heap_.data();
  const int32_t id = h[pos];
  const float l = row[id];
  for (;;) {
    int32_t child = 2 * pos + 1;
    if (child >= size) break;
    int32_t cid = h[child];
    float cl = row[cid];
    const int32_t right = child + 1;
    if (right < size) {
      const int32_t rid = h[right];
      const float rl = row[rid];
      if (rl > cl || (rl == cl && rid < cid)) {
        child = right;
        cid = rid;
        cl = rl;
      }
    }
    if (!(cl > l || (cl == l && cid < id))) break;
    h[pos] = cid;
    pos = child;
  }
  h[pos] = id;
}

}  // namespace marginal
