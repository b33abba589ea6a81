#include "sampler.h"

#include <limits>

#include "fdlibm.h"

namespace marginal {

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();

// `z > -Infinity` is false for NaN, so NaN logits weigh 0 (as in sampling.ts).
inline double weight(float logit, double max, double inv_t) {
  const double z = (static_cast<double>(logit) - max) * inv_t;
  return z > -kInf ? fdlibm::exp(z) : 0.0;
}
}  // namespace

RowSampler::RowSampler(int32_t vocab)
    : vocab_(vocab), weights_(static_cast<size_t>(vocab)), heap_(static_cast<size_t>(vocab)), ranked_(static_cast<size_t>(vocab)) {}

int32_t RowSampler::sample(const float* row, double temperature, double top_p, double top_k, uint32_t* state) {
  const double t = temperature;
  if (!(t > 0)) return argmax(row);
  const double u = next_uniform(state);
  const double inv_t = 1.0 / t;
  if (inv_t == kInf) return argmax(row);
  if (top_k > 0 && top_k < static_cast<double>(vocab_)) return sample_top_k(row, inv_t, top_k, top_p, u);
  if (top_p < 1) return sample_top_p(row, t, inv_t, top_p, u);
  return sample_full(row, inv_t, u);
}

int32_t RowSampler::argmax(const float* row) const {
  // Compared as doubles, like the JavaScript numbers the TypeScript sampler compares.
  double best = -kInf;
  int32_t bi = 0;
  for (int32_t i = 0; i < vocab_; i++) {
    const double l = row[i];
    if (l > best) {
      best = l;
      bi = i;
    }
  }
  return bi;
}

int32_t RowSampler::sample_full(const float* row, double inv_t, double u) {
  const int32_t V = vocab_;
  double* w = weights_.data();
  const int32_t am = argmax(row);
  const double max = row[am];
  if (!(max > -kInf && max < kInf)) return am;
  double total = 0;
  for (int32_t i = 0; i < V; i++) {
    const double e = weight(row[i], max, inv_t);
    w[i] = e;
    total += e;
  }
  const double x = u * total;
  double cum = 0;
  for (int32_t i = 0; i < V; i++) {
    cum += w[i];
    if (cum > x) return i;
  }
  return am;
}

int32_t RowSampler::sample_top_k(const float* row, double inv_t, double k, double top_p, double u) {
  const int32_t V = vocab_;
  int32_t* h = heap_.data();
  double* w = weights_.data();
  int32_t size = 0;
  for (int32_t i = 0; i < V; i++) {
    const double l = row[i];
    if (l != l) continue;
    if (static_cast<double>(size) < k) {
      h[size] = i;
      sift_up_worst(row, size);
      size++;
    } else if (l > static_cast<double>(row[h[0]])) {
      h[0] = i;
      sift_down_worst(row, 0, size);
    }
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
    const double e = weight(row[h[j]], max, inv_t);
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

int32_t RowSampler::sample_top_p(const float* row, double t, double inv_t, double top_p, double u) {
  const int32_t V = vocab_;
  int32_t* h = heap_.data();
  double* w = weights_.data();
  int32_t* r = ranked_.data();
  const int32_t am = argmax(row);
  const double max = row[am];
  if (!(max > -kInf && max < kInf)) return am;
  double total = 0;
  for (int32_t i = 0; i < V; i++) {
    const double e = weight(row[i], max, inv_t);
    w[i] = e;
    total += e;
  }
  const double target = top_p * total;
  // V8's log, so that even the candidate set (not only the result, which does not depend on
  // it) is the TypeScript sampler's.
  double threshold = max + t * fdlibm::log(((1 - top_p) * total) / static_cast<double>(V));
  int32_t n = 0;
  double cum = 0;
  for (;;) {
    int32_t m = 0;
    for (int32_t i = 0; i < V; i++) {
      if (static_cast<double>(row[i]) >= threshold) h[m++] = i;
    }
    for (int32_t p = (m >> 1) - 1; p >= 0; p--) sift_down_best(row, p, m);
    n = 0;
    cum = 0;
    bool reached = false;
    while (m > 0) {
      const int32_t top = h[0];
      r[n++] = top;
      cum += w[top];
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
    if (reached || threshold == -kInf) break;
    threshold = -kInf;
  }
  if (n == 0) return am;
  const double x = u * cum;
  double c = 0;
  for (int32_t j = 0; j < n; j++) {
    const int32_t id = r[j];
    c += w[id];
    if (c > x) return id;
  }
  return r[0];
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
