import type { SamplingParams } from './params.js';
import { adjustedLogit, type LogitAdjust } from './penalties.js';
import type { Rng } from './rng.js';

/**
 * Picks one token from a row of logits. One instance per engine (not per request): it owns
 * vocab-sized scratch buffers that every call reuses, so sampling a batch allocates nothing.
 *
 * Exact definition (a native port must follow it to reproduce seeded streams):
 *
 * - temperature == 0: argmax, lowest token id on ties; consumes no random number.
 * - otherwise exactly one u = rng.next() is drawn first, whatever the other settings, so a
 *   request's stream depends only on its own seed and token count.
 * - Rank order: logit descending, then token id ascending. Ranking by logit (not by the rounded
 *   probability) is the mathematical softmax order, so it cannot be disturbed by exp rounding.
 *   NaN logits are never candidates.
 * - All probability arithmetic is float64: w_i = exp((l_i - max) * (1 / T)), where max is the
 *   largest logit (in the top-k case, the largest of the k), unnormalized. Probabilities are
 *   w_i / total, so comparisons below are done on the unnormalized w against a scaled target.
 * - min_p (vLLM's order: before top-k and top-p): a token whose weight w_i is below minP gets
 *   weight 0 (w of the best token is exactly 1, so this is p_i < minP · p_max). minP = 0 keeps all.
 * - Filters: top-k is active iff 0 < topK < vocab; top-p iff topP < 1.
 *   * No filter: total = Σ w_i in id order; x = u * total; return the first id (in id order)
 *     whose running sum exceeds x (strictly; zero-weight tokens are never returned).
 *   * top-k (maybe with top-p): take the k first in rank order; total = Σ w over them in rank
 *     order. top-p, if active, is then applied *renormalized over the k* (as HF and vLLM do):
 *     keep the smallest rank prefix whose running sum (rank order) is >= topP * total.
 *     x = u * (sum of kept, rank order); return the first kept token in rank order whose running
 *     sum exceeds x.
 *   * top-p only: total = Σ w_i in id order over the whole vocab; keep the smallest rank prefix
 *     whose running sum (rank order) is >= topP * total; draw as above over the prefix.
 * - Degenerate rows (max logit ±Infinity, all NaN) return the first token in rank order.
 *
 * Bitwise agreement with a C++ port holds as long as its exp matches Math.exp; an ulp of
 * difference only matters when x falls within ~1e-16 of a bucket edge.
 *
 * Speed: top-k selects with a size-k heap over the raw logits and only exponentiates k values.
 * top-p gathers just the tokens whose logit is within T·ln((1 - topP)·total / V) of the max —
 * everything below that holds less than (1 - topP) of the mass together, so the nucleus always
 * ends inside the gathered set — and pops them from a max-heap only until the nucleus is
 * complete. The gathered set is "all logits >= threshold", i.e. a rank prefix, so the result is
 * identical to fully sorting; if rounding ever let the nucleus run past it, the gather is
 * retried over the whole vocab.
 */
export class Sampler {
  readonly vocabSize: number;
  /** By token id (no-filter, top-p) or by rank position (top-k). */
  private readonly weights: Float64Array;
  /** Heap storage: top-k min-heap, or the top-p candidate max-heap. */
  private readonly heap: Int32Array;
  /** Token ids of the top-p nucleus in rank order. */
  private readonly ranked: Int32Array;
  /** Adjusted in-graph candidates in rank order (rerank). */
  private rankedValues = new Float32Array(0);
  private rankedIds = new Int32Array(0);
  /** Token → its LogitAdjust entry during rerank, -1 elsewhere. */
  private readonly slotOf: Int32Array;

  constructor(vocabSize: number) {
    if (!Number.isSafeInteger(vocabSize) || vocabSize < 1) throw new RangeError(`vocabSize must be a positive integer, got ${vocabSize}`);
    this.vocabSize = vocabSize;
    this.weights = new Float64Array(vocabSize);
    this.heap = new Int32Array(vocabSize);
    this.ranked = new Int32Array(vocabSize);
    this.slotOf = new Int32Array(vocabSize).fill(-1);
  }

