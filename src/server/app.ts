import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { BodyTooLargeError, DrainingError, InvalidApiKeyError, InvalidArgumentError, RouteNotFoundError, ShutdownError, UnknownModelError } from '../errors.js';
import type { Completion, Generator, Rejected } from '../engine/generator.js';
import { validateSamplingParams, type SamplingParams } from '../engine/sampling.js';
import { describeModel, type LoadedModel } from '../models/modeldir.js';
import type { Bill } from '../economy/ledger.js';
import { renderChat, type ChatMessage } from './chat.js';
import { answerOutsideRouter, clientErrorHandler, describeError, frameworkErrors } from './errors-http.js';
import { fastifyServerOptions, limitConnections, RequestGate, resolveLimits, type ServerLimits } from './limits.js';
import { EngineLoop } from './loop.js';
import { ServerMetrics } from './metrics.js';
import { chatBody, completionBody, type ChatBody, type CommonBody, type CompletionBody } from './schemas.js';
import { PromptBound } from './prompt-bound.js';
import { openDirectory, type Tenant, type TenantDirectory } from './tenants.js';
import type { EncodeContext } from './tokenize-pool.js';

export interface ServerDeps {
  model: LoadedModel;
  generator: Generator;
  tenants?: TenantDirectory;
  metrics?: ServerMetrics;
  /** Tokenizes off the main thread where it pays (TokenizePool.encode, fair per client and cancellable); default inline. */
  tokenize?: (text: string, bos: boolean, ctx: EncodeContext) => Promise<number[]>;
  logger?: boolean;
  /** Largest request body accepted, bytes (413 beyond); the same as limits.bodyLimit. */
  bodyLimit?: number;
  /** Timeouts, connection caps, queue bounds and the drain timeout (defaults: limits.ts). */
  limits?: Partial<ServerLimits>;
  /** Compute cost per token for the welfare metric. */
  basePrice?: number;
}

export interface Server {
  app: FastifyInstance;
  loop: EngineLoop;
  metrics: ServerMetrics;
  limits: ServerLimits;
  /**
   * Stop accepting, let what is in flight finish for up to `timeoutMs` (default the drain
   * timeout), then abort the rest (503 `shutdown`) and close every connection; resolves when done.
   */
  drain(timeoutMs?: number): Promise<void>;
}

/** True when `p` settles within `ms`. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([p.then(() => true, () => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** One generation request in flight: aborted when its client leaves, or by a drain that timed out. */
interface Job {
  controller: AbortController;
  ctx: EncodeContext;
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
  const metrics = deps.metrics ?? new ServerMetrics({ modelName: model.name, blockSize: info.blockSize, numBlocks: info.totalBlocks, maxSequences: info.maxSequences, maxContext: info.maxContext });
  const tokenize = deps.tokenize ?? (async (text: string, bos: boolean) => model.tokenizer.encode(text, { bos }));
  const limits = resolveLimits({ ...(deps.bodyLimit !== undefined ? { bodyLimit: deps.bodyLimit } : {}), ...deps.limits });
  const app = Fastify({
    logger: deps.logger ?? false,
    ...fastifyServerOptions(limits),
    // OpenAI semantics: "10" is not a number of tokens. No coercion, no silent defaults.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } },
    // Shutdown answers in the OpenAI shape too (DrainingError below), not fastify's own 503 body.
    return503OnClosing: false,
    // The HTTP parser's errors (malformed requests, 431, 408) and undecodable URLs in the OpenAI shape.
    clientErrorHandler,
    frameworkErrors,
  });
  answerOutsideRouter(app.server);
  limitConnections(app.server, limits);
  const gate = new RequestGate(limits.maxQueued, () => sched.running.length);
  const bound = new PromptBound(model.tokenizer, info.maxContext);
  const active = new Set<Job>();
  // JSON only: a text/plain body is a client bug to report (415), not a string to validate.
  app.removeContentTypeParser('text/plain');
  const loop = new EngineLoop(generator, (e) => app.log.error(e), () => observeStep());
  const created = Math.floor(Date.now() / 1000);
  let draining = false;

  // --- metrics wiring: per step from the scheduler's counters, per token and request from the generator.
  const last = { prompt: 0, preemptions: 0, swaps: 0 };
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

