/**
 * JSON schemas of the request bodies, validated by fastify (ajv) before a handler runs. They
 * follow OpenAI's API: unknown fields are tolerated (clients send newer fields; vLLM ignores
 * them too), known ones must have the right type. Value checks that depend on the model
 * (context length) or that OpenAI words specially (sampling ranges) happen in the handlers.
 */

const economics = {
  bid: { type: 'number', minimum: 0, description: 'value per output token' },
  value: { type: 'number', minimum: 0, description: 'value of the whole completion' },
  slo: {
    type: 'object',
    additionalProperties: false,
    properties: {
      ttft_ms: { type: 'number', exclusiveMinimum: 0 },
      tpot_ms: { type: 'number', exclusiveMinimum: 0 },
    },
  },
  deadline_ms: { type: 'number', exclusiveMinimum: 0 },
  priority: { type: 'integer', minimum: -1000000, maximum: 1000000 },
} as const;

const sampling = {
  model: { type: 'string', maxLength: 256 },
  max_tokens: { type: ['integer', 'null'] },
  temperature: { type: ['number', 'null'] },
  top_p: { type: ['number', 'null'] },
  top_k: { type: ['integer', 'null'] },
  n: { type: ['integer', 'null'] },
  seed: { type: ['integer', 'null'] },
  stop: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }, { type: 'null' }] },
  stream: { type: ['boolean', 'null'] },
  stream_options: {
    anyOf: [{ type: 'null' }, { type: 'object', properties: { include_usage: { type: 'boolean' } } }],
  },
  presence_penalty: { type: ['number', 'null'] },
  frequency_penalty: { type: ['number', 'null'] },
  logit_bias: { anyOf: [{ type: 'null' }, { type: 'object' }] },
  repetition_penalty: { type: ['number', 'null'] },
  min_p: { type: ['number', 'null'] },
  min_tokens: { type: ['integer', 'null'] },
  ignore_eos: { type: ['boolean', 'null'] },
  stop_token_ids: { anyOf: [{ type: 'null' }, { type: 'array', items: { type: 'integer' } }] },
  user: { type: 'string', maxLength: 512 },
  ...economics,
} as const;

export const completionBody = {
  type: 'object',
  required: ['prompt'],
  properties: {
    ...sampling,
    prompt: {
      anyOf: [
        { type: 'string' },
        { type: 'array', minItems: 1, items: { type: 'string' } },
        { type: 'array', minItems: 1, items: { type: 'integer' } },
        { type: 'array', minItems: 1, items: { type: 'array', minItems: 1, items: { type: 'integer' } } },
      ],
    },
    echo: { type: ['boolean', 'null'] },
    logprobs: { type: ['integer', 'null'] },
    best_of: { type: ['integer', 'null'] },
    suffix: { type: ['string', 'null'] },
  },
} as const;

const contentPart = {
  type: 'object',
  required: ['type'],
  properties: { type: { type: 'string' }, text: { type: 'string' } },
} as const;

export const chatBody = {
  type: 'object',
  required: ['messages'],
  properties: {
    ...sampling,
    max_completion_tokens: { type: ['integer', 'null'] },
    messages: {
      type: 'array',
      minItems: 1,
      maxItems: 4096,
      items: {
        type: 'object',
        required: ['role'],
        properties: {
          role: { enum: ['system', 'user', 'assistant', 'developer', 'tool'] },
          content: { anyOf: [{ type: 'string' }, { type: 'null' }, { type: 'array', items: contentPart }] },
          name: { type: 'string', maxLength: 256 },
        },
      },
    },
    logprobs: { type: ['boolean', 'null'] },
    top_logprobs: { type: ['integer', 'null'] },
    tools: { type: ['array', 'null'] },
    tool_choice: {},
    response_format: { anyOf: [{ type: 'null' }, { type: 'object', properties: { type: { type: 'string' } } }] },
  },
} as const;

export interface EconomicsFields {
  bid?: number;
  value?: number;
  slo?: { ttft_ms?: number; tpot_ms?: number };
  deadline_ms?: number;
  priority?: number;
}

export interface CommonBody extends EconomicsFields {
  model?: string;
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  n?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  logit_bias?: Record<string, unknown> | null;
  repetition_penalty?: number | null;
  min_p?: number | null;
  min_tokens?: number | null;
  ignore_eos?: boolean | null;
  stop_token_ids?: number[] | null;
}

export interface CompletionBody extends CommonBody {
  prompt: string | string[] | number[] | number[][];
  echo?: boolean | null;
  logprobs?: number | null;
  best_of?: number | null;
  suffix?: string | null;
}

export interface ChatBody extends CommonBody {
  messages: { role: 'system' | 'user' | 'assistant' | 'developer' | 'tool'; content?: string | null | { type: string; text?: string }[]; name?: string }[];
  max_completion_tokens?: number | null;
  logprobs?: boolean | null;
  top_logprobs?: number | null;
  tools?: unknown[] | null;
  tool_choice?: unknown;
  response_format?: { type?: string } | null;
}
