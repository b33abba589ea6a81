import type { SamplingParams } from './params.js';

/** Entry flags of a LogitAdjust. */
export const IN_PROMPT = 1;
/** A stop token while min_tokens is not reached: it cannot be drawn. */
export const BANNED = 2;

/**
 * One row's logit changes for a step, as data (so it can cross to the engine's thread): a
 * sparse list of tokens, each with its count among the generated tokens, its flags and its
 * bias, and the request's penalties. Only the listed tokens change; everything else in the row
 * is left as the model produced it.
 *
 * Exact definition (the native addon's `adjustLogits` follows it bit for bit): for each entry,
 * in float64 starting from the float32 logit v,
 *
 *     v = v + bias
 *     if repetition != 1 and (in prompt or count > 0):  v = v > 0 ? v / repetition : v * repetition
 *     if count > 0:  v = v - frequency * count;  v = v - presence
 *     if banned:     v = -Infinity
 *
 * and the result is stored back rounded to float32. This is vLLM's order (logit bias, then
 * the repetition, frequency and presence penalties of its sampler); presence and frequency
 * count generated tokens only, repetition counts the prompt too, as in vLLM and HF.
 */
export interface LogitAdjust {
  n: number;
  tokens: Int32Array;
  counts: Int32Array;
  flags: Uint8Array;
  bias: Float64Array;
  presence: number;
  frequency: number;
  repetition: number;
  /**
   * True when no entry can rise (non-negative penalties, repetition ≥ 1, no positive bias): the
   * best k of the adjusted row are then among the best k + n of the raw row, so the in-graph
   * top-k still serves it.
   */
  onlyLowers: boolean;
}

/** Applies `a` to logits[offset .. offset + vocab) in place (see LogitAdjust for the formula). */
export function applyLogitAdjust(logits: Float32Array, offset: number, a: LogitAdjust): void {
  const { tokens, counts, flags, bias, presence, frequency, repetition } = a;
  for (let j = 0; j < a.n; j++) {
    const at = offset + tokens[j]!;
    logits[at] = adjustedLogit(logits[at]!, counts[j]!, flags[j]!, bias[j]!, presence, frequency, repetition);
  }
}

/** One entry of the LogitAdjust formula, in float64; the caller stores it as float32. */
export function adjustedLogit(logit: number, count: number, flags: number, bias: number, presence: number, frequency: number, repetition: number): number {
  let v = logit + bias;
  if (repetition !== 1 && ((flags & IN_PROMPT) !== 0 || count > 0)) v = v > 0 ? v / repetition : v * repetition;
  if (count > 0) {
    v = v - frequency * count;
    v = v - presence;
  }
  if ((flags & BANNED) !== 0) v = -Infinity;
  return v;
}

/**
 * A request's LogitAdjust kept up to date as its tokens grow: `sync` reads the tokens generated
 * since the last call (work proportional to those alone) and `current` is the row's adjustment
 * for the next draw, or undefined when nothing changes the logits. Built only for requests
 * with penalties, biases or min_tokens.
 */
export class LogitAdjuster {
  private readonly adjust: LogitAdjust;
  private readonly slotOf = new Map<number, number>();
  private readonly stopSlots: number[] = [];
  private readonly minTokens: number;
  private readonly countsOutput: boolean;
  private synced = 0;
  private promptLength = -1;

  /**
   * @param stopIds the tokens min_tokens keeps from being drawn: the model's end-of-sequence
   *   tokens (unless ignore_eos) and the request's stop_token_ids
   */
  constructor(params: SamplingParams, stopIds: readonly number[]) {
    const presence = params.presencePenalty ?? 0;
    const frequency = params.frequencyPenalty ?? 0;
    const repetition = params.repetitionPenalty ?? 1;
    this.minTokens = params.minTokens ?? 0;
    this.countsOutput = presence !== 0 || frequency !== 0 || repetition !== 1;
    const cap = 16;
    this.adjust = {
      n: 0,
      tokens: new Int32Array(cap),
      counts: new Int32Array(cap),
      flags: new Uint8Array(cap),
      bias: new Float64Array(cap),
      presence,
      frequency,
      repetition,
      onlyLowers: presence >= 0 && frequency >= 0 && repetition >= 1 && (params.logitBias ?? []).every((b) => b.bias <= 0),
    };
    for (const b of params.logitBias ?? []) this.adjust.bias[this.slot(b.token)] = b.bias;
    if (this.minTokens > 0) {
      for (const t of stopIds) {
        const s = this.slot(t);
        this.adjust.flags[s]! |= BANNED;
        this.stopSlots.push(s);
      }
    }
  }

  /** The adjustment for the draw after tokens[0 .. length), of which the first promptLength are the prompt. */
  sync(tokens: ArrayLike<number>, promptLength: number, length: number): LogitAdjust | undefined {
    const a = this.adjust;
    if (this.promptLength !== promptLength) {
      this.promptLength = promptLength;
      this.synced = 0;
      if (a.repetition !== 1) for (let i = 0; i < promptLength; i++) a.flags[this.slot(tokens[i]!)]! |= IN_PROMPT;
      this.synced = promptLength;
    }
    // A preempted request resumes with the same tokens, so `length` never falls below `synced`.
    if (this.countsOutput) for (let i = this.synced; i < length; i++) a.counts[this.slot(tokens[i]!)]!++;
    this.synced = Math.max(this.synced, length);
    if (this.minTokens > 0 && length - promptLength >= this.minTokens && this.stopSlots.length > 0) {
      for (const s of this.stopSlots) a.flags[s]! &= ~BANNED;
      this.stopSlots.length = 0;
    }
    return a.n > 0 ? a : undefined;
  }

  private slot(token: number): number {
    let s = this.slotOf.get(token);
    if (s !== undefined) return s;
    const a = this.adjust;
    s = a.n++;
    if (s === a.tokens.length) {
      const grow = <T extends Int32Array | Uint8Array | Float64Array>(x: T): T => {
        const y = new (x.constructor as new (n: number) => T)(2 * x.length);
        y.set(x);
        return y;
      };
      a.tokens = grow(a.tokens);
      a.counts = grow(a.counts);
      a.flags = grow(a.flags);
      a.bias = grow(a.bias);
    }
    a.tokens[s] = token;
    this.slotOf.set(token, s);
    return s;
  }
}