  app.setErrorHandler((err, req, reply) => {
    const d = describeError(err);
    if (d.status >= 500) app.log.error(err);
    if (d.status === BODY_TOO_LARGE && !req.raw.complete) keepReading(req, reply);
    return reply.code(d.status).headers(d.headers).send(d.body);
  });
  app.setNotFoundHandler((req) => {
    throw new RouteNotFoundError(`no route ${req.method} ${req.url}`);
  });

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
    if (t === undefined) throw new InvalidApiKeyError(key === undefined ? 'missing API key: send Authorization: Bearer <key>' : 'invalid API key');
    return t;
  };

  app.get('/health', async (_req, reply) => {
    if (draining) {
      const d = describeError(new DrainingError('the server is shutting down'));
      return reply.code(d.status).headers(d.headers).send({ ...d.body, status: 'draining' });
    }
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
      throw Object.assign(new UnknownModelError(`The model \`${body.model}\` does not exist. This server serves \`${model.name}\`.`), { param: 'model' });
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
  const serve = async (reply: FastifyReply, kind: 'completion' | 'chat', prompt: number[], sampling: SamplingParams, body: CommonBody, tenant: Tenant, job: Job) => {
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`;
    const object = kind === 'chat' ? 'chat.completion' : 'text_completion';
    const createdAt = Math.floor(Date.now() / 1000);
    const abort = job.controller;
    const res = reply.raw;
    /** A drain that timed out aborted it: say so rather than answer with a truncated completion. */
    const shutDown = () => {
      if (abort.signal.aborted && abort.signal.reason instanceof ShutdownError) throw abort.signal.reason;
    };

    if (body.stream !== true) {
      const pending = generator.submit({ prompt, sampling, signal: abort.signal, endpoint: kind, ...economics(body, tenant) });
      loop.wake();
      const c = await pending;
      shutDown();
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
      shutDown();
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

  /**
   * Admits a generation request (or throws QueueFullError) and follows it to its response's end:
   * aborted if its client leaves first (queued tokenization is dropped, KV blocks freed within a
   * step) or if a drain times out.
   */
  const begin = (req: FastifyRequest, reply: FastifyReply, tenant: Tenant): Job => {
    const leave = gate.enter();
    const controller = new AbortController();
    // Fair shares of the tokenizer go to tenants when keys identify them, else to client addresses.
    const job: Job = { controller, ctx: { client: tenants.open ? req.ip : tenant.name, signal: controller.signal } };
    active.add(job);
    const res = reply.raw;
    res.once('close', () => {
      if (!res.writableFinished) controller.abort(new Error('the client went away'));
      active.delete(job);
      leave();
    });
    // It may have gone while the body was read.
    if (res.destroyed || req.raw.socket?.destroyed) controller.abort(new Error('the client went away'));
    return job;
  };

  app.post('/v1/completions', { schema: { body: completionBody } }, async (req, reply) => {
    if (draining) throw new DrainingError('the server is shutting down');
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
    if (typeof p !== 'string' && p.length !== 1 && (typeof p[0] === 'string' || Array.isArray(p[0]))) {
      throw Object.assign(new InvalidArgumentError('prompt: one prompt per request (send several requests)'), { param: 'prompt' });
    }
    const text = typeof p === 'string' ? p : typeof p[0] === 'string' ? p[0] : undefined;
    // A text that cannot fit is turned away before it costs the tokenizer anything.
    if (text !== undefined) bound.check(text, body.max_tokens ?? 16, 'prompt');
    const job = begin(req, reply, tenant);
    let prompt: number[];
    if (text !== undefined) prompt = await tokenize(text, model.addBos, job.ctx);
    else if (Array.isArray(p[0])) prompt = (p as number[][])[0] as number[];
    else prompt = p as number[];
    checkTokens(prompt, model.vocabSize);
    const sampling = common(body, () => 16, prompt.length, []);
    sched.checkFits(prompt.length, sampling.maxTokens);
    return serve(reply, 'completion', prompt, sampling, body, tenant, job);
  });

  app.post('/v1/chat/completions', { schema: { body: chatBody } }, async (req, reply) => {
    if (draining) throw new DrainingError('the server is shutting down');
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
    bound.check(rendered.prompt, body.max_tokens ?? body.max_completion_tokens ?? undefined, 'messages');
    const job = begin(req, reply, tenant);
    const prompt = await tokenize(rendered.prompt, model.addBos && !rendered.hasBos, job.ctx);
    const ctx = info.maxContext;
    // OpenAI chat: without max_tokens the answer may use the rest of the context.
    const sampling = common(body, (n) => Math.max(1, ctx - n), prompt.length, rendered.stop);
    sched.checkFits(prompt.length, sampling.maxTokens);
    return serve(reply, 'chat', prompt, sampling, body, tenant, job);
  });

  const drain = async (timeoutMs = limits.drainTimeoutMs) => {
    draining = true;
    const closed = app.close();
    if (await within(Promise.all([loop.drain(), closed]), timeoutMs)) return;
    // Out of time: abort what is left (each answered 503 `shutdown`, or an error event on its
    // stream), then cut the connections still open — clients that never read their stream would
    // otherwise hold the process forever.
    const reason = new ShutdownError(`the server shut down before this request finished (drain timeout ${timeoutMs} ms)`);
    for (const job of active) job.controller.abort(reason);
    await within(loop.drain(), 2000);
    app.server.closeAllConnections();
    await within(closed, 2000);
  };

  return { app, loop, metrics, limits, drain };
}

const BODY_TOO_LARGE = new BodyTooLargeError('').statusCode as number;

/**
 * Answering before the body is read, then closing (fastify's way, and node's for a client that
 * sent `Connection: close`), makes the kernel reset the connection on the bytes still arriving:
 * the client, still sending, sees EPIPE or ECONNRESET instead of its 413. Kept open, node reads
 * and discards the rest of the body (bounded by the request timeout); then the connection closes
 * if the client asked for that.
 */
function keepReading(req: FastifyRequest, reply: FastifyReply): void {
  const closeAfter = /\bclose\b/i.test(String(req.headers.connection ?? ''));
  reply.removeHeader('connection');
  reply.raw.shouldKeepAlive = true;
  if (closeAfter) req.raw.once('end', () => req.raw.socket?.end());
}

function checkTokens(prompt: number[], vocab: number): void {
  for (const t of prompt) {
    if (!Number.isInteger(t) || t < 0 || t >= vocab) {
      throw Object.assign(new InvalidArgumentError(`prompt: token id ${t} is outside the vocabulary (0..${vocab - 1})`), { param: 'prompt' });
    }
  }
}


export type { Bill, Rejected, ServerResponse };
