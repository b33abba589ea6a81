import type { FastifyInstance } from 'fastify';
import { createRequire } from 'node:module';
import { InvalidArgumentError } from '../errors.js';
import type { LoadedModel } from '../models/modeldir.js';
import { renderChat, type ChatMessage } from './chat.js';

const pkg = createRequire(import.meta.url)('../../package.json') as { version: string };

/** marginal's version, as `/version` reports it. */
export const VERSION = pkg.version;

function bad(param: string, message: string): never {
  throw Object.assign(new InvalidArgumentError(message), { param });
}

const tokenizeBody = {
  type: 'object',
  properties: {
    model: { type: 'string' },
    prompt: { type: 'string' },
    messages: { type: 'array', minItems: 1, items: { type: 'object', required: ['role'] } },
    add_special_tokens: { type: 'boolean' },
    add_generation_prompt: { type: 'boolean' },
    return_token_strs: { type: 'boolean' },
  },
  additionalProperties: false,
} as const;

const detokenizeBody = {
  type: 'object',
  required: ['tokens'],
  properties: { model: { type: 'string' }, tokens: { type: 'array', items: { type: 'integer' } } },
  additionalProperties: false,
} as const;

/**
 * vLLM's utility routes: `/tokenize` (a prompt, or chat messages through the chat template),
 * `/detokenize`, `/version`, and OpenAI's `GET /v1/models/{id}`. `describe` is the model card
 * that `/v1/models` lists.
 */
export function registerUtilityRoutes(app: FastifyInstance, model: LoadedModel, maxModelLen: number, describe: () => Record<string, unknown>): void {
  const checkModel = (name: unknown) => {
    if (name !== undefined && name !== model.name) {
      throw Object.assign(new InvalidArgumentError(`The model \`${String(name)}\` does not exist. This server serves \`${model.name}\`.`), { statusCode: 404, code: 'MARGINAL_MODEL_NOT_FOUND', param: 'model' });
    }
  };

  app.get('/v1/models/:id', async (req) => {
    const id = (req.params as { id: string }).id;
    checkModel(id);
    return describe();
  });

  app.get('/version', async () => ({ version: VERSION }));

  app.post('/tokenize', { schema: { body: tokenizeBody } }, async (req) => {
    const body = req.body as { model?: string; prompt?: string; messages?: ChatMessage[]; add_special_tokens?: boolean; add_generation_prompt?: boolean; return_token_strs?: boolean };
    checkModel(body.model);
    let tokens: number[];
    if (body.messages !== undefined) {
      if (body.prompt !== undefined) bad('prompt', 'send either prompt or messages, not both');
      if (body.add_generation_prompt === false) bad('add_generation_prompt', 'add_generation_prompt: false is not supported');
      const rendered = renderChat(model, body.messages);
      tokens = model.tokenizer.encode(rendered.prompt, { bos: (body.add_special_tokens ?? model.addBos) && model.addBos && !rendered.hasBos });
    } else {
      if (body.prompt === undefined) bad('prompt', 'prompt or messages is required');
      tokens = model.tokenizer.encode(body.prompt, { bos: (body.add_special_tokens ?? true) && model.addBos });
    }
    const out: Record<string, unknown> = { count: tokens.length, max_model_len: maxModelLen, tokens };
    if (body.return_token_strs === true) out.token_strs = tokens.map((t, i) => model.tokenizer.decode(i > 0 ? [tokens[i - 1]!, t] : [t]).slice(i > 0 ? model.tokenizer.decode([tokens[i - 1]!]).length : 0));
    return out;
  });

  app.post('/detokenize', { schema: { body: detokenizeBody } }, async (req) => {
    const body = req.body as { model?: string; tokens: number[] };
    checkModel(body.model);
    for (const t of body.tokens) if (t < 0 || t >= model.vocabSize) bad('tokens', `token id ${t} is outside the vocabulary (0..${model.vocabSize - 1})`);
    return { prompt: model.tokenizer.decode(body.tokens) };
  });
}
