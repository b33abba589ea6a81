import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { BodyTooLargeError, DrainingError, EngineDownError, InvalidApiKeyError, InvalidArgumentError, RouteNotFoundError, ShutdownError, UnknownModelError } from '../errors.js';
import type { Completion, Generator, Rejected } from '../serving/generator.js';
import { validateSamplingParams, type SamplingParams } from '../sampling/params.js';
import { describeModel, type LoadedModel } from '../models/modeldir.js';
import { mergeBills, type Bill } from '../economy/ledger.js';
import type { Quote } from '../scheduler/request.js';
import type { Logger } from '../log.js';
import { checkMetricsAccess } from './auth.js';
import { renderChat, type ChatMessage } from './chat.js';
import { serverMarket } from './console/market.js';
import { registerConsole } from './console/routes.js';
import { Sampler } from './console/sampler.js';
import { answerOutsideRouter, clientErrorHandler, describeError, frameworkErrors } from './errors-http.js';
import { fastifyServerOptions, limitConnections, RequestGate, resolveLimits, type ServerLimits } from './limits.js';
import { checkFields } from './fields.js';
import { registerUtilityRoutes } from './routes-extra.js';
import { requestedGrammar, type RequestedGrammar } from './structured.js';
import { CallStreamer, callGrammar, parseToolCalls, requestedTools, toolInstructions, type RequestedTools } from './tools.js';
import { GrammarEngine } from '../sampling/grammar.js';
import { chatLogprobs, completionLogprobs, generatedPositions, promptPositions } from './logprobs.js';
import type { TokenLogprobs } from '../sampling/logprobs.js';
import { RequestJournal } from './journal.js';
import { EngineLoop } from '../serving/loop.js';
import { ServerMetrics } from './metrics.js';
import { chatBody, completionBody, type ChatBody, type CommonBody, type CompletionBody } from './schemas.js';
import { PromptBound } from './prompt-bound.js';
import { quoteBody, quoteHeaders, rejectionBody } from './quote.js';
import { openDirectory, type Tenant, type TenantDirectory } from './tenants.js';
import type { EncodeContext } from './tokenize-pool.js';

