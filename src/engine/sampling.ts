import { getRandomValues } from 'node:crypto';
import { InvalidSamplingError } from '../errors.js';

/**
 * Per-request sampling settings, already validated and defaulted. `topK === 0` and `topP === 1`
 * mean "disabled"; `temperature === 0` means greedy.
 */
export interface SamplingParams {
  temperature: number;
  topP: number;
  topK: number;
  seed: number | undefined;
  maxTokens: number;
  stop: string[];
}

export interface SamplingInput {
  temperature?: unknown;
  top_p?: unknown;
  topP?: unknown;
  top_k?: unknown;
  topK?: unknown;
  seed?: unknown;
  max_tokens?: unknown;
  maxTokens?: unknown;
  stop?: unknown;
}

export const MAX_STOP_SEQUENCES = 4;

function fail(param: string, message: string): never {
  // The HTTP layer reports `error.param`, so the field name travels on the error itself.
  throw Object.assign(new InvalidSamplingError(message), { param });
}

/** JSON clients often send `null` for "use the default", so null counts as absent. */
function present(v: unknown): boolean {
  return v !== undefined && v !== null;
}

/**
 * Picks the snake_case (OpenAI wire) spelling over the camelCase one, and remembers which name
 * the caller used so the error names the field they actually sent.
 */
function alias(input: SamplingInput, snake: 'top_p' | 'top_k' | 'max_tokens', camel: 'topP' | 'topK' | 'maxTokens'): [string, unknown] {
  if (present(input[snake])) return [snake, input[snake]];
  return [camel, input[camel]];
}

/**
 * Validates request sampling fields with OpenAI semantics and defaults. Every rejection is an
 * `InvalidSamplingError` carrying `param`; nothing is silently clamped, because a client that asked
 * for temperature 5 should learn that it did not get it.
 */
export function validateSamplingParams(input: SamplingInput, limits?: { maxTokensCap?: number }): SamplingParams {
  let temperature = 1;
  if (present(input.temperature)) {
    const v = input.temperature;
    if (typeof v !== 'number' || !(v >= 0 && v <= 2)) fail('temperature', 'temperature must be a number in [0, 2]');
    temperature = v;
  }

  let topP = 1;
  const [topPName, topPValue] = alias(input, 'top_p', 'topP');
  if (present(topPValue)) {
    const v = topPValue;
    if (typeof v !== 'number' || !(v > 0 && v <= 1)) fail(topPName, `${topPName} must be a number in (0, 1]`);
    topP = v;
  }

  let topK = 0;
  const [topKName, topKValue] = alias(input, 'top_k', 'topK');
  if (present(topKValue)) {
    const v = topKValue;
    // -1 is vLLM's spelling of "disabled"; accepting it keeps vLLM clients working unchanged.
    if (typeof v !== 'number' || !Number.isInteger(v) || v < -1) {
      fail(topKName, `${topKName} must be an integer >= 0 (0 or -1 disables it)`);
    }
    topK = v === -1 ? 0 : v;
  }

  let seed: number | undefined;
  if (present(input.seed)) {
    const v = input.seed;
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) fail('seed', 'seed must be a safe integer');
    seed = v;
  }

  const cap = limits?.maxTokensCap;
  let maxTokens = 16;
  const [maxName, maxValue] = alias(input, 'max_tokens', 'maxTokens');
  if (present(maxValue)) {
    const v = maxValue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || (cap !== undefined && v > cap)) {
      fail(maxName, cap !== undefined ? `${maxName} must be an integer in [1, ${cap}]` : `${maxName} must be an integer >= 1`);
    }
    maxTokens = v;
  }

  let stop: string[] = [];
  if (present(input.stop)) {
    const v = input.stop;
    const msg = `stop must be a non-empty string or an array of at most ${MAX_STOP_SEQUENCES} non-empty strings`;
    if (typeof v === 'string') {
      if (v.length === 0) fail('stop', msg);
      stop = [v];
    } else if (Array.isArray(v)) {
      if (v.length > MAX_STOP_SEQUENCES) fail('stop', msg);
      for (const s of v as unknown[]) {
        if (typeof s !== 'string' || s.length === 0) fail('stop', msg);
      }
      stop = (v as string[]).slice();
    } else {
      fail('stop', msg);
    }
  }

  return { temperature, topP, topK, seed, maxTokens, stop };
}

// ---------------------------------------------------------------------------------------------
// Rng
// ---------------------------------------------------------------------------------------------

const M64 = 0xffff_ffff_ffff_ffffn;

