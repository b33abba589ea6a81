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
