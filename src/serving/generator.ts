import { performance } from 'node:perf_hooks';
import { BudgetExhaustedError, InvalidArgumentError, RequestRejectedError } from '../errors.js';
import type { PriceCurves } from '../economy/curves.js';
import type { Ledger } from '../economy/ledger.js';
import type { LoadedModel } from '../models/modeldir.js';
import { StreamDetokenizer } from '../models/tokenizer/stream.js';
import { createPolicy } from '../scheduler/policies/index.js';
import type { ShadowOptions } from '../scheduler/policies/shadow.js';
import type { LengthPredictor } from '../economy/length-model.js';
import type { Policy } from '../scheduler/policy.js';
import type { Quote, RequestSpec, SchedRequest, Slo } from '../scheduler/request.js';
import type { Bill } from '../economy/ledger.js';
import { Scheduler, type SchedulerConfig } from '../scheduler/scheduler.js';
import { GEOMETRY_DEFAULTS, type Geometry } from '../geometry.js';
import { Rng } from '../sampling/rng.js';
import { StopMatcher } from '../sampling/stop.js';
import { adjustsLogits } from '../sampling/params.js';
import { LogitAdjuster } from '../sampling/penalties.js';
import type { TokenLogprobs } from '../sampling/logprobs.js';
import type { TokenMasker } from '../sampling/grammar.js';
import type { SamplingParams } from '../sampling/params.js';
import { emptyPlan, type Engine, type StepItem, type StepPlan, type StepResult, type StepTiming } from '../engine/types.js';
import { stepShape } from '../engine/cost-model.js';

export type FinishReason = 'stop' | 'length' | 'abort';

/** A request the scheduler turned away: HTTP 429 with the quote, or 402 when its tenant's budget is spent. */
export type Rejected = (InstanceType<typeof RequestRejectedError> | InstanceType<typeof BudgetExhaustedError>) & { quote: Quote };

export interface Completion {
  text: string;
  tokens: number[];
  promptTokens: number;
  cachedTokens: number;
  finishReason: FinishReason;
  bill: Bill | undefined;
  preemptions: number;
  /** Per generated token (tokens[i]), when sampling.logprobs is set. */
  logprobs?: TokenLogprobs[];
  /** Per prompt position p ≥ 0, the log probability of prompt token p + 1, when promptLogprobs is set. */
  promptLogprobs?: TokenLogprobs[];
  /** The server's verdict, the same numbers its metrics count (response extension `outcome`). */
  outcome: { value_counted: number; slo_met: boolean; value_realized: number };
}

export interface GenerationRequest {
  /** The caller's id for the request (the HTTP response id), handed back to observers as `spec.id`. */
  id?: string;
  /** Text (encoded with the model's tokenizer, BOS first where the model wants it) or token ids. */
  prompt: string | number[];
  sampling: SamplingParams;
  /**
   * Called with each piece of completion text as it becomes final (never a broken UTF-8
   * sequence), with the log probabilities of the tokens delivered since the last call when
   * sampling.logprobs is set.
   */
  onText?: (delta: string, logprobs: TokenLogprobs[] | undefined) => void;
  /** Report the prompt's log probabilities with this many top alternatives (the whole prompt is computed, no cache hit). */
  promptLogprobs?: number;
  /** Structured output: every drawn token is one this grammar allows (the generator disposes of it at the end). */
  grammar?: TokenMasker;
  /** Called once, when the first token is delivered or the request ends without one. */
  onStart?: () => void;
  /** Called once the request is admitted or rejected (e.g. to send headers). */
  tenant?: string;
  value?: number;
  bid?: number;
  slo?: Slo;
  deadlineMs?: number;
  priority?: number;
  /** Aborts the request when signalled (client disconnect). */
  signal?: AbortSignal;
  /** Which API route it came through (a feature of the length model). */
  endpoint?: 'completion' | 'chat';
}

/**
 * One step as the server ran it: its shape (what the cost model prices) and its durations.
 * `periodMs` is the time from this step's plan to the next one's when the next followed at once
 * (the pace the serving loop actually kept, engine and everything around it), else null.
 */
