/**
 * What the output-length model may know about a request when it arrives, and its encoding as
 * a fixed-width vector of numbers. Nothing here may depend on the completion itself.
 */
import { fmix32, hashString } from '../random.js';

export interface LengthFeatures {
  tenant: string;
  promptTokens: number;
  /** The request's max_tokens cap (an upper bound, not the truth). */
  maxTokens: number;
  endpoint: 'completion' | 'chat' | 'trace';
  /** Stop strings or stop token ids beyond EOS. */
  hasStop: boolean;
  temperature: number;
  /** The prompt's first tokens (at most the first LEADING_TOKENS are read). */
  leadingTokens: ArrayLike<number>;
}

/** Leading prompt tokens the model reads: enough to tell one prompt template from another. */
export const LEADING_TOKENS = 8;

const TENANT_BUCKETS = 16;
const PREFIX_BUCKETS = 64;

/** Prompt length in half-octaves: lengths from 1 to 2^(PROMPT_BINS / 2) tokens each get a bin. */
const PROMPT_BINS = 40;

const TENANT_AT = 0;
const PREFIX_AT = TENANT_AT + TENANT_BUCKETS;
const PROMPT_BIN_AT = PREFIX_AT + PREFIX_BUCKETS;
const PROMPT_AT = PROMPT_BIN_AT + PROMPT_BINS;
const MAX_TOKENS_AT = PROMPT_AT + 1;
const ENDPOINT_AT = MAX_TOKENS_AT + 1;
const STOP_AT = ENDPOINT_AT + 3;
const TEMPERATURE_AT = STOP_AT + 1;

/** Width of the encoded vector. */
export const FEATURE_WIDTH = TEMPERATURE_AT + 1;

/** Log lengths are divided by this so that inputs stay near [0, 1] for any realistic length. */
const LOG_SCALE = 10;

/** Counters per row of the recurrence sketch (two rows). */
const SKETCH_WIDTH = 1 << 15;

/** Hash of the prompt's first LEADING_TOKENS tokens (all of them if fewer). */
function prefixHash(tokens: ArrayLike<number>): number {
  const n = Math.min(LEADING_TOKENS, tokens.length);
  let h = 0x9e3779b9 ^ n;
  for (let i = 0; i < n; i++) h = Math.imul(h ^ (tokens[i]! | 0), 0x01000193) ^ (h >>> 15);
  return fmix32(h);
}

function endpointIndex(e: LengthFeatures['endpoint']): number {
  return e === 'completion' ? 0 : e === 'chat' ? 1 : 2;
}

/**
 * Encodes features as a fixed-width vector: one-hot hashed tenant, a hashed bucket for the
 * prompt's leading tokens, prompt length (one-hot in half-octave bins, and its log), log
 * max_tokens, endpoint one-hot, stop flag, temperature.
 *
 * The leading-token bucket is set only for a prefix that recurs: one seen in at least
 * `minRecurrence` recent completions (a shared system prompt or template). A prefix seen once
 * names one request, and a network given a random bucket per request learns to memorize those
 * requests rather than anything about lengths (on the Azure traces, whose prompts are all
 * distinct, that made its intervals half as wide as they should be). Recurrence is counted in a
 * two-row count-min sketch whose counts halve every `halvingPeriod` completions, so memory is
 * fixed and only recent recurrence counts.
 */
export class LengthFeatureEncoder {
  private readonly rows = [new Uint8Array(SKETCH_WIDTH), new Uint8Array(SKETCH_WIDTH)] as const;
  private sinceHalving = 0;

  constructor(
    private readonly minRecurrence = 2,
    private readonly halvingPeriod = 4096,
  ) {}

  private static slot(h: number, row: number): number {
    return (row === 0 ? h : fmix32(h ^ 0x5bd1e995)) & (SKETCH_WIDTH - 1);
  }

  /** Completions seen (recently) with this prompt prefix, never undercounted. */
  private recurrence(h: number): number {
    return Math.min(this.rows[0][LengthFeatureEncoder.slot(h, 0)]!, this.rows[1][LengthFeatureEncoder.slot(h, 1)]!);
  }

  /** Writes the features of `f` into out[at .. at + FEATURE_WIDTH). Allocates nothing. */
  encode(f: LengthFeatures, out: Float32Array, at: number): void {
    out.fill(0, at, at + FEATURE_WIDTH);
    out[at + TENANT_AT + (hashString(f.tenant) % TENANT_BUCKETS)] = 1;
    if (f.leadingTokens.length > 0) {
      const h = prefixHash(f.leadingTokens);
      if (this.recurrence(h) >= this.minRecurrence) out[at + PREFIX_AT + (h % PREFIX_BUCKETS)] = 1;
    }
    // Both a bin and the log itself: the bins let the network pick out prompt-length ranges whose
    // outputs differ sharply (an application with a fixed prompt), the log lets it generalize.
    out[at + PROMPT_BIN_AT + Math.min(PROMPT_BINS - 1, Math.floor(2 * Math.log2(Math.max(1, f.promptTokens))))] = 1;
    out[at + PROMPT_AT] = Math.log1p(Math.max(0, f.promptTokens)) / LOG_SCALE;
    out[at + MAX_TOKENS_AT] = Math.log1p(Math.max(0, f.maxTokens)) / LOG_SCALE;
    out[at + ENDPOINT_AT + endpointIndex(f.endpoint)] = 1;
    out[at + STOP_AT] = f.hasStop ? 1 : 0;
    out[at + TEMPERATURE_AT] = Number.isFinite(f.temperature) ? Math.min(2, Math.max(0, f.temperature)) / 2 : 0;
  }

  /** Counts a completion's prompt prefix toward recurrence (after encoding it). */
  record(f: LengthFeatures): void {
    if (f.leadingTokens.length > 0) {
      const h = prefixHash(f.leadingTokens);
      for (let r = 0; r < 2; r++) {
        const row = this.rows[r as 0 | 1];
        const i = LengthFeatureEncoder.slot(h, r);
        if (row[i]! < 255) row[i]!++;
      }
    }
    if (++this.sinceHalving >= this.halvingPeriod) {
      this.sinceHalving = 0;
      for (const row of this.rows) for (let i = 0; i < row.length; i++) row[i] = row[i]! >>> 1;
    }
  }
}
