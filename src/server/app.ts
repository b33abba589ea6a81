import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { BudgetExhaustedError, InvalidArgumentError, isMarginalError, RequestRejectedError } from '../errors.js';
import type { Completion, Generator, Rejected } from '../serving/generator.js';
import { validateSamplingParams, type SamplingParams } from '../engine/sampling.js';
import { describeModel, type LoadedModel } from '../models/modeldir.js';
import type { Bill } from '../economy/ledger.js';
import type { Quote } from '../scheduler/request.js';
import { renderChat, type ChatMessage } from './chat.js';
import { EngineLoop } from '../serving/loop.js';
import { ServerMetrics } from './metrics.js';
import { chatBody, completionBody, type ChatBody, type CommonBody, type CompletionBody } from './schemas.js';
import { quoteHeaders, rejectionBody } from './quote.js';
import { openDirectory, type Tenant, type TenantDirectory } from './tenants.js';

export interface ServerDeps {
  model: LoadedModel;
  generator: Generator;
  tenants?: TenantDirectory;
  metrics?: ServerMetrics;
  /** Tokenizes off the main thread where it pays (TokenizePool.encode); default inline. */
  tokenize?: (text: string, bos: boolean) => Promise<number[]>;
  logger?: boolean;
  /** Largest request body accepted, bytes (413 beyond). */
  bodyLimit?: number;
  /** Compute cost per token for the welfare metric. */
  basePrice?: number;
}

export interface Server {
  app: FastifyInstance;
  loop: EngineLoop;
  metrics: ServerMetrics;
  /** Stop accepting, finish what is running, resolve when drained. */
  drain(): Promise<void>;
}

type ErrorType = 'invalid_request_error' | 'authentication_error' | 'not_found_error' | 'rate_limit_error' | 'insufficient_quota' | 'server_error';

function errorBody(message: string, type: ErrorType, param: string | null, code: string | null) {
  return { error: { message, type, param, code } };
}

function send(reply: FastifyReply, status: number, message: string, type: ErrorType, param: string | null, code: string | null) {
  return reply.code(status).send(errorBody(message, type, param, code));
}

/** An HTTP-ready error: status and OpenAI body, from anything a handler can throw. */
function describeError(e: unknown): { status: number; body: ReturnType<typeof errorBody>; headers: Record<string, string> } {
  const err = e as Error & { statusCode?: number; code?: string; param?: string; quote?: Quote; validation?: unknown; validationContext?: string };
  const quote = err.quote;
  if (quote !== undefined && (e instanceof RequestRejectedError || e instanceof BudgetExhaustedError)) {
    return { status: e.statusCode as number, body: rejectionBody(err.message, quote) as unknown as ReturnType<typeof errorBody>, headers: quoteHeaders(quote) };
  }
  if (err.validation) {
    const param = (err.message.match(/^body\/([\w/]+)/)?.[1] ?? null)?.replace(/\//g, '.') ?? null;
    return { status: 400, body: errorBody(err.message, 'invalid_request_error', param, 'invalid_request'), headers: {} };
  }
  if (isMarginalError(e)) {
    const status = err.statusCode ?? 500;
    const code = (err.code as string).replace(/^MARGINAL_/, '').toLowerCase();
    return { status, body: errorBody(err.message, status === 404 ? 'not_found_error' : status < 500 ? 'invalid_request_error' : 'server_error', err.param ?? null, code), headers: {} };
  }
  if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
    // fastify's own: bad JSON, body too large, wrong content type...
    return { status: err.statusCode, body: errorBody(err.message, 'invalid_request_error', null, err.code ?? null), headers: {} };
  }
  return { status: 500, body: errorBody('internal error', 'server_error', null, null), headers: {} };
}

function usage(c: Completion) {
  return {
    prompt_tokens: c.promptTokens,
    completion_tokens: c.tokens.length,
    total_tokens: c.promptTokens + c.tokens.length,
    prompt_tokens_details: { cached_tokens: c.cachedTokens },
  };
}