export interface StepRecord {
  /** Clock at plan time, seconds. */
  at: number;
  tokens: number;
  /** Positions the attention reads (StepShape.contextTokens). */
  contextTokens: number;
  sequences: number;
  runs: number;
  /** The engine's execute, as the serving loop saw it (worker round trip included). */
  engineMs: number;
  periodMs: number | null;
  /**
   * Requests that reached the scheduler, and streams that ended (one per request unless it asked
   * for n), between this step's plan and the next: the serving loop's per-request work (HTTP, tokenizing, the response), which shares
   * the period with the step. Absent in logs written before they were recorded.
   */
  arrivals?: number;
  finished?: number;
}

interface Pending {
  detok: StreamDetokenizer;
  stop: StopMatcher;
  text: string;
  onText: GenerationRequest['onText'];
  resolve: (c: Completion) => void;
  reject: (e: unknown) => void;
  /** Tokens delivered so far. */
  generated: number;
  minTokens: number;
  adjuster: LogitAdjuster | undefined;
  logprobs: TokenLogprobs[] | undefined;
  /** logprobs[0 .. logprobsSent) went out with text already. */
  logprobsSent: number;
  promptLogprobs: TokenLogprobs[] | undefined;
  promptTop: number;
  grammar: TokenMasker | undefined;
  /** Generated tokens the grammar has accepted (from the prompt's end). */
  grammarAt: number;
  onStart: (() => void) | undefined;
}

/** What differs between the streams of one request. */
interface StreamInput {
  sampling: SamplingParams;
  grammar: TokenMasker | undefined;
  onText: ((delta: string, logprobs: TokenLogprobs[] | undefined) => void) | undefined;
  onStart: (() => void) | undefined;
  promptLogprobs: number | undefined;
}

/** n choices of one prompt (OpenAI's `n`, vLLM's parallel sampling). */
export interface ChoicesRequest extends Omit<GenerationRequest, 'onText' | 'grammar' | 'onStart'> {
  n: number;
  /** One grammar per choice, when the output is constrained. */
  grammars?: TokenMasker[];
  onText?: (index: number, delta: string, logprobs: TokenLogprobs[] | undefined) => void;
  /** Called after choices 1 .. n-1 are submitted (the serving loop's wake-up). */
  onSubmitted?: () => void;
}

export interface GeneratorOptions {
  policy?: string | Policy;
  /** The scheduling half of the serving geometry (the pool half is the engine's); defaults from GEOMETRY_DEFAULTS. */
  geometry?: Partial<Pick<Geometry, 'maxNumSeqs' | 'maxNumBatchedTokens' | 'prefillChunk'>>;
  /** Largest prompt slice fed in one step (overrides the geometry's). */
  prefillChunk?: number;
  /** Tokens per step, decodes plus prefill chunks (overrides the geometry's). */
  maxBatchTokens?: number;
  curves?: PriceCurves;
  ledger?: Ledger;
  prefixCaching?: boolean;
  antiThrashSteps?: number;
  /** Value per output token of requests that carry no `value` or `bid`, by tenant. */
  defaultBid?: (tenant: string) => number | undefined;
  /** The pricing policy's settings (risk price, retention). */
  shadow?: ShadowOptions;
  /** Predicts output lengths (default: the online mean); trained while the engine computes a step. */
  lengthModel?: LengthPredictor;
  /** Clearing prices (default on) and payment (default on); off only for ablations. */
  clearing?: boolean;
  payment?: boolean;
  basePrice?: number;
  /** Seconds; injected for tests. */
  clock?: () => number;
  /** Sees every step that ran requests, with its shape and how long it took (a step log, calibration). */
  onStep?: (s: StepRecord) => void;
  /** Sees every token and every finished request (metrics). */
  observer?: { onToken?(r: SchedRequest, now: number): void; onFinish?(r: SchedRequest, now: number): void };
}

/**
 * The real engine under the scheduler, with the text around it: prompts are tokenized,
 * sampled tokens detokenized as a stream that never splits a UTF-8 sequence, stop sequences
 * matched on the text (the scheduler stops the request when one matches), and each request's
 * promise settles with its completion and bill, or rejects with a quote.
 */
export class Generator {
  readonly scheduler: Scheduler;
  private readonly pending = new Map<number, Pending>();
  private readonly clock: () => number;
  private observer: GeneratorOptions['observer'];
  lastTiming: StepTiming | undefined;
  private readonly onStep: ((s: StepRecord) => void) | undefined;
  /** The last step that ran requests, until the next step's start gives it a period. */
  private lastStep: StepRecord | undefined;
  /** Requests submitted and requests finished since the last plan (for the step log). */
  private arrivedSincePlan = 0;
  private finishedSincePlan = 0;
  /** Over every step the engine ran: steps, tokens fed, KV bytes copied outside the graph. */
  readonly totals = { steps: 0, batchTokens: 0, kvBytesCopied: 0 };

