/**
 * Log probabilities of one row of logits, as vLLM reports them by default (its `raw_logprobs`):
 * the log-softmax of the model's own logits, before temperature, penalties, biases or a grammar
 * mask. All arithmetic is float64; NaN logits count as probability 0.
 */
export interface TokenLogprobs {
  /** The token the entry is about (sampled, or the prompt's next token). */
  token: number;
  logprob: number;
  /** The most likely tokens, best first (logit descending, id ascending), and their log probabilities. */
  topIds: number[];
  topLogprobs: number[];
}

/**
 * Computes logprob(token) and the `top` most likely tokens of logits[offset .. offset + vocab).
 * `heap` is scratch of at least `top` entries, reused by the caller across rows.
 */
export function rowLogprobs(logits: Float32Array, offset: number, vocab: number, token: number, top: number, heap: Int32Array): TokenLogprobs {
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) {
    const l = logits[offset + i]!;
    if (l > max) max = l;
  }
  let sum = 0;
  if (max > -Infinity && max < Infinity) {
    for (let i = 0; i < vocab; i++) {
      const z = logits[offset + i]! - max;
      if (z > -Infinity) sum += Math.exp(z);
    }
  }
  // A row with +Infinity or nothing finite has no meaningful distribution: every logprob is -Infinity but the top's.
  const lse = max === Infinity || !(sum > 0) ? max : max + Math.log(sum);
  const lp = (id: number): number => {
    const l = logits[offset + id]!;
    if (l !== l) return -Infinity;
    if (lse === Infinity) return l === Infinity ? 0 : -Infinity;
    return l - lse;
  };
  const k = Math.min(top, vocab);
  const size = topK(logits, offset, vocab, k, heap);
  const topIds: number[] = new Array(size);
  const topLogprobs: number[] = new Array(size);
  for (let j = 0; j < size; j++) {
    topIds[j] = heap[j]!;
    topLogprobs[j] = lp(heap[j]!);
  }
  return { token, logprob: lp(token), topIds, topLogprobs };
}

/** The k best ids (logit descending, id ascending, NaN never) into heap[0 .. k), best first; returns how many. */
function topK(logits: Float32Array, off: number, vocab: number, k: number, heap: Int32Array): number {
  if (k <= 0) return 0;
  // Min-heap by rank: the root is the worst of the best k so far.
  const worse = (a: number, b: number): boolean => {
    const la = logits[off + a]!;
    const lb = logits[off + b]!;
    return la < lb || (la === lb && a > b);
  };
  let size = 0;
  for (let i = 0; i < vocab; i++) {
    const l = logits[off + i]!;
    if (l !== l) continue;
    if (size < k) {
      let p = size++;
      while (p > 0) {
        const parent = (p - 1) >> 1;
        if (!worse(i, heap[parent]!)) break;
        heap[p] = heap[parent]!;
        p = parent;
      }
      heap[p] = i;
    } else if (worse(heap[0]!, i)) {
      siftDown(heap, 0, size, i, worse);
    }
  }
  for (let end = size - 1; end > 0; end--) {
    const last = heap[end]!;
    heap[end] = heap[0]!;
    siftDown(heap, 0, end, last, worse);
  }
  return size;
}

function siftDown(heap: Int32Array, pos: number, size: number, id: number, worse: (a: number, b: number) => boolean): void {
  for (;;) {
    let c = 2 * pos + 1;
    if (c >= size) break;
    if (c + 1 < size && worse(heap[c + 1]!, heap[c]!)) c++;
    if (!worse(heap[c]!, id)) break;
    heap[pos] = heap[c]!;
    pos = c;
  }
  heap[pos] = id;
}

/**
 * Sets every token whose bit is clear in `mask` (bit i of word i >> 5, as xgrammar writes it)
 * to -Infinity in logits[offset .. offset + vocab). Whole words of allowed tokens are skipped.
 */
export function applyTokenMask(logits: Float32Array, offset: number, vocab: number, mask: Int32Array): void {
  const words = Math.ceil(vocab / 32);
  for (let w = 0; w < words; w++) {
    const bits = mask[w] ?? 0;
    if (bits === -1) continue;
    const base = w * 32;
    const end = Math.min(32, vocab - base);
    for (let b = 0; b < end; b++) if (((bits >>> b) & 1) === 0) logits[offset + base + b] = -Infinity;
  }
}