/** The OpenAI-compatible HTTP surface over one model and its engine loop. */
export function buildServer(deps: ServerDeps): Server {
  const { model, generator } = deps;
  const sched = generator.scheduler;
  const info = generator.engine.info;
  const tenants = deps.tenants ?? openDirectory(undefined);
  const metrics = deps.metrics ?? new ServerMetrics({ modelName: model.name, blockSize: info.blockSize, numBlocks: info.totalBlocks, numCpuBlocks: info.hostBlocks, maxSequences: info.maxSequences, maxContext: info.maxContext });
  const tokenize = deps.tokenize ?? (async (text: string, bos: boolean) => model.tokenizer.encode(text, { bos }));
  const app = Fastify({
    logger: deps.logger ?? false,
    bodyLimit: deps.bodyLimit ?? 2 * 1024 * 1024,
    // OpenAI semantics: "10" is not a number of tokens. No coercion, no silent defaults.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } },
    return503OnClosing: true,
  });
  // JSON only: a text/plain body is a client bug to report (415), not a string to validate.
  app.removeContentTypeParser('text/plain');
  const loop = new EngineLoop(generator, (e) => app.log.error(e), () => observeStep());
  const created = Math.floor(Date.now() / 1000);
  let draining = false;

  // --- metrics wiring: per step from the scheduler's counters, per token and request from the generator.
  const last = { prompt: 0, preemptions: 0, swaps: 0, kvBytes: 0, blockCopies: 0 };
  const snapshot = () =>
    metrics.step({ running: sched.running.length, waiting: sched.waiting, kvUsage: sched.blocks.heldBlocks / sched.blocks.totalBlocks, priceToken: sched.prices.token, priceKvBlockSecond: sched.prices.kv });
  const observeStep = () => {
    const c = sched.counters;
    snapshot();
    if (c.prefillTokens > last.prompt) metrics.promptTokens(c.prefillTokens - last.prompt);
    last.prompt = c.prefillTokens;
    if (c.preemptions > last.preemptions) metrics.preempted(c.preemptions - last.preemptions - (c.swaps - last.swaps), false);
    if (c.swaps > last.swaps) metrics.preempted(c.swaps - last.swaps, true);
    last.preemptions = c.preemptions;
    last.swaps = c.swaps;
    metrics.kvCopies(generator.totals.kvBytesCopied - last.kvBytes, c.blockCopies - last.blockCopies);
    last.kvBytes = generator.totals.kvBytesCopied;
    last.blockCopies = c.blockCopies;
  };
  generator.setObserver({
    onToken: (r, now) => {
      metrics.generationTokens(1);
      if (r.generated === 1) metrics.firstToken(now - r.spec.arrival);
      else if (!Number.isNaN(r.prevTokenAt)) metrics.interToken(now - r.prevTokenAt);
      r.prevTokenAt = now;
    },
    onFinish: (r, now) => {
      if (r.outcome === 'rejected') {
        metrics.rejected(r.quote?.reason ?? 'price_above_bid');
        return;
      }
      metrics.prefixQuery(r.promptLength, r.cachedTokens);
      const e2e = now - r.spec.arrival;
      const ttft = Number.isNaN(r.firstTokenAt) ? null : r.firstTokenAt - r.spec.arrival;
      const realized = r.valueRealized();
      metrics.finished({
        finishReason: r.finishReason === 'length' ? 'length' : r.finishReason === 'abort' ? 'abort' : 'stop',
        e2eSeconds: e2e,
        queueSeconds: Number.isNaN(r.admittedAt) ? e2e : Math.max(0, r.admittedAt - r.spec.arrival),
        promptTokens: r.promptLength,
        outputTokens: r.generated,
        tpotSeconds: ttft !== null && r.generated > 1 ? (e2e - ttft) / (r.generated - 1) : null,
        realizedValue: realized,
        computeCost: (r.promptLength - r.cachedTokens + r.generated + r.recomputed) * (deps.basePrice ?? 2e-4),
        billTotal: r.finalBill?.total ?? 0,
      });
      const t = sched.ledger?.account(r.tenant);
      if (t && Number.isFinite(t.budget)) metrics.budget(r.tenant, t.budget - t.spent - t.escrowed);
    },
  });

  app.setErrorHandler((err, _req, reply) => {
    const d = describeError(err);
    if (d.status >= 500) app.log.error(err);
    return reply.code(d.status).headers(d.headers).send(d.body);
  });
  app.setNotFoundHandler((req, reply) => send(reply, 404, `no route ${req.method} ${req.url}`, 'not_found_error', null, 'route_not_found'));

  // Prices on every response, so a client can see congestion before it is turned away. A
  // rejection already carries the prices of its quote: the same numbers, never overwritten.
  app.addHook('onSend', async (_req, reply, payload) => {
    if (!reply.hasHeader('x-marginal-price-token')) reply.header('x-marginal-price-token', String(sched.prices.token));
    if (!reply.hasHeader('x-marginal-price-kv-block-second')) reply.header('x-marginal-price-kv-block-second', String(sched.prices.kv));
    return payload;
  });

  const authenticate = (req: FastifyRequest): Tenant => {
    const header = req.headers.authorization;
    const key = typeof header === 'string' && /^Bearer\s+/i.test(header) ? header.replace(/^Bearer\s+/i, '').trim() : undefined;
    const t = tenants.byKey(key);
    if (t === undefined) {
      throw Object.assign(new InvalidArgumentError(key === undefined ? 'missing API key: send Authorization: Bearer <key>' : 'invalid API key'), { statusCode: 401, code: 'MARGINAL_INVALID_API_KEY' });
    }
    return t;
  };

  app.get('/health', async (_req, reply) => {
    if (draining) return reply.code(503).send({ status: 'draining' });
    // A dead engine worker means nothing can be served: say so to the load balancer.
    if ((generator.engine as { alive?: boolean }).alive === false) return reply.code(503).send({ status: 'engine down' });
    return { status: 'ok' };
  });

  app.get('/metrics', async (_req, reply) => {
    // Gauges as of now: an idle server runs no steps, yet a disconnect may just have freed memory.
    snapshot();
    return reply.header('content-type', metrics.contentType).send(await metrics.text());
  });

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [
      {
        id: model.name,
        object: 'model',
        created,
        owned_by: 'marginal',
        max_model_len: info.maxContext,
        synthetic: model.synthetic,
        description: describeModel(model),
        policy: sched.policyName,
      },
    ],
  }));

  /** Checks shared by both routes: model, unsupported options; returns sampling parameters. */
  const common = (body: CommonBody, defaultMaxTokens: (promptTokens: number) => number, promptTokens: number, extraStop: string[]): SamplingParams => {
    if (body.model !== undefined && body.model !== model.name) {
      throw Object.assign(new InvalidArgumentError(`The model \`${body.model}\` does not exist. This server serves \`${model.name}\`.`), { statusCode: 404, code: 'MARGINAL_MODEL_NOT_FOUND', param: 'model' });
    }
    const unsupported = (cond: boolean, param: string, what: string) => {
      if (cond) throw Object.assign(new InvalidArgumentError(`${param}: ${what}`), { param });
    };
    unsupported(body.n !== undefined && body.n !== null && body.n !== 1, 'n', 'only n = 1 is supported');
    unsupported(!!body.presence_penalty, 'presence_penalty', 'penalties are not supported (send 0 or omit)');
    unsupported(!!body.frequency_penalty, 'frequency_penalty', 'penalties are not supported (send 0 or omit)');
    unsupported(body.logit_bias != null && Object.keys(body.logit_bias).length > 0, 'logit_bias', 'logit_bias is not supported');
    const maxTokens = body.max_tokens ?? (body as ChatBody).max_completion_tokens ?? defaultMaxTokens(promptTokens);
    const sampling = validateSamplingParams(
      { temperature: body.temperature ?? undefined, top_p: body.top_p ?? undefined, top_k: body.top_k ?? undefined, seed: body.seed ?? undefined, max_tokens: maxTokens, stop: body.stop ?? undefined },
      { maxTokensCap: info.maxContext },
    );
    if (extraStop.length > 0) sampling.stop = [...sampling.stop, ...extraStop];
    return sampling;
  };

  const economics = (body: CommonBody, tenant: Tenant) => ({
    tenant: tenant.name,
    ...(body.value !== undefined ? { value: body.value } : {}),
    ...(body.bid !== undefined ? { bid: body.bid } : {}),
    ...(body.slo !== undefined ? { slo: { ...(body.slo.ttft_ms !== undefined ? { ttftMs: body.slo.ttft_ms } : {}), ...(body.slo.tpot_ms !== undefined ? { tpotMs: body.slo.tpot_ms } : {}) } } : {}),
    ...(body.deadline_ms !== undefined ? { deadlineMs: body.deadline_ms } : {}),
    ...(body.priority !== undefined ? { priority: body.priority } : {}),
  });

  /** Runs one generation and answers it, as JSON or as server-sent events. */
  const serve = async (req: FastifyRequest, reply: FastifyReply, kind: 'completion' | 'chat', prompt: number[], sampling: SamplingParams, body: CommonBody, tenant: Tenant) => {
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`;
    const object = kind === 'chat' ? 'chat.completion' : 'text_completion';
    const createdAt = Math.floor(Date.now() / 1000);
    const abort = new AbortController();
    const res = reply.raw;
    // The client leaving before the answer is complete aborts the request: its KV blocks are freed within a step.
    res.on('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    // The client may have gone while the prompt was being tokenized.
    if (res.destroyed || req.raw.socket?.destroyed) abort.abort();

    if (body.stream !== true) {
      const pending = generator.submit({ prompt, sampling, signal: abort.signal, endpoint: kind, ...economics(body, tenant) });
      loop.wake();
      const c = await pending;
      const choice =
        kind === 'chat'
          ? { index: 0, message: { role: 'assistant', content: c.text }, logprobs: null, finish_reason: c.finishReason }
          : { index: 0, text: c.text, logprobs: null, finish_reason: c.finishReason };
      return reply.send({ id, object, created: createdAt, model: model.name, choices: [choice], usage: usage(c), bill: c.bill ?? null, outcome: c.outcome });
    }

    // Streaming: headers wait for the first token (or the verdict), so a request turned away
    // still gets a real 429 with its quote rather than an error inside a 200 stream.
    reply.hijack();
    let opened = false;
    const open = () => {
      if (opened) return;
      opened = true;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache',
        connection: 'keep-alive',
        'x-marginal-price-token': String(sched.prices.token),
        'x-marginal-price-kv-block-second': String(sched.prices.kv),
      });
      if (kind === 'chat') write({ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null });
    };
    const chunkObject = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
    const write = (choice: object, extra: object = {}) => {
      if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify({ id, object: chunkObject, created: createdAt, model: model.name, choices: [choice], ...extra })}\n\n`);
    };
    const delta = (text: string, finish: string | null) =>
      kind === 'chat' ? { index: 0, delta: text.length > 0 ? { content: text } : {}, logprobs: null, finish_reason: finish } : { index: 0, text, logprobs: null, finish_reason: finish };
    try {
      const pending = generator.submit({
        prompt,
        sampling,
        signal: abort.signal,
        endpoint: kind,
        ...economics(body, tenant),
        onText: (text) => {
          open();
          write(delta(text, null));
        },
      });
      loop.wake();
      const c = await pending;
      open();
      write(delta('', c.finishReason), { bill: c.bill ?? null, outcome: c.outcome });
      if (body.stream_options?.include_usage) {
        if (!res.writableEnded) res.write(`data: ${JSON.stringify({ id, object: chunkObject, created: createdAt, model: model.name, choices: [], usage: usage(c), bill: c.bill ?? null, outcome: c.outcome })}\n\n`);
      }
      if (!res.writableEnded) res.end('data: [DONE]\n\n');
    } catch (e) {
      const d = describeError(e);
      if (d.status >= 500) app.log.error(e);
      if (!opened) {
        if (!res.headersSent && !res.destroyed) {
          res.writeHead(d.status, { 'content-type': 'application/json; charset=utf-8', ...d.headers });
          res.end(JSON.stringify(d.body));
        }
      } else if (!res.writableEnded) {
        res.write(`data: ${JSON.stringify(d.body)}\n\n`);
        res.end('data: [DONE]\n\n');
      }
    }
    return reply;
  };

  app.post('/v1/completions', { schema: { body: completionBody } }, async (req, reply) => {
    if (draining) return send(reply, 503, 'the server is shutting down', 'server_error', null, 'draining');
    const tenant = authenticate(req);
    const body = req.body as CompletionBody;
    const unsupported = (cond: boolean, param: string, what: string) => {
      if (cond) throw Object.assign(new InvalidArgumentError(`${param}: ${what}`), { param });
    };
    unsupported(body.echo === true, 'echo', 'echo is not supported');
    unsupported(body.logprobs != null && body.logprobs !== 0, 'logprobs', 'logprobs are not supported');
    unsupported(body.best_of != null && body.best_of !== 1, 'best_of', 'only best_of = 1 is supported');
    unsupported(body.suffix != null && body.suffix !== '', 'suffix', 'suffix is not supported');
    const p = body.prompt;
    let prompt: number[];
    if (typeof p === 'string') prompt = await tokenize(p, model.addBos);
    else if (p.length !== 1 && (typeof p[0] === 'string' || Array.isArray(p[0]))) {
      throw Object.assign(new InvalidArgumentError('prompt: one prompt per request (send several requests)'), { param: 'prompt' });
    } else if (typeof p[0] === 'string') prompt = await tokenize(p[0], model.addBos);
    else if (Array.isArray(p[0])) prompt = (p as number[][])[0] as number[];
    else prompt = p as number[];
    checkTokens(prompt, model.vocabSize);
    const sampling = common(body, () => 16, prompt.length, []);
    sched.checkFits(prompt.length, sampling.maxTokens);
    return serve(req, reply, 'completion', prompt, sampling, body, tenant);
  });

  app.post('/v1/chat/completions', { schema: { body: chatBody } }, async (req, reply) => {
    if (draining) return send(reply, 503, 'the server is shutting down', 'server_error', null, 'draining');
    const tenant = authenticate(req);
    const body = req.body as ChatBody;
    const unsupported = (cond: boolean, param: string, what: string) => {
      if (cond) throw Object.assign(new InvalidArgumentError(`${param}: ${what}`), { param });
    };
    unsupported(body.logprobs === true, 'logprobs', 'logprobs are not supported');
    unsupported(Array.isArray(body.tools) && body.tools.length > 0, 'tools', 'tool calling is not supported');
    unsupported(body.tool_choice !== undefined && body.tool_choice !== null && body.tool_choice !== 'none', 'tool_choice', 'tool calling is not supported');
    unsupported(body.response_format != null && body.response_format.type !== undefined && body.response_format.type !== 'text', 'response_format', 'only {"type": "text"} is supported');
    const rendered = renderChat(model, body.messages as ChatMessage[]);
    const prompt = await tokenize(rendered.prompt, model.addBos && !rendered.hasBos);
    const ctx = info.maxContext;
    // OpenAI chat: without max_tokens the answer may use the rest of the context.
    const sampling = common(body, (n) => Math.max(1, ctx - n), prompt.length, rendered.stop);
    sched.checkFits(prompt.length, sampling.maxTokens);
    return serve(req, reply, 'chat', prompt, sampling, body, tenant);
  });

  const drain = async () => {
    draining = true;
    const closed = app.close();
    await loop.drain();
    await closed;
  };

  return { app, loop, metrics, drain };
}

function checkTokens(prompt: number[], vocab: number): void {
  for (const t of prompt) {
    if (!Number.isInteger(t) || t < 0 || t >= vocab) {
      throw Object.assign(new InvalidArgumentError(`prompt: token id ${t} is outside the vocabulary (0..${vocab - 1})`), { param: 'prompt' });
    }
  }
}


export type { Bill, Rejected, ServerResponse };