  constructor(
    readonly engine: Engine,
    readonly model: LoadedModel,
    opts: GeneratorOptions = {},
  ) {
    const policy = typeof opts.policy === 'object' ? opts.policy : createPolicy(opts.policy ?? 'fcfs', opts.shadow ?? {});
    const info = engine.info;
    const g = opts.geometry ?? {};
    const maxBatchTokens = opts.maxBatchTokens ?? g.maxNumBatchedTokens ?? GEOMETRY_DEFAULTS.maxNumBatchedTokens;
    const config: SchedulerConfig = {
      maxBatchTokens,
      maxRunning: g.maxNumSeqs ?? info.maxSequences,
      prefillChunk: opts.prefillChunk ?? g.prefillChunk ?? Math.min(GEOMETRY_DEFAULTS.prefillChunk, maxBatchTokens),
      totalBlocks: info.totalBlocks,
      blockSize: info.blockSize,
      maxContext: info.maxContext,
      hostBlocks: info.hostBlocks,
      swapSecondsPerToken: info.swapSecondsPerToken,
      stopIds: model.stopIds,
    };
    if (opts.curves) config.curves = opts.curves;
    if (opts.ledger) config.ledger = opts.ledger;
    if (opts.prefixCaching !== undefined) config.prefixCaching = opts.prefixCaching;
    if (opts.antiThrashSteps !== undefined) config.antiThrashSteps = opts.antiThrashSteps;
    if (opts.defaultBid) config.defaultBid = opts.defaultBid;
    if (opts.clearing !== undefined) config.clearing = opts.clearing;
    if (opts.payment !== undefined) config.payment = opts.payment;
    if (opts.basePrice !== undefined) config.basePrice = opts.basePrice;
    if (opts.lengthModel !== undefined) config.lengthModel = opts.lengthModel;
    this.clock = opts.clock ?? (() => performance.now() / 1000);
    this.observer = opts.observer;
    this.onStep = opts.onStep;
    this.scheduler = new Scheduler(policy, config, this);
  }

  /** Requests submitted and not yet settled. */
  get inFlight(): number {
    // Settled only once flushed: a request the scheduler finished may still await delivery.
    return this.pending.size;
  }

  /** Whether a step is due although no request waits for one: finished sequences to close on the engine. */
  get engineWorkPending(): boolean {
    return this.scheduler.pendingCloses > 0;
  }

  /** Tokenizes a prompt the way a request will see it. */
  encodePrompt(prompt: string | number[]): number[] {
    if (typeof prompt !== 'string') return prompt.slice();
    return this.model.tokenizer.encode(prompt, { bos: this.model.addBos });
  }

  setObserver(observer: GeneratorOptions['observer']): void {
    this.observer = observer;
  }

  /** Clock the generator stamps arrivals and steps with, seconds. */
  now(): number {
    return this.clock();
  }

  /**
   * Queues a request. Input errors (context length, bad tokens) throw synchronously; the
   * returned promise settles when the request completes, is aborted, or is rejected.
   */
  submit(req: GenerationRequest): Promise<Completion> {
    const prompt = this.encodePrompt(req.prompt);
    const s = this.submitStreams(req, prompt, [{ sampling: req.sampling, grammar: req.grammar, onText: req.onText, onStart: req.onStart, promptLogprobs: req.promptLogprobs }]);
    return 'error' in s ? Promise.reject(s.error) : (s.settled[0] as Promise<Completion>);
  }

