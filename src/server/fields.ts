import { InvalidArgumentError } from '../errors.js';

/**
 * Every request field the OpenAI and vLLM APIs define for completions and chat, and what this
 * server does with it. A field it implements is validated and used; a field it does not is
 * accepted only at its neutral value and otherwise answered with a 400 naming it; a field
 * neither API defines is a 400 too ("Unrecognized request argument", as OpenAI words it).
 * Nothing is silently ignored except pure metadata (`user`, `metadata`, …) that changes no output.
 */

/** Fields read by the handlers (schemas.ts types them). */
const SHARED_IMPLEMENTED = [
  'model', 'max_tokens', 'temperature', 'top_p', 'top_k', 'n', 'seed', 'stop', 'stream', 'stream_options',
  'presence_penalty', 'frequency_penalty', 'repetition_penalty', 'logit_bias', 'min_p', 'min_tokens', 'ignore_eos',
  'stop_token_ids', 'response_format', 'guided_json', 'guided_regex', 'guided_choice', 'guided_grammar',
  'guided_decoding_backend', 'structured_outputs',
  // marginal's economics
  'bid', 'value', 'slo', 'deadline_ms', 'priority',
] as const;

/** Metadata that changes no output: accepted, recorded nowhere. */
const METADATA = ['user', 'metadata', 'safety_identifier', 'prompt_cache_key', 'request_id', 'service_tier', 'store'] as const;

const COMPLETION_ONLY = ['prompt', 'echo', 'logprobs', 'best_of', 'suffix', 'add_special_tokens'] as const;
const CHAT_ONLY = ['messages', 'max_completion_tokens', 'logprobs', 'top_logprobs', 'tools', 'tool_choice', 'parallel_tool_calls'] as const;

/**
 * Defined by OpenAI or vLLM, not implemented here: the neutral value each may carry (undefined
 * and null always pass). A function decides for values with several neutral spellings.
 */
const UNSUPPORTED: Record<string, (v: unknown) => boolean> = {
  // OpenAI chat
  audio: () => false,
  modalities: (v) => Array.isArray(v) && v.every((m) => m === 'text'),
  prediction: () => false,
  reasoning_effort: () => false,
  verbosity: () => false,
  web_search_options: () => false,
  functions: (v) => Array.isArray(v) && v.length === 0,
  function_call: (v) => v === 'none',
  // vLLM sampling and request extras
  use_beam_search: (v) => v === false,
  length_penalty: (v) => v === 1,
  early_stopping: (v) => v === false,
  include_stop_str_in_output: (v) => v === false,
  skip_special_tokens: (v) => v === true,
  spaces_between_special_tokens: (v) => v === true,
  truncate_prompt_tokens: () => false,
  allowed_token_ids: () => false,
  bad_words: (v) => Array.isArray(v) && v.length === 0,
  prompt_logprobs: () => false,
  logits_processors: () => false,
  return_tokens_as_token_ids: (v) => v === false,
  return_token_ids: (v) => v === false,
  guided_whitespace_pattern: () => false,
  structural_tag: () => false,
  continue_final_message: (v) => v === false,
  add_generation_prompt: (v) => v === true,
  documents: () => false,
  chat_template: () => false,
  chat_template_kwargs: (v) => typeof v === 'object' && v !== null && Object.keys(v).length === 0,
  mm_processor_kwargs: () => false,
  cache_salt: () => false,
  kv_transfer_params: () => false,
  vllm_xargs: () => false,
};

const completionKnown = new Set<string>([...SHARED_IMPLEMENTED, ...METADATA, ...COMPLETION_ONLY]);
const chatKnown = new Set<string>([...SHARED_IMPLEMENTED, ...METADATA, ...CHAT_ONLY]);

function fail(param: string, message: string): never {
  throw Object.assign(new InvalidArgumentError(message), { param });
}

/** Throws a 400 naming the first field of `body` this server will not honour. */
export function checkFields(body: Record<string, unknown>, kind: 'completion' | 'chat'): void {
  const known = kind === 'chat' ? chatKnown : completionKnown;
  for (const [name, value] of Object.entries(body)) {
    if (known.has(name)) continue;
    const neutral = UNSUPPORTED[name];
    if (neutral !== undefined) {
      if (value === undefined || value === null || neutral(value)) continue;
      fail(name, `${name} is not supported by this server`);
    }
    if (kind === 'chat' && name === 'echo') {
      if (value === false || value === null) continue;
      fail(name, 'echo is not supported for chat completions');
    }
    fail(name, `Unrecognized request argument supplied: ${name}`);
  }
  if (body.store === true) fail('store', 'store is not supported (completions are not stored)');
  if (body.add_special_tokens !== undefined && body.add_special_tokens !== null && typeof body.add_special_tokens !== 'boolean') fail('add_special_tokens', 'add_special_tokens must be a boolean');
  if (body.parallel_tool_calls !== undefined && body.parallel_tool_calls !== null && typeof body.parallel_tool_calls !== 'boolean') fail('parallel_tool_calls', 'parallel_tool_calls must be a boolean');
}