  /** Samples from logits[offset .. offset + vocabSize); returns a token id in [0, vocabSize). */
  sample(logits: Float32Array, offset: number, params: SamplingParams, rng: Rng): number {
    const V = this.vocabSize;
    if ((offset | 0) !== offset || offset < 0 || offset + V > logits.length) {
      throw new RangeError(`logits row [${offset}, ${offset + V}) out of bounds (length ${logits.length})`);
    }
    const T = params.temperature;
    if (!(T > 0)) return this.argmax(logits, offset);
    const u = rng.next();
    const invT = 1 / T;
    // A subnormal temperature makes 1/T overflow; the limit of softmax there is the argmax.
    if (invT === Infinity) return this.argmax(logits, offset);
    const k = params.topK;
    const topP = params.topP;
    const minP = params.minP ?? 0;
    if (k > 0 && k < V) return this.sampleTopK(logits, offset, invT, k, topP, minP, u);
    if (topP < 1) return this.sampleTopP(logits, offset, T, invT, topP, minP, u);
    return this.sampleFull(logits, offset, invT, minP, u);
  }

  /**
   * Samples from candidates already ranked best-first — the output of an in-graph TopK
   * (values descending, ties by lower id) — without the full row of logits. Gives exactly the
   * token `sample` gives on the full row when `rankedSuffices` says so: the same weights in the
   * same order, the same single draw. With `adjust`, the candidates' logits are adjusted first
   * and ranked again (the full-row path adjusts the row in place before `sample`).
   */
  sampleRanked(values: Float32Array, ids: ArrayLike<number | bigint>, offset: number, count: number, params: SamplingParams, rng: Rng, adjust?: LogitAdjust): number {
    if (adjust !== undefined) {
      const n = this.rerank(values, ids, offset, count, adjust);
      return this.drawRanked(this.rankedValues, this.rankedIds, 0, n, params, rng);
    }
    return this.drawRanked(values, ids, offset, count, params, rng);
  }

  /**
   * Whether `sampleRanked` over `k` ranked candidates reproduces `sample` for these parameters:
   * greedy or top-k rows whose k best fit, counting, for an adjusted row, every listed token that
   * may have left the k best (adjustments that can only lower logits; see LogitAdjust).
   */
  static rankedSuffices(params: SamplingParams, k: number, adjust?: LogitAdjust): boolean {
    const extra = adjust === undefined ? 0 : adjust.onlyLowers ? adjust.n : Infinity;
    if (!(params.temperature > 0)) return 1 + extra <= k;
    return params.topK > 0 && params.topK + extra <= k;
  }

  /** The in-graph k a row needs for `sampleRanked` (see rankedSuffices). */
  static rankedNeeds(params: SamplingParams, adjust?: LogitAdjust): number {
    const extra = adjust === undefined ? 0 : adjust.n;
    return (params.temperature > 0 ? params.topK : 1) + extra;
  }

  private drawRanked(values: Float32Array, ids: ArrayLike<number | bigint>, offset: number, count: number, params: SamplingParams, rng: Rng): number {
    const id = (j: number) => Number(ids[offset + j]);
    const T = params.temperature;
    if (!(T > 0)) return id(0);
    const u = rng.next();
    const invT = 1 / T;
    if (invT === Infinity) return id(0);
    const size = params.topK > 0 ? Math.min(params.topK, count) : count;
    const max = values[offset]!;
    if (!(max > -Infinity && max < Infinity)) return id(0);
    const minP = params.minP ?? 0;
    const w = this.weights;
    let total = 0;
    for (let j = 0; j < size; j++) {
      const z = (values[offset + j]! - max) * invT;
      let e = z > -Infinity ? Math.exp(z) : 0;
      if (e < minP) e = 0;
      w[j] = e;
      total += e;
    }
    const j = this.drawRank(size, total, params.topP, u);
    return id(j < 0 ? 0 : j);
  }

  /**
   * Adjusts the candidates' logits (float32, as the full-row path stores them) into
   * rankedValues/rankedIds and sorts them back into rank order; returns how many there are.
   * Candidates are few (at most the in-graph k), so an insertion sort is the cheap one.
   */
  private rerank(values: Float32Array, ids: ArrayLike<number | bigint>, offset: number, count: number, a: LogitAdjust): number {
    if (this.rankedValues.length < count) {
      this.rankedValues = new Float32Array(count);
      this.rankedIds = new Int32Array(count);
    }
    const slot = this.slotOf;
    for (let j = 0; j < a.n; j++) slot[a.tokens[j]!] = j;
    const rv = this.rankedValues;
    const ri = this.rankedIds;
    for (let j = 0; j < count; j++) {
      const id = Number(ids[offset + j]);
      const e = slot[id]!;
      const v = e >= 0 ? Math.fround(adjustedLogit(values[offset + j]!, a.counts[e]!, a.flags[e]!, a.bias[e]!, a.presence, a.frequency, a.repetition)) : values[offset + j]!;
      // NaN never ranks (as in the full-row heap); it goes last.
      let p = j;
      while (p > 0 && ranksBefore(v, id, rv[p - 1]!, ri[p - 1]!)) {
        rv[p] = rv[p - 1]!;
        ri[p] = ri[p - 1]!;
        p--;
      }
      rv[p] = v;
      ri[p] = id;
    }
    for (let j = 0; j < a.n; j++) slot[a.tokens[j]!] = -1;
    return count;
  }