/**
 * Seeded PRNG whose stream a native (C++) sampler must reproduce bit for bit, so the algorithm is
 * fixed here exactly:
 *
 * Seeding (SplitMix64, all arithmetic mod 2^64):
 *   x = (uint64_t)(int64_t)seed                       // negative seeds wrap two's-complement
 *   splitmix64(): x += 0x9E3779B97F4A7C15;
 *                 z = x;
 *                 z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
 *                 z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
 *                 return z ^ (z >> 31);
 *   a = splitmix64(); b = splitmix64();
 *   s[0] = (uint32_t)a; s[1] = (uint32_t)(a >> 32); s[2] = (uint32_t)b; s[3] = (uint32_t)(b >> 32);
 *   (a and b come from distinct counter values of a bijection, so at most one is 0 and the state
 *   can never be all-zero.)
 *
 * Step (xoshiro128**, Blackman & Vigna, all arithmetic mod 2^32):
 *   result = rotl(s[1] * 5, 7) * 9;
 *   t = s[1] << 9;
 *   s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 11);
 *
 * Uniform: next() = (float)(result >> 8) * 2^-24, i.e. a float32-exact value in [0, 1). Using only
 * 24 bits means the C++ side can hold it in a float without rounding and still agree.
 *
 * Known answers: seed 42 → nextUint32() = 1776835114, 4165204688, 17111135, ...
 */
export class Rng {
  /** The seed actually in use (drawn from crypto for unseeded requests), for logging/replay. */
  readonly seed: number;
  // State kept as int32 numbers: V8 keeps them unboxed, and Math.imul/bit ops give mod-2^32 math.
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** Copies the four state words to into[at .. at + 4), the native sampler's layout (s0..s3). */
  saveState(into: Uint32Array, at: number): void {
    into[at] = this.s0;
    into[at + 1] = this.s1;
    into[at + 2] = this.s2;
    into[at + 3] = this.s3;
  }

  /** Restores the state saveState wrote at from[at .. at + 4). */
  loadState(from: Uint32Array, at: number): void {
    this.s0 = from[at]! | 0;
    this.s1 = from[at + 1]! | 0;
    this.s2 = from[at + 2]! | 0;
    this.s3 = from[at + 3]! | 0;
  }

  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`Rng seed must be a safe integer, got ${seed}`);
    this.seed = seed;
    // BigInt only at construction (once per request); the per-token path is pure int32 math.
    let x = BigInt.asUintN(64, BigInt(seed));
    const splitmix64 = (): bigint => {
      x = (x + 0x9e3779b97f4a7c15n) & M64;
      let z = x;
      z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
      z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
      return z ^ (z >> 31n);
    };
    const a = splitmix64();
    const b = splitmix64();
    this.s0 = Number(a & 0xffff_ffffn) | 0;
    this.s1 = Number(a >> 32n) | 0;
    this.s2 = Number(b & 0xffff_ffffn) | 0;
    this.s3 = Number(b >> 32n) | 0;
  }

  /** A random seed in [0, 2^53), so it round-trips through JSON and through `new Rng(seed)`. */
  static randomSeed(): number {
    const w = getRandomValues(new Uint32Array(2));
    return (w[0]! & 0x1f_ffff) * 0x1_0000_0000 + w[1]!;
  }

  /** Seeded requests replay exactly; unseeded ones get a crypto seed (recorded in `.seed`). */
  static create(seed: number | undefined): Rng {
    return new Rng(seed === undefined ? Rng.randomSeed() : seed);
  }

  /** Raw xoshiro128** output as an unsigned 32-bit integer. */
  nextUint32(): number {
    const s0 = this.s0;
    const s1 = this.s1;
    const s2 = this.s2 ^ s0;
    const s3 = this.s3 ^ s1;
    const m = Math.imul(s1, 5);
    const result = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
    this.s1 = s1 ^ s2;
    this.s0 = s0 ^ s3;
    this.s2 = s2 ^ (s1 << 9);
    this.s3 = (s3 << 11) | (s3 >>> 21);
    return result;
  }

  /** Uniform float32-precision value in [0, 1). */
  next(): number {
    return (this.nextUint32() >>> 8) * 5.9604644775390625e-8; // 2^-24
  }
}

