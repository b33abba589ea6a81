import { validateSamplingParams } from '../sampling/params.js';
import { Rng } from '../sampling/rng.js';
import { DirectDriver, type DirectItem } from './direct.js';
import type { Engine } from './types.js';

/**
 * Teacher-forced evaluation: feed each sequence's tokens one position at a time (all sequences
 * batched in one step) and hand back the model's log-probabilities for the next token at every
 * position. What perplexity, KL divergence and top-1 agreement between two weight formats are
 * measured on. Not a serving path: it copies full logits rows. The engine's pool must hold
 * every sequence at its full length.
 */
export async function forcedLogProbs(engine: Engine, sequences: readonly (readonly number[])[], onRow: (seq: number, pos: number, logProbs: Float32Array) => void): Promise<void> {
  const greedy = validateSamplingParams({ temperature: 0, max_tokens: 1 });
  const V = engine.info.vocabSize;
  const row = new Float32Array(V);
  const driver = new DirectDriver(engine);
  sequences.forEach((_, i) => driver.open(i, greedy, new Rng(i)));
  try {
    const longest = Math.max(...sequences.map((s) => s.length));
    for (let pos = 0; pos < longest; pos++) {
      const items: DirectItem[] = [];
      const which: number[] = [];
      sequences.forEach((s, i) => {
        if (pos < s.length) {
          items.push([i, [s[pos] as number], true]);
          which.push(i);
        }
      });
      const r = await driver.step(items, true);
      const logits = r.logits as Float32Array;
      for (let k = 0; k < which.length; k++) {
        logSoftmax(logits.subarray(k * V, (k + 1) * V), row);
        onRow(which[k] as number, pos, row);
      }
    }
  } finally {
    sequences.forEach((_, i) => driver.close(i));
  }
}

/** log softmax of `logits` into `out`, in float64 arithmetic. */
export function logSoftmax(logits: Float32Array, out: Float32Array): void {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if ((logits[i] as number) > max) max = logits[i] as number;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp((logits[i] as number) - max);
  const lse = max + Math.log(sum);
  for (let i = 0; i < logits.length; i++) out[i] = (logits[i] as number) - lse;
}

/** KL(p ‖ q) in nats from two log-probability rows. */
export function klDivergence(logP: Float32Array, logQ: Float32Array): number {
  let kl = 0;
  for (let i = 0; i < logP.length; i++) {
    const lp = logP[i] as number;
    if (lp === -Infinity) continue;
    kl += Math.exp(lp) * (lp - (logQ[i] as number));
  }
  return Math.max(0, kl);
}

/** The highest entry's index and its lead over the runner-up. */
export function top2(row: Float32Array): { best: number; margin: number } {
  let best = 0;
  let second = -Infinity;
  for (let i = 1; i < row.length; i++) {
    const v = row[i] as number;
    if (v > (row[best] as number)) {
      second = row[best] as number;
      best = i;
    } else if (v > second) {
      second = v;
    }
  }
  return { best, margin: (row[best] as number) - second };
}
