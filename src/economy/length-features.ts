/**
 * What the output-length model may know about a request when it arrives, and its encoding as
 * a fixed-width vector of numbers. Nothing here may depend on the completion itself.
 */
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
/** Hashed prefixes of these lengths (those the prompt has): short ones group templates coarsely, long ones finely. */
const PREFIX_LENGTHS = [1, 2, 4, 8] as const;

const TENANT_AT = 0;
const PREFIX_AT = TENANT_AT + TENANT_BUCKETS;
const PROMPT_AT = PREFIX_AT + PREFIX_BUCKETS;
const MAX_TOKENS_AT = PROMPT_AT + 1;
const ENDPOINT_AT = MAX_TOKENS_AT + 1;
const STOP_AT = ENDPOINT_AT + 3;
const TEMPERATURE_AT = STOP_AT + 1;

/** Width of the encoded vector. */
export const FEATURE_WIDTH = TEMPERATURE_AT + 1;

/** Log lengths are divided by this so that inputs stay near [0, 1] for any realistic length. */
const LOG_SCALE = 10;

/** FNV-1a, then a murmur finalizer so that near names spread over the buckets. */
function hashTenant(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return finalize(h);
}

function finalize(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function endpointIndex(e: LengthFeatures['endpoint']): number {
  return e === 'completion' ? 0 : e === 'chat' ? 1 : 2;
}

/**
 * Writes the features of `f` into out[at .. at + FEATURE_WIDTH): one-hot hashed tenant,
 * hashed leading-token prefixes (a shared system prompt or template lands in the same
 * buckets), log prompt length, log max_tokens, endpoint one-hot, stop flag, temperature.
 * Allocates nothing.
 */
export function encodeLengthFeatures(f: LengthFeatures, out: Float32Array, at: number): void {
  out.fill(0, at, at + FEATURE_WIDTH);
  out[at + TENANT_AT + (hashTenant(f.tenant) % TENANT_BUCKETS)] = 1;
  const n = Math.min(LEADING_TOKENS, f.leadingTokens.length);
  let h = 0x9e3779b9;
  let next = 0;
  for (let i = 0; i < n; i++) {
    h = Math.imul(h ^ (f.leadingTokens[i]! | 0), 0x01000193) ^ (h >>> 15);
    if (i + 1 === PREFIX_LENGTHS[next]) {
      out[at + PREFIX_AT + (finalize(h + next) % PREFIX_BUCKETS)]! += 0.5;
      next++;
    }
  }
  out[at + PROMPT_AT] = Math.log1p(Math.max(0, f.promptTokens)) / LOG_SCALE;
  out[at + MAX_TOKENS_AT] = Math.log1p(Math.max(0, f.maxTokens)) / LOG_SCALE;
  out[at + ENDPOINT_AT + endpointIndex(f.endpoint)] = 1;
  out[at + STOP_AT] = f.hasStop ? 1 : 0;
  out[at + TEMPERATURE_AT] = Number.isFinite(f.temperature) ? Math.min(2, Math.max(0, f.temperature)) / 2 : 0;
}