  private argmax(logits: Float32Array, off: number): number {
    const V = this.vocabSize;
    let best = -Infinity;
    let bi = 0;
    for (let i = 0; i < V; i++) {
      const l = logits[off + i]!;
      if (l > best) {
        best = l;
        bi = i;
      }
    }
    return bi;
  }

  private sampleFull(logits: Float32Array, off: number, invT: number, minP: number, u: number): number {
    const V = this.vocabSize;
    const w = this.weights;
    const am = this.argmax(logits, off);
    const max = logits[off + am]!;
    if (!(max > -Infinity && max < Infinity)) return am;
    let total = 0;
    for (let i = 0; i < V; i++) {
      const z = (logits[off + i]! - max) * invT;
      // `z > -Infinity` is false for NaN, so NaN logits get weight 0 instead of poisoning the sum.
      let e = z > -Infinity ? Math.exp(z) : 0;
      if (e < minP) e = 0;
      w[i] = e;
      total += e;
    }
    const x = u * total;
    let cum = 0;
    for (let i = 0; i < V; i++) {
      cum += w[i]!;
      if (cum > x) return i;
    }
    return am;
  }

  private sampleTopK(logits: Float32Array, off: number, invT: number, k: number, topP: number, minP: number, u: number): number {
    const V = this.vocabSize;
    const h = this.heap;
    const w = this.weights;
    // Min-heap keyed by rank: the root is the worst of the best k seen so far.
    let size = 0;
    for (let i = 0; i < V; i++) {
      const l = logits[off + i]!;
      if (l !== l) continue;
      if (size < k) {
        h[size] = i;
        this.siftUpWorst(logits, off, size);
        size++;
      } else if (l > logits[off + h[0]!]!) {
        // Strict: an equal logit with a higher id ranks after the root, so it stays out.
        h[0] = i;
        this.siftDownWorst(logits, off, 0, size);
      }
    }
    if (size === 0) return 0;
    // In-place heapsort: repeatedly moving the worst to the back leaves h[0..size) best-first.
    for (let end = size - 1; end > 0; end--) {
      const t = h[0]!;
      h[0] = h[end]!;
      h[end] = t;
      this.siftDownWorst(logits, off, 0, end);
    }
    const first = h[0]!;
    const max = logits[off + first]!;
    if (!(max > -Infinity && max < Infinity)) return first;
    let total = 0;
    for (let j = 0; j < size; j++) {
      const z = (logits[off + h[j]!]! - max) * invT;
      let e = z > -Infinity ? Math.exp(z) : 0;
      if (e < minP) e = 0;
      w[j] = e;
      total += e;
    }
    const j = this.drawRank(size, total, topP, u);
    return j < 0 ? first : h[j]!;
  }

  /**
   * The draw shared by top-k over the heap and over in-graph candidates: weights w[0..size) in
   * rank order summing to `total`, cut to the top-p nucleus, one uniform `u`. Returns the
   * chosen rank, or -1 when rounding leaves nothing chosen (callers take the best).
   */
  private drawRank(size: number, total: number, topP: number, u: number): number {
    const w = this.weights;
    let n = size;
    let kept = total;
    if (topP < 1) {
      const target = topP * total;
      let cum = 0;
      n = 0;
      while (n < size) {
        cum += w[n]!;
        n++;
        if (cum >= target) break;
      }
      kept = cum;
    }
    const x = u * kept;
    let cum = 0;
    for (let j = 0; j < n; j++) {
      cum += w[j]!;
      if (cum > x) return j;
    }
    return -1;
  }

