import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { isMarginalError } from '../errors.js';
import type { Generator } from '../engine/generator.js';
import { validateSamplingParams, type SamplingInput } from '../engine/sampling.js';
import { describeModel, type LoadedModel } from '../models/modeldir.js';
import { EngineLoop } from './loop.js';

export interface ServerDeps {
  model: LoadedModel;
  generator: Generator;
  logger?: boolean;
}

function openAiError(reply: FastifyReply, status: number, message: string, type: string, param: string | null, code: string | null) {
  return reply.code(status).send({ error: { message, type, param, code } });
}

/** The OpenAI-compatible HTTP surface over one model. */
export function buildServer(deps: ServerDeps): { app: FastifyInstance; loop: EngineLoop } {
  const { model, generator } = deps;
  const app = Fastify({ logger: deps.logger ?? false, bodyLimit: 4 * 1024 * 1024 });
  const loop = new EngineLoop(generator, (e) => app.log.error(e));
  const created = Math.floor(Date.now() / 1000);

  app.setErrorHandler((err, _req, reply) => {
    const e = err as Error & { statusCode?: number; code?: string; param?: string; validation?: unknown };
    if (e.validation) return openAiError(reply, 400, e.message, 'invalid_request_error', null, 'invalid_request');
    if (isMarginalError(e)) {
      const status = e.statusCode ?? 500;
      return openAiError(reply, status, e.message, status < 500 ? 'invalid_request_error' : 'server_error', e.param ?? null, e.code ?? null);
    }
    const status = e.statusCode && e.statusCode >= 400 && e.statusCode < 500 ? e.statusCode : 500;
    return openAiError(reply, status, status === 500 ? 'internal error' : e.message, status < 500 ? 'invalid_request_error' : 'server_error', null, e.code ?? null);
  });

  app.get('/health', async () => ({ status: 'ok' }));

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [
      {
        id: model.name,
        object: 'model',
        created,
        owned_by: 'marginal',
        max_model_len: generator.engine.info.maxContext,
        synthetic: model.synthetic,
        description: describeModel(model),
      },
    ],
  }));

  const completionBody = {
    type: 'object',
    required: ['prompt'],
    properties: {
      model: { type: 'string' },
      prompt: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'integer' }, minItems: 1 }] },
      stream: { type: 'boolean' },
    },
  } as const;

  app.post('/v1/completions', { schema: { body: completionBody } }, async (req, reply) => {
    const body = req.body as Record<string, unknown> & { prompt: string | number[]; model?: string; stream?: boolean };
    if (body.model !== undefined && body.model !== model.name) {
      return openAiError(reply, 404, `The model \`${body.model}\` does not exist.`, 'invalid_request_error', 'model', 'model_not_found');
    }
    const sampling = validateSamplingParams(body as SamplingInput, { maxTokensCap: generator.engine.info.maxContext });
    const id = `cmpl-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
    if (body.stream === true) {
      reply.hijack();
      const res = reply.raw;
      let opened = false;
      const open = () => {
        if (opened) return;
        opened = true;
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
      };
      const send = (text: string, finish: string | null) =>
        res.write(`data: ${JSON.stringify({ id, object: 'text_completion', created: Math.floor(Date.now() / 1000), model: model.name, choices: [{ index: 0, text, logprobs: null, finish_reason: finish }] })}\n\n`);
      try {
        const done = generator.submit({
          prompt: body.prompt,
          sampling,
          onText: (delta) => {
            open();
            send(delta, null);
          },
        });
        loop.wake();
        const c = await done;
        open();
        send('', c.finishReason);
        res.end('data: [DONE]\n\n');
      } catch (e) {
        if (!opened) {
          const err = e as Error & { statusCode?: number; code?: string };
          const status = isMarginalError(e) ? (err.statusCode ?? 500) : 500;
          res.writeHead(status, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: { message: err.message, type: status < 500 ? 'invalid_request_error' : 'server_error', param: null, code: err.code ?? null } }));
        } else {
          res.end(`data: ${JSON.stringify({ error: { message: (e as Error).message, type: 'server_error' } })}\n\n`);
        }
      }
      return reply;
    }
    const done = generator.submit({ prompt: body.prompt, sampling });
    loop.wake();
    const c = await done;
    return {
      id,
      object: 'text_completion',
      created: Math.floor(Date.now() / 1000),
      model: model.name,
      choices: [{ index: 0, text: c.text, logprobs: null, finish_reason: c.finishReason }],
      usage: { prompt_tokens: c.promptTokens, completion_tokens: c.tokens.length, total_tokens: c.promptTokens + c.tokens.length },
    };
  });

  return { app, loop };
}