// ---------------------------------------------------------------------------------------------
// Sampler
// ---------------------------------------------------------------------------------------------

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

  constructor(vocabSize: number) {
    if (!Number.isSafeInteger(vocabSize) || vocabSize < 1) throw new RangeError(`vocabSize must be a positive integer, got ${vocabSize}`);
    this.vocabSize = vocabSize;
    this.weights = new Float64Array(vocabSize);
    this.heap = new Int32Array(vocabSize);
    this.ranked = new Int32Array(vocabSize);
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
    if (k > 0 && k < V) return this.sampleTopK(logits, offset, invT, k, topP, u);
    if (topP < 1) return this.sampleTopP(logits, offset, T, invT, topP, u);
    return this.sampleFull(logits, offset, invT, u);
  }

  /**
   * Samples from candidates already ranked best-first — the output of an in-graph TopK
   * (values descending, ties by lower id) — without the full row of logits. Gives exactly the
   * token `sample` gives on the full row when the request is greedy or has 0 < top_k ≤ `count`:
   * the same weights in the same order, the same single draw.
   */
  sampleRanked(values: Float32Array, ids: ArrayLike<number | bigint>, offset: number, count: number, params: SamplingParams, rng: Rng): number {
    const id = (j: number) => Number(ids[offset + j]);
    const T = params.temperature;
    if (!(T > 0)) return id(0);
    const u = rng.next();
    const invT = 1 / T;
    if (invT === Infinity) return id(0);
    const size = params.topK > 0 ? Math.min(params.topK, count) : count;
    const max = values[offset]!;
    if (!(max > -Infinity && max < Infinity)) return id(0);
    const w = this.weights;
    let total = 0;
    for (let j = 0; j < size; j++) {
      const z = (values[offset + j]! - max) * invT;
      const e = z > -Infinity ? Math.exp(z) : 0;
      w[j] = e;
      total += e;
    }
    const j = this.drawRank(size, total, params.topP, u);
    return id(j < 0 ? 0 : j);
  }

  /** Whether `sampleRanked` over `k` ranked candidates reproduces `sample` for these parameters. */
  static rankedSuffices(params: SamplingParams, k: number): boolean {
    return !(params.temperature > 0) || (params.topK > 0 && params.topK <= k);
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

  private sampleFull(logits: Float32Array, off: number, invT: number, u: number): number {
    const V = this.vocabSize;
    const w = this.weights;
    const am = this.argmax(logits, off);
    const max = logits[off + am]!;
    if (!(max > -Infinity && max < Infinity)) return am;
    let total = 0;
    for (let i = 0; i < V; i++) {
      const z = (logits[off + i]! - max) * invT;
      // `z > -Infinity` is false for NaN, so NaN logits get weight 0 instead of poisoning the sum.
      const e = z > -Infinity ? Math.exp(z) : 0;
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

  private sampleTopK(logits: Float32Array, off: number, invT: number, k: number, topP: number, u: number): number {
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
      const e = z > -Infinity ? Math.exp(z) : 0;
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

  private sampleTopP(logits: Float32Array, off: number, T: number, invT: number, topP: number, u: number): number {
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
      const e = z > -Infinity ? Math.exp(z) : 0;
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

// ---------------------------------------------------------------------------------------------
// StopMatcher
// ---------------------------------------------------------------------------------------------

export interface StopPushResult {
  /** Text that is now safe to send to the client. */
  emit: string;
  /** A stop sequence matched; generation should end and further pushes are ignored. */
  stopped: boolean;
}

/**
 * Incremental stop-sequence matcher over the completion text (OpenAI semantics: output ends right
 * before the first stop sequence, which itself is never sent).
 *
 * Only the longest suffix that could still grow into a stop sequence is held back, so streaming
 * latency is unaffected except while a partial match is pending. Stops are checked after every
 * push, as generation would: once any stop sequence appears, generation ends there, even if a
 * longer stop sequence beginning earlier might have completed with more text.
 */
export class StopMatcher {
  private readonly stops: readonly string[];
  private held = '';
  private done = false;

  constructor(stop: readonly string[]) {
    this.stops = stop.filter((s) => s.length > 0);
  }

  get stopped(): boolean {
    return this.done;
  }

  push(text: string): StopPushResult {
    if (this.done) return { emit: '', stopped: true };
    const stops = this.stops;
    if (stops.length === 0) return { emit: text, stopped: false };
    const s = this.held.length === 0 ? text : this.held + text;

    let cut = -1;
    for (let k = 0; k < stops.length; k++) {
      const idx = s.indexOf(stops[k]!);
      if (idx >= 0 && (cut < 0 || idx < cut)) cut = idx;
    }
    if (cut >= 0) {
      this.done = true;
      this.held = '';
      return { emit: s.slice(0, cut), stopped: true };
    }

    // A stop can only match in the future if it starts inside a suffix of s that is one of its
    // proper prefixes; the longest such suffix covers every later-starting candidate too.
    let hold = 0;
    for (let k = 0; k < stops.length; k++) {
      const st = stops[k]!;
      for (let len = Math.min(st.length - 1, s.length); len > hold; len--) {
        if (endsWithPrefix(s, st, len)) {
          hold = len;
          break;
        }
      }
    }
    if (hold === 0) {
      this.held = '';
      return { emit: s, stopped: false };
    }
    const split = s.length - hold;
    this.held = s.slice(split);
    return { emit: s.slice(0, split), stopped: false };
  }

  /** Releases held-back text once generation ends without a stop match. */
  flush(): string {
    const out = this.held;
    this.held = '';
    return this.done ? '' : out;
  }
}

/** Whether s ends with stop[0 .. len), compared in place to avoid a substring per check. */
function endsWithPrefix(s: string, stop: string, len: number): boolean {
  const base = s.length - len;
  for (let j = 0; j < len; j++) {
    if (s.charCodeAt(base + j) !== stop.charCodeAt(j)) return false;
  }
  return true;
}