  private sampleTopP(logits: Float32Array, off: number, T: number, invT: number, topP: number, minP: number, u: number): number {
    const V = this.vocabSize;
    const h = this.heap;
    const w = this.weights;
    const r = this.ranked;
    const am = this.argmax(logits, off);
    const max = logits[off + am]!;
    if (!(max > -Infinity && max < Infinity)) return am;
    let total = 0;
    for (let i = 0; i < V; i++) {
      const z = (logits[off + i]! - max) * invT;
      let e = z > -Infinity ? Math.exp(z) : 0;
      if (e < minP) e = 0;
      w[i] = e;
      total += e;
    }
    const target = topP * total;
    // Tokens below this logit each weigh < (1 - topP) * total / V, so all of them together weigh
    // less than what the nucleus may leave out.
    let threshold = max + T * Math.log(((1 - topP) * total) / V);
    let n = 0;
    let cum = 0;
    for (;;) {
      let m = 0;
      for (let i = 0; i < V; i++) {
        if (logits[off + i]! >= threshold) h[m++] = i;
      }
      for (let p = (m >> 1) - 1; p >= 0; p--) this.siftDownBest(logits, off, p, m);
      n = 0;
      cum = 0;
      let reached = false;
      while (m > 0) {
        const top = h[0]!;
        r[n++] = top;
        cum += w[top]!;
        if (cum >= target) {
          reached = true;
          break;
        }
        m--;
        if (m > 0) {
          h[0] = h[m]!;
          this.siftDownBest(logits, off, 0, m);
        }
      }
      if (reached || threshold === -Infinity) break;
      threshold = -Infinity;
    }
    if (n === 0) return am;
    const x = u * cum;
    let c = 0;
    for (let j = 0; j < n; j++) {
      const t = r[j]!;
      c += w[t]!;
      if (c > x) return t;
    }
    return r[0]!;
  }

  // Heap helpers take logits/offset as arguments rather than stashing them on `this`, so the
  // sampler never retains a batch buffer between calls.

  /** Min-heap (root = lowest rank) sift-up. */
  private siftUpWorst(logits: Float32Array, off: number, pos: number): void {
    const h = this.heap;
    const id = h[pos]!;
    const l = logits[off + id]!;
    while (pos > 0) {
      const parent = (pos - 1) >> 1;
      const pid = h[parent]!;
      const pl = logits[off + pid]!;
      // Stop once the parent ranks no better than the new node (parent is "worse or equal").
      if (pl < l || (pl === l && pid > id)) break;
      h[pos] = pid;
      pos = parent;
    }
    h[pos] = id;
  }

  /** Min-heap (root = lowest rank) sift-down within h[0..size). */
  private siftDownWorst(logits: Float32Array, off: number, pos: number, size: number): void {
    const h = this.heap;
    const id = h[pos]!;
    const l = logits[off + id]!;
    for (;;) {
      let child = 2 * pos + 1;
      if (child >= size) break;
      let cid = h[child]!;
      let cl = logits[off + cid]!;
      const right = child + 1;
      if (right < size) {
        const rid = h[right]!;
        const rl = logits[off + rid]!;
        if (rl < cl || (rl === cl && rid > cid)) {
          child = right;
          cid = rid;
          cl = rl;
        }
      }
      // Child worse than the node → it must move up.
      if (!(cl < l || (cl === l && cid > id))) break;
      h[pos] = cid;
      pos = child;
    }
    h[pos] = id;
  }

  /** Max-heap (root = highest rank) sift-down within h[0..size). */
  private siftDownBest(logits: Float32Array, off: number, pos: number, size: number): void {
    const h = this.heap;
    const id = h[pos]!;
    const l = logits[off + id]!;
    for (;;) {
      let child = 2 * pos + 1;
      if (child >= size) break;
      let cid = h[child]!;
      let cl = logits[off + cid]!;
      const right = child + 1;
      if (right < size) {
        const rid = h[right]!;
        const rl = logits[off + rid]!;
        if (rl > cl || (rl === cl && rid < cid)) {
          child = right;
          cid = rid;
          cl = rl;
        }
      }
      if (!(cl > l || (cl === l && cid < id))) break;
      h[pos] = cid;
      pos = child;
    }
    h[pos] = id;
  }
}

/** Rank order: logit descending, then id ascending; NaN after everything. */
function ranksBefore(v: number, id: number, w: number, wid: number): boolean {
  if (v !== v) return false;
  if (w !== w) return true;
  return v > w || (v === w && id < wid);
}