  /**
   * Generates n choices of one prompt as one request of n streams (the scheduler's StreamGroup):
   * admitted or turned away together, the prompt prefilled once and its blocks shared, billed as
   * one (the bill rides on the last choice to end). Seeded requests give choice i the seed + i,
   * as vLLM does, so choice i is what a single request with that seed would produce; a value for
   * the whole request counts an equal share per choice. If any choice is turned away or fails,
   * the others are aborted and the promise rejects with that error.
   */
  submitChoices(req: ChoicesRequest): Promise<Completion[]> {
    const { n, grammars, onText, onSubmitted, ...common } = req;
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`n must be a positive integer, got ${n}`);
    let prompt: number[];
    try {
      prompt = this.encodePrompt(common.prompt);
    } catch (e) {
      for (const g of grammars ?? []) g.dispose();
      return Promise.reject(e);
    }
    const seed = common.sampling.seed;
    const streams: StreamInput[] = [];
    for (let i = 0; i < n; i++) {
      streams.push({
        sampling: seed === undefined || i === 0 ? common.sampling : { ...common.sampling, seed: seed + i },
        grammar: grammars?.[i],
        onText: onText === undefined ? undefined : (d, l) => onText(i, d, l),
        onStart: undefined,
        // The prompt's log probabilities are the leader's to compute: its streams share them.
        promptLogprobs: i === 0 ? common.promptLogprobs : undefined,
      });
    }
    let submitted: ReturnType<Generator['submitStreams']>;
    try {
      submitted = this.submitStreams({ ...common, ...(common.value !== undefined ? { value: common.value / n } : {}) }, prompt, streams);
    } catch (e) {
      for (const g of grammars ?? []) g.dispose();
      return Promise.reject(e);
    }
    if ('error' in submitted) return Promise.reject(submitted.error);
    const { settled, seqs } = submitted;
    onSubmitted?.();
    return new Promise<Completion[]>((resolve, reject) => {
      const results: Completion[] = new Array(n);
      let left = n;
      let failed = false;
      settled.forEach((p, i) =>
        p.then(
          (c) => {
            results[i] = c;
            if (--left === 0 && !failed) resolve(results);
          },
          (e: unknown) => {
            if (failed) return;
            failed = true;
            for (const seq of seqs) this.scheduler.abort(seq, this.clock());
            reject(e);
          },
        ),
      );
    });
  }

  /**
   * Registers one request of `streams.length` streams with the scheduler, a Pending per stream
   * keyed by its sequence number, and returns their promises in stream order. Input errors
   * throw; an error from the scheduler (the request's value) is returned, its streams' grammars
   * disposed.
   */
  private submitStreams(
    req: Omit<GenerationRequest, 'sampling' | 'onText' | 'grammar' | 'onStart'>,
    prompt: number[],
    streams: StreamInput[],
  ): { settled: Promise<Completion>[]; seqs: number[] } | { error: unknown } {
    for (const t of prompt) {
      if (!Number.isInteger(t) || t < 0 || t >= this.model.vocabSize) throw new InvalidArgumentError(`prompt token ${t} is outside the vocabulary`);
    }
    const first = streams[0] as StreamInput;
    this.scheduler.checkFits(prompt.length, first.sampling.maxTokens);
    const arrival = this.clock();
    const specs: RequestSpec[] = [];
    const entries: Pending[] = [];
    const settled: Promise<Completion>[] = [];
    let sharedPromptLogprobs: TokenLogprobs[] | undefined;
    for (const st of streams) {
      const sp = st.sampling;
      specs.push({
        id: req.id ?? '',
        tenant: req.tenant ?? 'default',
        arrival,
        prompt,
        maxTokens: sp.maxTokens,
        sampling: sp,
        rng: Rng.create(sp.seed),
        ...(req.value !== undefined ? { value: req.value } : {}),
        ...(req.bid !== undefined ? { bid: req.bid } : {}),
        ...(req.slo !== undefined ? { slo: req.slo } : {}),
        ...(req.deadlineMs !== undefined ? { deadlineMs: req.deadlineMs } : {}),
        ...(req.priority !== undefined ? { priority: req.priority } : {}),
        ...(st.promptLogprobs !== undefined ? { computeWholePrompt: true } : {}),
        ...(req.endpoint !== undefined ? { endpoint: req.endpoint } : {}),
      });
      if (st.promptLogprobs !== undefined) sharedPromptLogprobs = [];
      let resolve!: (c: Completion) => void;
      let reject!: (e: unknown) => void;
      settled.push(
        new Promise<Completion>((res, rej) => {
          resolve = res;
          reject = rej;
        }),
      );
      entries.push({
        detok: new StreamDetokenizer(this.model.tokenizer, prompt[prompt.length - 1] ?? -1),
        stop: new StopMatcher(sp.stop),
        text: '',
        onText: st.onText,
        resolve,
        reject,
        generated: 0,
        minTokens: sp.minTokens ?? 0,
        adjuster: adjustsLogits(sp) ? new LogitAdjuster(sp, [...(sp.ignoreEos ? [] : this.model.stopIds), ...(sp.stopTokenIds ?? [])]) : undefined,
        logprobs: sp.logprobs !== undefined ? [] : undefined,
        logprobsSent: 0,
        // One array for the whole request: the leader fills it, every stream reports it.
        promptLogprobs: first.promptLogprobs !== undefined ? sharedPromptLogprobs : undefined,
        promptTop: first.promptLogprobs ?? 0,
        grammar: st.grammar,
        grammarAt: prompt.length,
        onStart: st.onStart,
      });
    }
    // Registered before submit: the scheduler may settle the request (reject it) at once.
    const base = this.scheduler.nextSeq;
    const seqs = entries.map((_, i) => base + i);
    entries.forEach((e, i) => this.pending.set(base + i, e));
    try {
      this.scheduler.submitGroup(specs);
      this.arrivedSincePlan++;
    } catch (error) {
      for (const seq of seqs) this.pending.delete(seq);
      for (const st of streams) st.grammar?.dispose();
      return { error };
    }
    const signal = req.signal;
    if (signal) {
      const abort = () => {
        for (const seq of seqs) this.scheduler.abort(seq, this.clock());
      };
      if (signal.aborted) abort();
      else signal.addEventListener('abort', abort, { once: true });
    }
    return { settled, seqs };
  }

  /**
   * Runs one engine step. Returns false when no request ran (idle, or everyone waiting); a plan
   * that only closes finished sequences or moves blocks still goes to the engine.
   */
  async step(): Promise<boolean> {
    const at = this.clock();
    // Counted up to the plan: what the plan itself settles (rejections) is this step's work.
    const arrivals = this.arrivedSincePlan;
    const finished = this.finishedSincePlan;
    this.arrivedSincePlan = 0;
    this.finishedSincePlan = 0;
    const plan = this.scheduler.plan(at);
    this.recordPrevious(at, plan.items.length > 0, arrivals, finished);
    if (emptyPlan(plan)) {
      this.scheduler.commit(NOTHING_RAN, this.clock(), 0);
      this.flush();
      return false;
    }
    let result: StepResult;
    if (this.decorate(plan)) await this.applyGrammars(plan);
    const running = this.engine.execute(plan);
    // The previous step's text goes out while this step computes (in the engine's worker). A
    // client callback that throws must not look like an engine failure: the step still runs.
    try {
      this.flush();
    } catch (e) {
      void running.catch(() => {});
      throw e;
    }
    // The length model learns here, while the engine's thread computes: a slice of about half
    // the last step, so training never holds a step back by more than a fraction of one.
    this.scheduler.lengthModel.train(Math.max(1, (this.lastTiming?.totalMs ?? 2) / 2));
    try {
      result = await running;
    } catch (e) {
      // A failed step is not committed: its requests fail, never silently, and their blocks are freed.
      const failed: Pending[] = [];
      for (const item of plan.items) {
        const p = this.pending.get(item.seq);
        this.pending.delete(item.seq);
        p?.grammar?.dispose();
        if (p) failed.push(p);
      }
      this.scheduler.stepFailed(this.clock());
      for (const p of failed) p.reject(e);
      throw e;
    }
    this.lastTiming = result.timing;
    if (this.onStep !== undefined && plan.items.length > 0) this.lastStep = stepRecord(at, plan.items, this.engine.info.blockSize, result);
    this.totals.steps++;
    this.totals.batchTokens += result.timing.batchTokens;
    this.totals.kvBytesCopied += result.timing.kvBytesCopied;
    this.collect(plan, result);
    this.scheduler.commit(result, this.clock(), result.timing.totalMs / 1000);
    return plan.items.length > 0;
  }

  /** Hands the previous step to onStep, with a period when this step follows it at once with work. */
  private recordPrevious(now: number, busy: boolean, arrivals: number, finished: number): void {
    const last = this.lastStep;
    if (last === undefined) return;
    this.lastStep = undefined;
    last.periodMs = busy ? (now - last.at) * 1000 : null;
    last.arrivals = arrivals;
    last.finished = finished;
    this.onStep?.(last);
  }

  /**
   * Per-request sampling inputs onto the plan's items: each sampled item's logit adjustment
   * (penalties, biases, min_tokens), and the prompt positions whose log probabilities are
   * still to report. Items are reused between steps, so every field is set each time.
   */
  private decorate(plan: StepPlan): boolean {
    let grammars = false;
    for (const item of plan.items) {
      item.adjust = undefined;
      item.mask = undefined;
      item.promptLogprobs = undefined;
      item.promptEnd = undefined;
      const p = this.pending.get(item.seq);
      if (p === undefined) continue;
      const r = this.scheduler.get(item.seq);
      if (r === undefined) continue;
      if (p.adjuster !== undefined && item.sample) item.adjust = p.adjuster.sync(r.tokens, r.promptLength, r.length);
      // A recompute after preemption feeds the prompt again: positions already reported are not asked twice.
      const reported = p.promptLogprobs?.length;
      if (reported !== undefined && item.offset === reported && reported < r.promptLength - 1) {
        item.promptLogprobs = p.promptTop;
        item.promptEnd = r.promptLength;
      }
      if (p.grammar !== undefined && item.sample) grammars = true;
    }
    return grammars;
  }

  /** Each grammar-bound item's mask, after its grammar has accepted the tokens generated since the last one. */
  private async applyGrammars(plan: StepPlan): Promise<void> {
    for (const item of plan.items) {
      const p = this.pending.get(item.seq);
      if (p?.grammar === undefined || !item.sample) continue;
      const r = this.scheduler.get(item.seq);
      if (r === undefined) continue;
      for (; p.grammarAt < r.length; p.grammarAt++) p.grammar.accept(r.tokens[p.grammarAt] as number);
      // Complete (its stop token accepted, as when ignore_eos keeps the request going): nothing may follow.
      if (p.grammar.done) {
        this.scheduler.stop(item.seq, this.clock());
        continue;
      }
      item.mask = await p.grammar.mask();
    }
  }

  private readonly stepLogprobs = new Map<number, TokenLogprobs>();

  /** Takes the step's log probabilities: prompt ones onto their requests, sampled ones for onToken. */
  private collect(plan: StepPlan, result: StepResult): void {
    this.stepLogprobs.clear();
    const { logprobs, promptLogprobs } = result;
    if (logprobs === undefined && promptLogprobs === undefined) return;
    for (let i = 0; i < plan.items.length; i++) {
      const seq = (plan.items[i] as StepPlan['items'][number]).seq;
      const lp = logprobs?.[i];
      if (lp !== undefined) this.stepLogprobs.set(seq, lp);
      const prompt = promptLogprobs?.[i];
      if (prompt !== undefined) this.pending.get(seq)?.promptLogprobs?.push(...prompt);
    }
  }

  /** Steps until every request has finished and the engine has been told of every finish. */
  async runUntilIdle(maxIdleSteps = 1000): Promise<void> {
    let idle = 0;
    while (this.scheduler.pending > 0) {
      if (await this.step()) idle = 0;
      else if (++idle > maxIdleSteps) throw new Error(`${this.scheduler.pending} requests cannot be scheduled`);
      else await new Promise((r) => setTimeout(r, 1));
    }
    // One more plan carries the last closes.
    await this.step();
    this.flush();
  }

  // --- scheduler listener ------------------------------------------------------------------

  // Tokens and finishes are queued during commit and turned into text by `flush`, which runs
  // while the next step computes: detokenizing, stop matching and writing to clients then
  // overlap the engine instead of delaying it.
  private readonly queuedRequests: SchedRequest[] = [];
  private readonly queuedTokens: number[] = [];
  private readonly queuedLogprobs: (TokenLogprobs | undefined)[] = [];

  onToken(r: SchedRequest, token: number, now: number): void {
    this.observer?.onToken?.(r, now);
    this.queuedRequests.push(r);
    this.queuedTokens.push(token);
    this.queuedLogprobs.push(this.stepLogprobs.get(r.seq));
  }

  onFinish(r: SchedRequest, now: number): void {
    // A request turned away before its streams forked is one rejection: its leader's.
    const g = r.group;
    if (!(g !== undefined && r.outcome === 'rejected' && !g.forked && r !== g.leader)) this.observer?.onFinish?.(r, now);
    this.finishedSincePlan++;
    this.queuedRequests.push(r);
    this.queuedTokens.push(-1);
    this.queuedLogprobs.push(undefined);
  }

  /** Delivers queued tokens and completions to their requests, in order. */
  flush(): void {
    const rs = this.queuedRequests;
    const ts = this.queuedTokens;
    const ls = this.queuedLogprobs;
    for (let i = 0; i < rs.length; i++) {
      const r = rs[i] as SchedRequest;
      const t = ts[i] as number;
      if (t >= 0) this.deliverToken(r, t, ls[i]);
      else this.deliverFinish(r);
    }
    rs.length = 0;
    ts.length = 0;
    ls.length = 0;
  }

  private deliverToken(r: SchedRequest, token: number, lp: TokenLogprobs | undefined): void {
    const p = this.pending.get(r.seq);
    if (p === undefined) return;
    p.generated++;
    if (p.onStart !== undefined) this.started(p);
    if (lp !== undefined) p.logprobs?.push(lp);
    const piece = p.detok.push(token);
    if (piece.length > 0 && this.emit(p, piece)) this.scheduler.stop(r.seq, this.clock());
  }

  private deliverFinish(r: SchedRequest): void {
    const p = this.pending.get(r.seq);
    if (p === undefined) return;
    this.pending.delete(r.seq);
    p.grammar?.dispose();
    if (p.onStart !== undefined) this.started(p);
    if (r.outcome === 'rejected') {
      const q = r.quote as Quote;
      const message = `request rejected (${q.reason}): ${q.message}`;
      const err = (q.reason === 'budget_exhausted' ? new BudgetExhaustedError(message) : new RequestRejectedError(message)) as Rejected;
      err.quote = q;
      p.reject(err);
      return;
    }
    if (!p.stop.stopped) {
      const tail = p.detok.flush();
      if (tail.length > 0) this.emit(p, tail);
      const rest = p.stop.flush();
      if (rest.length > 0) {
        p.text += rest;
        p.onText?.(rest, this.unsentLogprobs(p));
      }
    }
    const unsent = this.unsentLogprobs(p);
    if (unsent !== undefined && unsent.length > 0) p.onText?.('', unsent);
    p.resolve({
      text: p.text,
      tokens: Array.from(r.tokens.subarray(r.promptLength, r.length)),
      promptTokens: r.promptLength,
      cachedTokens: r.cachedTokens,
      finishReason: p.stop.stopped ? 'stop' : r.finishReason === 'length' ? 'length' : r.finishReason === 'abort' ? 'abort' : 'stop',
      bill: r.finalBill,
      preemptions: r.preemptions,
      ...(p.logprobs !== undefined ? { logprobs: p.logprobs.slice(0, r.length - r.promptLength) } : {}),
      ...(p.promptLogprobs !== undefined ? { promptLogprobs: p.promptLogprobs } : {}),
      outcome: { value_counted: r.valueAt(r.generated), slo_met: r.metSlo(), value_realized: r.valueRealized() },
    });
  }

  private started(p: Pending): void {
    const f = p.onStart as () => void;
    p.onStart = undefined;
    // After this flush: the sibling requests it submits must not be delivered to mid-loop.
    queueMicrotask(f);
  }

  /** Log probabilities of tokens delivered since the last text went out. */
  private unsentLogprobs(p: Pending): TokenLogprobs[] | undefined {
    if (p.logprobs === undefined) return undefined;
    const out = p.logprobs.slice(p.logprobsSent);
    p.logprobsSent = p.logprobs.length;
    return out;
  }

  /** Passes text through the stop matcher; returns true when a stop sequence matched. */
  private emit(p: Pending, piece: string): boolean {
    const { emit, stopped } = p.stop.push(piece, p.generated >= p.minTokens);
    if (emit.length > 0) {
      p.text += emit;
      p.onText?.(emit, this.unsentLogprobs(p));
    }
    return stopped;
  }
}

function stepRecord(at: number, items: readonly StepItem[], blockSize: number, result: StepResult): StepRecord {
  const shape = stepShape(items, blockSize, { tokens: 0, contextTokens: 0, sequences: 0, runs: 0 });
  return { at, ...shape, engineMs: result.timing.totalMs, periodMs: null };
}

const NOTHING_RAN: StepResult = { tokens: new Int32Array(0), timing: { totalMs: 0, runMs: 0, sampleMs: 0, glueMs: 0, runs: 0, batchTokens: 0, kvBytesCopied: 0 } };

/** Convenience: one prompt, start to finish. */
export async function generateOnce(engine: Engine, model: LoadedModel, prompt: string | number[], sampling: SamplingParams): Promise<Completion> {
  const g = new Generator(engine, model);
  const done = g.submit({ prompt, sampling });
  await g.runUntilIdle();
  return done;
}