export interface ServerDeps {
  model: LoadedModel;
  generator: Generator;
  tenants?: TenantDirectory;
  metrics?: ServerMetrics;
  /** Tokenizes off the main thread where it pays (TokenizePool.encode, fair per client and cancellable); default inline. */
  tokenize?: (text: string, bos: boolean, ctx: EncodeContext) => Promise<number[]>;
  /** Where the server logs (pino, JSON lines); default: nothing. */
  logger?: Logger;
  /** `--metrics-key`: /metrics then needs this bearer key (or an admin key). */
  metricsKey?: string;
  /** The console's built page (default: dist/console); `false` serves no console. */
  console?: { assetsDir?: string } | false;
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
  /** One record per finished API request (logged, and shown by the console). */
  journal: RequestJournal;
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

/** The OpenAI-compatible HTTP surface over one model and its engine loop. */
export function buildServer(deps: ServerDeps): Server {
  const { model, generator } = deps;
  const sched = generator.scheduler;
  const info = generator.engine.info;
  const tenants = deps.tenants ?? openDirectory(undefined);
  const metrics = deps.metrics ?? new ServerMetrics({ modelName: model.name, blockSize: info.blockSize, numBlocks: info.totalBlocks, numCpuBlocks: info.hostBlocks, maxSequences: info.maxSequences, maxContext: info.maxContext });
  const tokenize = deps.tokenize ?? (async (text: string, bos: boolean) => model.tokenizer.encode(text, { bos }));
  const limits = resolveLimits({ ...(deps.bodyLimit !== undefined ? { bodyLimit: deps.bodyLimit } : {}), ...deps.limits });
  const app = Fastify({
    ...(deps.logger ? { loggerInstance: deps.logger as FastifyBaseLogger } : { logger: false }),
    // The journal writes one line per finished request instead of fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
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
  const jobs = new Set<Job>();
  // JSON only: a text/plain body is a client bug to report (415), not a string to validate.
  app.removeContentTypeParser('text/plain');
  const grammars = new GrammarEngine(model.tokenizer, model.vocabSize, model.stopIds);
  const loop = new EngineLoop(generator, (e) => app.log.error(e), () => observeStep());
  const journal = new RequestJournal(deps.logger);
  journal.install(app);
  // Tenants' requests counted as their clients see them: one per HTTP request, whatever its n.
  journal.subscribe((r) => {
    if (r.tenant !== null && r.outcome !== 'invalid') metrics.tenantFinished(r.tenant, r.outcome, r.value_realized ?? 0, r.bill?.total ?? 0);
  });
  const created = Math.floor(Date.now() / 1000);
  let draining = false;

  // --- metrics wiring: per step from the scheduler's counters, per token and request from the generator.
  const last = { prompt: 0, preemptions: 0, swaps: 0, admitted: 0, kvBytes: 0, blockCopies: 0 };
  const snapshot = () =>
    metrics.step({
      running: sched.running.length,
      waiting: sched.waiting,
      swapped: sched.swappedCount,
      kvUsage: sched.blocks.heldBlocks / sched.blocks.totalBlocks,
      tokenUtilization: sched.tokenUtilization,
      priceToken: sched.prices.token,
      priceKvBlockSecond: sched.prices.kv,
    });
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
    if (c.admitted > last.admitted) metrics.admitted(c.admitted - last.admitted);
    last.admitted = c.admitted;
  };
  generator.setObserver({
    onToken: (r, now) => {
      metrics.generationTokens(1);
      if (r.generated === 1) metrics.firstToken(now - r.spec.arrival);
      else if (!Number.isNaN(r.prevTokenAt)) metrics.interToken(now - r.prevTokenAt);
      r.prevTokenAt = now;
    },
    onFinish: (r, now) => {
      const ms = (seconds: number | null) => (seconds === null ? null : Math.round(seconds * 1e6) / 1e3);
      const market = {
        prompt_tokens: r.promptLength,
        cached_tokens: r.cachedTokens,
        preemptions: r.preemptions,
        value: r.spec.value ?? null,
        bid: r.spec.bid ?? null,
        bill: r.finalBill ?? null,
      };
      if (r.outcome === 'rejected') {
        metrics.rejected(r.quote?.reason ?? 'price_above_bid');
        const quote = r.quote ? { ...quoteBody(r.quote), message: r.quote.message } : null;
        journal.marketDone(r.spec.id, { ...market, outcome: 'rejected', finish_reason: null, completion_tokens: 0, ttft_ms: null, tpot_ms: null, queue_ms: null, value_realized: 0, bill: null, quote });
        return;
      }
      metrics.prefixQuery(r.promptLength, r.cachedTokens);
      const e2e = now - r.spec.arrival;
      const ttft = Number.isNaN(r.firstTokenAt) ? null : r.firstTokenAt - r.spec.arrival;
      const realized = r.valueRealized();
      const queue = Number.isNaN(r.admittedAt) ? e2e : Math.max(0, r.admittedAt - r.spec.arrival);
      const tpot = ttft !== null && r.generated > 1 ? (e2e - ttft) / (r.generated - 1) : null;
      metrics.finished({
        finishReason: r.finishReason === 'length' ? 'length' : r.finishReason === 'abort' ? 'abort' : 'stop',
        e2eSeconds: e2e,
        queueSeconds: queue,
        promptTokens: r.promptLength,
        outputTokens: r.generated,
        tpotSeconds: tpot,
        realizedValue: realized,
        computeCost: (r.promptLength - r.cachedTokens + r.generated + r.recomputed) * (deps.basePrice ?? 2e-4),
        billTotal: r.finalBill?.total ?? 0,
      });
      journal.marketDone(r.spec.id, {
        ...market,
        outcome: r.outcome === 'aborted' ? 'aborted' : 'completed',
        finish_reason: r.finishReason ?? null,
        completion_tokens: r.generated,
        ttft_ms: ms(ttft),
        tpot_ms: ms(tpot),
        queue_ms: ms(queue),
        value_realized: realized,
        quote: null,
      });
      const t = sched.ledger?.account(r.tenant);
      if (t && Number.isFinite(t.budget)) metrics.budget(r.tenant, t.budget - t.spent - t.escrowed);
    },
  });

  app.setErrorHandler((err, req, reply) => {
    const d = describeError(err);
    journal.noteError(req, d.body.error.code);
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
    // Draining, or a dead engine worker (nothing can be served): say so to the load balancer.
    const down = draining ? { e: new DrainingError('the server is shutting down'), status: 'draining' } : (generator.engine as { alive?: boolean }).alive === false ? { e: new EngineDownError('the engine is not running'), status: 'engine down' } : undefined;
    if (down === undefined) return { status: 'ok' };
    const d = describeError(down.e);
    return reply.code(d.status).headers(d.headers).send({ ...d.body, status: down.status });
  });

  app.get('/metrics', async (req, reply) => {
    checkMetricsAccess(req, deps.metricsKey, tenants);
    // Gauges as of now: an idle server runs no steps, yet a disconnect may just have freed memory.
    snapshot();
    return reply.header('content-type', metrics.contentType).send(await metrics.text());
  });

  const modelCard = () => ({
    id: model.name,
    object: 'model',
    created,
    owned_by: 'marginal',
    root: model.name,
    parent: null,
    max_model_len: info.maxContext,
    context_length: model.kv.maxContext,
    architecture: model.architecture,
    quantization: model.quantization ?? null,
    synthetic: model.synthetic,
    description: describeModel(model),
    policy: sched.policyName,
  });
  app.get('/v1/models', async () => ({ object: 'list', data: [modelCard()] }));
  // /tokenize counts prompts longer than the context too (that is what clients use it for), on the
  // pool in the client's turn — but not without end: one 1.5 MB prompt held a worker for seconds.
  registerUtilityRoutes(app, model, info.maxContext, modelCard, (text, bos, req) => {
    bound.checkCountable(text, TOKENIZE_CONTEXTS, 'prompt');
    const controller = new AbortController();
    const socket = req.raw.socket;
    const gone = () => controller.abort(new Error('the client went away'));
    socket?.once('close', gone);
    return tokenize(text, bos, { client: req.ip, signal: controller.signal }).finally(() => socket?.off('close', gone));
  });

  /** Checks shared by both routes: model, sampling parameters (logprobs is the route's own spelling of the count). */
  const common = (body: CommonBody, defaultMaxTokens: (promptTokens: number) => number, promptTokens: number, extraStop: string[], logprobs: { value: unknown; param: string; max: number }): SamplingParams => {
    if (body.model !== undefined && body.model !== model.name) {
      throw Object.assign(new UnknownModelError(`The model \`${body.model}\` does not exist. This server serves \`${model.name}\`.`), { param: 'model' });
    }
    if (body.n !== undefined && body.n !== null && !(Number.isInteger(body.n) && body.n >= 1 && body.n <= MAX_CHOICES)) {
      throw Object.assign(new InvalidArgumentError(`n must be an integer in [1, ${MAX_CHOICES}]`), { param: 'n' });
    }
    const maxTokens = body.max_tokens ?? (body as ChatBody).max_completion_tokens ?? defaultMaxTokens(promptTokens);
    const sampling = validateSamplingParams(
      {
        temperature: body.temperature,
        top_p: body.top_p,
        top_k: body.top_k,
        seed: body.seed,
        max_tokens: maxTokens,
        stop: body.stop,
        presence_penalty: body.presence_penalty,
        frequency_penalty: body.frequency_penalty,
        repetition_penalty: body.repetition_penalty,
        logit_bias: body.logit_bias,
        min_p: body.min_p,
        min_tokens: body.min_tokens,
        ignore_eos: body.ignore_eos,
        stop_token_ids: body.stop_token_ids,
        logprobs: logprobs.value,
      },
      { maxTokensCap: info.maxContext, vocabSize: model.vocabSize, maxLogprobs: logprobs.max, logprobsParam: logprobs.param },
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

  /**
   * Runs a request's generations (n choices, or best_of of which the n most likely are kept) and
   * answers them, as JSON or as server-sent events. `choices` says how many to run and return.
   */
  const generate = async (
    req: FastifyRequest,
    reply: FastifyReply,
    kind: 'completion' | 'chat',
    prompt: number[],
    sampling: SamplingParams,
    body: CommonBody,
    tenant: Tenant,
    opts: { echo?: { text: string }; constraint?: RequestedGrammar; n: number; bestOf: number; tools?: RequestedTools },
    job: Job,
  ) => {
    const { echo, constraint, n, bestOf, tools } = opts;
    const runs = Math.max(n, bestOf);
    // One request's streams are admitted together, so they must fit in the batch at once.
    if (runs > sched.maxRunning) {
      const param = bestOf > n ? 'best_of' : 'n';
      throw Object.assign(new InvalidArgumentError(`${param} = ${runs} exceeds the ${sched.maxRunning} sequences this server runs at once`), { param });
    }
    // best_of ranks choices by their summed log probabilities, which it needs even if the client did not ask.
    const runSampling = bestOf > n && sampling.logprobs === undefined ? { ...sampling, logprobs: 0 } : sampling;
    const matchers = constraint === undefined ? undefined : await Promise.all(Array.from({ length: runs }, () => grammars.matcher(constraint.spec, constraint.param)));
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`;
    journal.generating(req, id, tenant.name);
    const object = kind === 'chat' ? 'chat.completion' : 'text_completion';
    const createdAt = Math.floor(Date.now() / 1000);
    const abort = job.controller;
    const res = reply.raw;
    /** A drain that timed out aborted it: say so rather than answer with a truncated completion. */
    const shutDown = () => {
      if (abort.signal.aborted && abort.signal.reason instanceof ShutdownError) throw abort.signal.reason;
    };

    const tok = model.tokenizer;
    const lastPrompt = prompt[prompt.length - 1] ?? -1;
    // Echo with logprobs reports the prompt's too (lm-evaluation-harness's loglikelihood).
    const promptLp = echo !== undefined && sampling.logprobs !== undefined ? { promptLogprobs: sampling.logprobs } : {};
    const logprobsOf = (lps: TokenLogprobs[] | undefined, prev: number, textOffset: number) => {
      if (sampling.logprobs === undefined || lps === undefined) return null;
      const positions = generatedPositions(lps, prev);
      return kind === 'chat' ? chatLogprobs(tok, positions) : completionLogprobs(tok, positions, textOffset);
    };
    const echoLogprobs = (promptLps: TokenLogprobs[] | undefined, lps: TokenLogprobs[] | undefined) => {
      if (sampling.logprobs === undefined) return null;
      return completionLogprobs(tok, [...promptPositions(prompt, promptLps), ...generatedPositions(lps ?? [], lastPrompt)], 0);
    };
    const request = { id, prompt, sampling: runSampling, signal: abort.signal, endpoint: kind, n: runs, onSubmitted: () => loop.wake(), ...promptLp, ...(matchers ? { grammars: matchers } : {}), ...economics(body, tenant) };
    /** All the runs' usage and bills as one request's: the prompt counted once, completions summed. */
    const total = (cs: Completion[]) => {
      const first = cs[0] as Completion;
      const completion = cs.reduce((a, c) => a + c.tokens.length, 0);
      return {
        usage: { prompt_tokens: first.promptTokens, completion_tokens: completion, total_tokens: first.promptTokens + completion, prompt_tokens_details: { cached_tokens: first.cachedTokens } },
        bill: mergeBills(cs.map((c) => c.bill)),
        outcome: {
          value_counted: cs.reduce((a, c) => a + c.outcome.value_counted, 0),
          slo_met: cs.every((c) => c.outcome.slo_met),
          value_realized: cs.reduce((a, c) => a + c.outcome.value_realized, 0),
        },
      };
    };

    if (body.stream !== true) {
      const pending = generator.submitChoices(request);
      loop.wake();
      const all = await pending;
      shutDown();
      let cs = all;
      if (bestOf > n) {
        const score = (c: Completion) => (c.logprobs ?? []).reduce((a, l) => a + l.logprob, 0);
        cs = cs.map((c, i) => [c, score(c), i] as const).sort((x, y) => y[1] - x[1] || x[2] - y[2]).slice(0, n).map((x) => x[0]);
      }
      const choices = cs.map((c, index) =>
        kind === 'chat'
          ? { index, ...chatMessage(c.text, c.finishReason, tools), logprobs: logprobsOf(c.logprobs, lastPrompt, 0) }
          : echo !== undefined
            ? { index, text: echo.text + c.text, logprobs: echoLogprobs(c.promptLogprobs, c.logprobs), finish_reason: c.finishReason }
            : { index, text: c.text, logprobs: logprobsOf(c.logprobs, lastPrompt, 0), finish_reason: c.finishReason },
      );
      const t = total(all);
      return reply.send({ id, object, created: createdAt, model: model.name, choices, usage: t.usage, bill: t.bill, outcome: t.outcome });
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
      if (kind === 'chat') for (let i = 0; i < runs; i++) write({ index: i, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null });
      // The prompt goes first, as its own chunk; its log probabilities are known only once it has run.
      if (echo !== undefined) for (let i = 0; i < runs; i++) write({ index: i, text: echo.text, logprobs: null, finish_reason: null });
    };
    const chunkObject = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
    const write = (choice: object, extra: object = {}) => {
      if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify({ id, object: chunkObject, created: createdAt, model: model.name, choices: [choice], ...extra })}\n\n`);
    };
    // Streamed logprobs: each chunk carries those of the tokens its text completed.
    const prevToken = new Array<number>(runs).fill(lastPrompt);
    const streamedChars = new Array<number>(runs).fill(echo?.text.length ?? 0);
    const delta = (index: number, text: string, finish: string | null, lps?: TokenLogprobs[]) => {
      let logprobs = null;
      if (lps !== undefined && lps.length > 0) {
        logprobs = logprobsOf(lps, prevToken[index]!, streamedChars[index]!);
        prevToken[index] = lps[lps.length - 1]!.token;
      }
      streamedChars[index]! += text.length;
      return kind === 'chat' ? { index, delta: text.length > 0 ? { content: text } : {}, logprobs, finish_reason: finish } : { index, text, logprobs, finish_reason: finish };
    };
    // With tools, text becomes tool-call deltas: constrained calls stream their arguments, and in
    // auto mode an answer that may be a call is held until it is known.
    const callers = tools !== undefined && (tools.mode.kind === 'required' || tools.mode.kind === 'named') ? Array.from({ length: runs }, () => new CallStreamer()) : undefined;
    const held = tools?.mode.kind === 'auto' ? new Array<string | undefined>(runs).fill('') : undefined;
    const mayBeCall = (t: string) => {
      const s = t.trimStart();
      return '<tool_call>'.startsWith(s) || s.startsWith('<tool_call>') || s.startsWith('{');
    };
    const writeText = (index: number, text: string, lps: TokenLogprobs[] | undefined) => {
      if (callers !== undefined) {
        for (const d of (callers[index] as CallStreamer).push(text)) write({ index, delta: { tool_calls: d }, logprobs: null, finish_reason: null });
        return;
      }
      if (held !== undefined && held[index] !== undefined) {
        const h = (held[index] as string) + text;
        if (mayBeCall(h)) {
          held[index] = h;
          return;
        }
        held[index] = undefined;
        write(delta(index, h, null, lps));
        return;
      }
      write(delta(index, text, null, lps));
    };
    /** The last chunk of a choice: held text as content or calls, then the finish reason. */
    const finishChoice = (index: number, c: Completion) => {
      let finish: string = c.finishReason;
      if (callers !== undefined) finish = c.finishReason === 'stop' ? 'tool_calls' : finish;
      else if (held !== undefined && held[index] !== undefined) {
        const parsed = parseToolCalls(held[index] as string, (tools as RequestedTools).functions, (tools as RequestedTools).parallel);
        if (parsed !== undefined) {
          if (parsed.content !== null) write(delta(index, parsed.content, null));
          parsed.calls.forEach((call, k) => write({ index, delta: { tool_calls: [{ index: k, ...call }] }, logprobs: null, finish_reason: null }));
          finish = 'tool_calls';
        } else if ((held[index] as string).length > 0) write(delta(index, held[index] as string, null));
      }
      return finish;
    };
    try {
      const pending = generator.submitChoices({
        ...request,
        onText: (index, text, lps) => {
          open();
          if (kind === 'chat') writeText(index, text, lps);
          else write(delta(index, text, null, lps));
        },
      });
      loop.wake();
      if (echo !== undefined) open();
      const cs = await pending;
      shutDown();
      open();
      const t = total(cs);
      cs.forEach((c, index) => {
        if (echo !== undefined && sampling.logprobs !== undefined) {
          write({ index, text: '', logprobs: completionLogprobs(tok, promptPositions(prompt, c.promptLogprobs), 0), finish_reason: null });
        }
        const finish = kind === 'chat' ? finishChoice(index, c) : c.finishReason;
        write(delta(index, '', finish), index === cs.length - 1 ? { bill: t.bill, outcome: t.outcome } : {});
      });
      if (body.stream_options?.include_usage) {
        if (!res.writableEnded) res.write(`data: ${JSON.stringify({ id, object: chunkObject, created: createdAt, model: model.name, choices: [], usage: t.usage, bill: t.bill, outcome: t.outcome })}\n\n`);
      }
      if (!res.writableEnded) res.end('data: [DONE]\n\n');
    } catch (e) {
      const d = describeError(e);
      journal.noteError(req, d.body.error.code);
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
    jobs.add(job);
    const res = reply.raw;
    res.once('close', () => {
      if (!res.writableFinished) controller.abort(new Error('the client went away'));
      jobs.delete(job);
      leave();
    });
    // It may have gone while the body was read.
    if (res.destroyed || req.raw.socket?.destroyed) controller.abort(new Error('the client went away'));
    return job;
  };

  /** generate() under the journal: the request's record is complete once its generations have settled. */
  const serve = async (...args: Parameters<typeof generate>) => {
    try {
      return await generate(...args);
    } finally {
      journal.settled(args[0]);
    }
  };

  app.post('/v1/completions', { schema: { body: completionBody } }, async (req, reply) => {
    if (draining) throw new DrainingError('the server is shutting down');
    const tenant = authenticate(req);
    const body = req.body as CompletionBody;
    checkFields(body as unknown as Record<string, unknown>, 'completion');
    const unsupported = (cond: boolean, param: string, what: string) => {
      if (cond) throw Object.assign(new InvalidArgumentError(`${param}: ${what}`), { param });
    };
    const n = body.n ?? 1;
    const bestOf = body.best_of ?? n;
    unsupported(!Number.isInteger(bestOf) || bestOf < n || bestOf > MAX_CHOICES, 'best_of', `best_of must be an integer in [n, ${MAX_CHOICES}]`);
    unsupported(bestOf > n && body.stream === true, 'best_of', 'best_of > n cannot be streamed');
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
    // vLLM's add_special_tokens (default true): false leaves the BOS out of a text prompt.
    const bos = model.addBos && (body as { add_special_tokens?: unknown }).add_special_tokens !== false;
    if (text !== undefined) prompt = await tokenize(text, bos, job.ctx);
    else if (Array.isArray(p[0])) prompt = (p as number[][])[0] as number[];
    else prompt = p as number[];
    checkTokens(prompt, model.vocabSize);
    // OpenAI's completions cap logprobs at 5; vLLM allows up to its max_logprobs (20).
    const sampling = common(body, () => 16, prompt.length, [], { value: body.logprobs, param: 'logprobs', max: 20 });
    sched.checkFits(prompt.length, sampling.maxTokens);
    const promptText = typeof p === 'string' ? p : typeof p[0] === 'string' ? p[0] : model.tokenizer.decode(prompt);
    const constraint = requestedGrammar(body as unknown as Record<string, unknown>);
    return serve(req, reply, 'completion', prompt, sampling, body, tenant, { ...(body.echo === true ? { echo: { text: promptText } } : {}), ...(constraint ? { constraint } : {}), n, bestOf }, job);
  });

  app.post('/v1/chat/completions', { schema: { body: chatBody } }, async (req, reply) => {
    if (draining) throw new DrainingError('the server is shutting down');
    const tenant = authenticate(req);
    const body = req.body as ChatBody;
    checkFields(body as unknown as Record<string, unknown>, 'chat');
    const unsupported = (cond: boolean, param: string, what: string) => {
      if (cond) throw Object.assign(new InvalidArgumentError(`${param}: ${what}`), { param });
    };
    unsupported(body.top_logprobs != null && body.logprobs !== true, 'top_logprobs', 'top_logprobs needs logprobs: true');
    const tools = requestedTools(body as ChatBody & { parallel_tool_calls?: unknown });
    const active = tools !== undefined && tools.mode.kind !== 'none' ? tools : undefined;
    const rendered = renderChat(model, body.messages as ChatMessage[], active ? { list: body.tools as unknown[], toolSystem: toolInstructions(active.functions) } : undefined);
    bound.check(rendered.prompt, body.max_tokens ?? body.max_completion_tokens ?? undefined, 'messages');
    const job = begin(req, reply, tenant);
    const prompt = await tokenize(rendered.prompt, model.addBos && !rendered.hasBos, job.ctx);
    const ctx = info.maxContext;
    // OpenAI chat: without max_tokens the answer may use the rest of the context.
    const sampling = common(body, (n) => Math.max(1, ctx - n), prompt.length, rendered.stop, { value: body.logprobs === true ? (body.top_logprobs ?? 0) : undefined, param: 'top_logprobs', max: 20 });
    sched.checkFits(prompt.length, sampling.maxTokens);
    let constraint = requestedGrammar(body as unknown as Record<string, unknown>);
    const call = active !== undefined ? callGrammar(active) : undefined;
    if (call !== undefined) {
      unsupported(constraint !== undefined, constraint?.param ?? 'response_format', 'a structured-output constraint cannot be combined with tool_choice required or a named function');
      constraint = { spec: call, param: 'tools' };
    }
    return serve(req, reply, 'chat', prompt, sampling, body, tenant, { ...(constraint ? { constraint } : {}), n: body.n ?? 1, bestOf: body.n ?? 1, ...(active ? { tools: active } : {}) }, job);
  });

  if (deps.console !== false) {
    const market = serverMarket(generator, metrics, tenants, model.name, model.synthetic);
    const sampler = new Sampler(market);
    journal.subscribe((r) => sampler.record(r));
    registerConsole(app, { market, sampler, directory: tenants, ...(deps.console?.assetsDir ? { assetsDir: deps.console.assetsDir } : {}) });
  }

  const drain = async (timeoutMs = limits.drainTimeoutMs) => {
    draining = true;
    const closed = app.close();
    if (await within(Promise.all([loop.drain(), closed]), timeoutMs)) return;
    // Out of time: abort what is left (each answered 503 `shutdown`, or an error event on its
    // stream), then cut the connections still open — clients that never read their stream would
    // otherwise hold the process forever.
    const reason = new ShutdownError(`the server shut down before this request finished (drain timeout ${timeoutMs} ms)`);
    for (const job of jobs) job.controller.abort(reason);
    await within(loop.drain(), 2000);
    app.server.closeAllConnections();
    await within(closed, 2000);
  };

  return { app, loop, metrics, journal, limits, drain };
}

const BODY_TOO_LARGE = new BodyTooLargeError('').statusCode as number;
/** /tokenize counts texts up to this many contexts long. */
const TOKENIZE_CONTEXTS = 16;

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

/** A chat choice's message and finish reason: tool calls where the answer is one (tools.ts), else text. */
function chatMessage(text: string, finish: string, tools: RequestedTools | undefined) {
  const parsed = tools === undefined ? undefined : parseToolCalls(text, tools.functions, tools.parallel);
  if (parsed === undefined) return { message: { role: 'assistant', content: text }, finish_reason: finish };
  return { message: { role: 'assistant', content: parsed.content, tool_calls: parsed.calls }, finish_reason: finish === 'stop' ? 'tool_calls' : finish };
}

/** Most choices (n, best_of) one request may ask for. */
const MAX_CHOICES = 16;

function checkTokens(prompt: number[], vocab: number): void {
  for (const t of prompt) {
    if (!Number.isInteger(t) || t < 0 || t >= vocab) {
      throw Object.assign(new InvalidArgumentError(`prompt: token id ${t} is outside the vocabulary (0..${vocab - 1})`), { param: 'prompt' });
    }
  }
}


export type { Bill, Rejected, ServerResponse };
