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
  // The fields below are optional so that callers which build params by hand stay valid; absent
  // means the neutral value given in each comment.
  /** OpenAI: subtracted once from the logit of every token already generated (0). */
  presencePenalty?: number;
  /** OpenAI: subtracted per occurrence from the logit of generated tokens (0). */
  frequencyPenalty?: number;
  /** vLLM/HF: divides positive and multiplies negative logits of prompt and generated tokens (1). */
  repetitionPenalty?: number;
  /** Added to the logits of the named tokens before any penalty ([]). */
  logitBias?: { token: number; bias: number }[];
  /** Tokens whose probability is below minP × the top token's are never drawn (0). */
  minP?: number;
  /** Stop tokens cannot be drawn, nor stop strings end the text, before this many tokens (0). */
  minTokens?: number;
  /** Keep generating after the model's end-of-sequence tokens (false). */
  ignoreEos?: boolean;
  /** More tokens that end generation like the model's EOS, themselves not returned ([]). */
  stopTokenIds?: number[];
  /** Return the sampled token's log probability and this many top alternatives (undefined: none). */
  logprobs?: number;
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
  presence_penalty?: unknown;
  frequency_penalty?: unknown;
  repetition_penalty?: unknown;
  logit_bias?: unknown;
  min_p?: unknown;
  min_tokens?: unknown;
  ignore_eos?: unknown;
  stop_token_ids?: unknown;
  /** Number of top alternatives per token (0: the sampled token's log probability only). */
  logprobs?: unknown;
}

export interface SamplingLimits {
  maxTokensCap?: number;
  /** Token ids (logit_bias, stop_token_ids) must be below this. */
  vocabSize?: number;
  /** Largest `logprobs` accepted (vLLM's max_logprobs; OpenAI allows 20 for chat, 5 for completions). */
  maxLogprobs?: number;
  /** The name `logprobs` errors carry (chat calls the count `top_logprobs`). */
  logprobsParam?: string;
}

export const MAX_STOP_SEQUENCES = 4;
export const MAX_LOGIT_BIAS = 300;
export const DEFAULT_MAX_LOGPROBS = 20;

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
export function validateSamplingParams(input: SamplingInput, limits?: SamplingLimits): SamplingParams {
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

  const params: SamplingParams = { temperature, topP, topK, seed, maxTokens, stop };
  const vocab = limits?.vocabSize;
  const tokenId = (v: unknown): boolean => typeof v === 'number' && Number.isInteger(v) && v >= 0 && (vocab === undefined || v < vocab);
  const idRange = vocab === undefined ? 'a token id (an integer >= 0)' : `a token id in [0, ${vocab - 1}]`;

  const penalty = (name: 'presence_penalty' | 'frequency_penalty'): number | undefined => {
    const v = input[name];
    if (!present(v)) return undefined;
    if (typeof v !== 'number' || !(v >= -2 && v <= 2)) fail(name, `${name} must be a number in [-2, 2]`);
    return v === 0 ? undefined : v;
  };
  const presence = penalty('presence_penalty');
  if (presence !== undefined) params.presencePenalty = presence;
  const frequency = penalty('frequency_penalty');
  if (frequency !== undefined) params.frequencyPenalty = frequency;

  if (present(input.repetition_penalty)) {
    const v = input.repetition_penalty;
    if (typeof v !== 'number' || !(v > 0 && v <= 10)) fail('repetition_penalty', 'repetition_penalty must be a number in (0, 10] (1 disables it)');
    if (v !== 1) params.repetitionPenalty = v;
  }

  if (present(input.logit_bias)) {
    const v = input.logit_bias;
    if (typeof v !== 'object' || Array.isArray(v)) fail('logit_bias', 'logit_bias must be an object mapping token ids to biases');
    const entries = Object.entries(v as Record<string, unknown>);
    if (entries.length > MAX_LOGIT_BIAS) fail('logit_bias', `logit_bias may name at most ${MAX_LOGIT_BIAS} tokens`);
    const bias: { token: number; bias: number }[] = [];
    for (const [key, b] of entries) {
      const token = /^\d+$/.test(key) ? Number(key) : NaN;
      if (!tokenId(token)) fail('logit_bias', `logit_bias key ${JSON.stringify(key)} is not ${idRange}`);
      if (typeof b !== 'number' || !(b >= -100 && b <= 100)) fail('logit_bias', `logit_bias[${key}] must be a number in [-100, 100]`);
      if (b !== 0) bias.push({ token, bias: b });
    }
    if (bias.length > 0) params.logitBias = bias.sort((a, b) => a.token - b.token);
  }

  if (present(input.min_p)) {
    const v = input.min_p;
    if (typeof v !== 'number' || !(v >= 0 && v <= 1)) fail('min_p', 'min_p must be a number in [0, 1]');
    if (v > 0) params.minP = v;
  }

  if (present(input.min_tokens)) {
    const v = input.min_tokens;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > maxTokens) fail('min_tokens', `min_tokens must be an integer in [0, max_tokens = ${maxTokens}]`);
    if (v > 0) params.minTokens = v;
  }

  if (present(input.ignore_eos)) {
    if (typeof input.ignore_eos !== 'boolean') fail('ignore_eos', 'ignore_eos must be a boolean');
    if (input.ignore_eos) params.ignoreEos = true;
  }

  if (present(input.stop_token_ids)) {
    const v = input.stop_token_ids;
    if (!Array.isArray(v) || !v.every(tokenId)) fail('stop_token_ids', `stop_token_ids must be an array of ${idRange.replace(/^a /, '')}s`);
    if (v.length > 0) params.stopTokenIds = [...new Set(v as number[])];
  }

  if (present(input.logprobs)) {
    const name = limits?.logprobsParam ?? 'logprobs';
    const max = limits?.maxLogprobs ?? DEFAULT_MAX_LOGPROBS;
    const v = input.logprobs;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) fail(name, `${name} must be an integer in [0, ${max}]`);
    params.logprobs = v;
  }

  return params;
}

/** Whether a request's parameters change logits before sampling (penalties, biases, a min_tokens ban). */
export function adjustsLogits(p: SamplingParams): boolean {
  return p.presencePenalty !== undefined || p.frequencyPenalty !== undefined || p.repetitionPenalty !== undefined || p.logitBias !== undefined || p.minTokens !== undefined;
}
