import type { PriceCurves } from '../economy/curves.js';
import { newLengthPredictor, type LengthModelKind, type LengthPredictor } from '../economy/length-model.js';
import { Ledger } from '../economy/ledger.js';
import { CostModelEngine, type StepProfile } from '../engine/cost-model.js';
import { Rng } from '../sampling/rng.js';
import { validateSamplingParams } from '../sampling/params.js';
import { Heap } from '../scheduler/deque.js';
import { createPolicy } from '../scheduler/policies/index.js';
import type { ShadowOptions } from '../scheduler/policies/shadow.js';
import type { SchedRequest } from '../scheduler/request.js';
import { Scheduler, type SchedulerConfig } from '../scheduler/scheduler.js';
import { resolveGeometry, type Geometry, type GeometryOptions } from '../geometry.js';
import { InvalidArgumentError } from '../errors.js';
import { meetsSlo, realizedValue, summarize, tpotMs, type RequestOutcome, type Summary } from './metrics.js';
import { answerQuote } from './client.js';
import { declared, type TraceRequest } from './trace.js';

export interface SimOptions {
  policy: string;
  profile: StepProfile;
  curves?: PriceCurves;
  /**
   * The serving geometry, with the server's defaults (src/geometry.ts); the profile supplies
   * the model's context (which --max-model-len may exceed here: the cost model extrapolates)
   * and bytes per token (to turn --kv-memory bytes into blocks).
   */
  geometry?: GeometryOptions;
  antiThrashSteps?: number;
  prefixCaching?: boolean;
  shadow?: ShadowOptions;
  /** Clearing prices on (default) or off: off leaves prices to the curves alone. */
  clearing?: boolean;
  /** Charge bills (default true). */
  payment?: boolean;
  /** Tenants' budgets: with any, the run has a ledger that escrows and caps claims as the server does. */
  budgets?: ReadonlyMap<string, number>;
  /** The most one request may claim to be worth (the server's --max-value); default unlimited. */
  maxValue?: number;
  /**
   * Predicts output lengths: a kind (a fresh predictor per run; 'learned' needs TensorFlow.js
   * loaded first, see loadTf) or a predictor of the caller's. Default the online mean. Trained
   * at deterministic points of the run.
   */
  lengthModel?: LengthModelKind | LengthPredictor;
  /**
   * The scheduler is told each request's true output length (trace replays of old: max_tokens =
   * output). Default false: requests carry their max_tokens and end by themselves.
   */
  knownLengths?: boolean;
  /** Compute cost per token for welfare (DESIGN.md §5: realized value − compute cost at the base price). */
  basePrice?: number;
  /** Called every `progressEvery` finished requests (progress bars). */
  onProgress?: (finished: number, total: number) => void;
  /** Check block conservation after every step (tests). */
  checkInvariants?: (s: Scheduler) => void;
  /** Stop with an error if simulated time passes this (a scheduler that never drains). */
  maxSimSeconds?: number;
}

export interface SimResult {
  summary: Summary;
  /** In trace order. */
  outcomes: RequestOutcome[];
}

export const DEFAULT_BASE_PRICE = 2e-4;

/** A request's next attempt: its first at its trace time, a retry after a quoted wait. */
interface Attempt {
  t: number;
  index: number;
  attempt: number;
  maxTokens: number;
}

/**
 * Tokens for a trace request whose prompt shares its leading `prefix` entries with other
 * requests: each prefix entry's span is filled from that entry's hash, so equal entries give
 * equal tokens (and so equal KV blocks), and the rest from the request's own index.
 */
export function synthesizePrompt(r: TraceRequest, index: number): Int32Array {
  const out = new Int32Array(r.promptTokens);
  const covered = Math.min(r.prefix.length * r.prefixBlockTokens, r.promptTokens);
  for (let p = 0; p < r.promptTokens; p++) {
    const inPrefix = p < covered;
    const key = inPrefix ? (r.prefix[Math.floor(p / r.prefixBlockTokens)] as number) : index;
    const pos = inPrefix ? p % r.prefixBlockTokens : p;
    let h = Math.imul((key | 0) ^ 0x9e3779b9 ^ (inPrefix ? 0 : 0x5bd1e995), 0x85ebca6b) ^ Math.imul(pos + 1, 0xc2b2ae35);
    h ^= h >>> 15;
    h = Math.imul(h, 0x2c1b3c6d);
    h ^= h >>> 12;
    out[p] = 3 + ((h >>> 0) % 31997);
  }
  return out;
}

/**
 * Replays a trace through the real scheduler on the cost-model engine: arrivals enter at their
 * trace times, each step takes the time the calibrated profile predicts for what it does, and
 * every request ends completed or rejected with a quote (`lost` counts any that do not). A
 * request's output ends at its trace length by itself (the simulator stops it there, as a model
 * emitting EOS would), within the max_tokens it sent; the scheduler never sees that length
 * unless `knownLengths`. Clients with a `client` behaviour answer 429 quotes by retrying.
 */
export function simulate(trace: readonly TraceRequest[], o: SimOptions): SimResult {
  const p = o.profile;
  const g = simGeometry(o);
  const maxContext = g.maxModelLen;
  const engine = new CostModelEngine(p, { maxSequences: g.maxNumSeqs, maxContext, blockSize: g.blockSize, totalBlocks: g.kvBlocks, hostBlocks: g.swapBlocks });
  const outcomes: (RequestOutcome | undefined)[] = new Array(trace.length);
  const basePrice = o.basePrice ?? DEFAULT_BASE_PRICE;
  let finished = 0;
  const config: SchedulerConfig = {
    maxBatchTokens: g.maxNumBatchedTokens,
    maxRunning: g.maxNumSeqs,
    prefillChunk: g.prefillChunk,
    totalBlocks: g.kvBlocks,
    blockSize: g.blockSize,
    maxContext,
    hostBlocks: engine.info.hostBlocks,
    swapSecondsPerToken: engine.info.swapSecondsPerToken,
    initialStepSeconds: (p.baseMs + p.perTokenMs * 32 + p.perSequenceMs * 32) / 1000,
    basePrice,
  };
  if (o.curves) config.curves = o.curves;
  if (o.antiThrashSteps !== undefined) config.antiThrashSteps = o.antiThrashSteps;
  if (o.prefixCaching !== undefined) config.prefixCaching = o.prefixCaching;
  if (o.clearing !== undefined) config.clearing = o.clearing;
  if (o.payment !== undefined) config.payment = o.payment;
  if (o.lengthModel !== undefined) config.lengthModel = typeof o.lengthModel === 'string' ? newLengthPredictor(o.lengthModel) : o.lengthModel;
  if ((o.budgets !== undefined && o.budgets.size > 0) || o.maxValue !== undefined) {
    const ledger = new Ledger(o.maxValue !== undefined ? { defaultMaxValue: o.maxValue } : {});
    for (const [tenant, budget] of o.budgets ?? []) ledger.setBudget(tenant, budget);
    config.ledger = ledger;
  }
  o.curves?.tokens.reset?.();
  o.curves?.kv.reset?.();

  const arrivals = new Heap<Attempt>((a, b) => a.t < b.t || (a.t === b.t && (a.index < b.index || (a.index === b.index && a.attempt < b.attempt))));
  const attemptsOf = new Int32Array(trace.length);
  /** Natural output length of each request's current attempt, for stopping it there. */
  const natural = new Map<number, number>();

  // Requests that ended since the serving loop last paid for their responses (profile.perFinishMs).
  let ended = 0;
  const record = (r: SchedRequest, now: number) => {
    ended++;
    const i = r.spec.tag as number;
    natural.delete(r.seq);
    const t = trace[i] as TraceRequest;
    if (r.outcome === 'rejected' && r.quote !== undefined && t.client !== undefined) {
      const worth = t.value ?? (t.bid ?? 0) * r.spec.maxTokens;
      const left = t.deadlineMs !== undefined ? t.deadlineMs - (now - t.t) * 1000 : undefined;
      const next = answerQuote(t.client, r.quote, attemptsOf[i] as number, r.spec.maxTokens, worth, left);
      if (next !== undefined) {
        arrivals.push({ t: now + next.afterSeconds, index: i, attempt: (attemptsOf[i] as number) + 1, maxTokens: next.maxTokens });
        return;
      }
    }
    const reached = !Number.isNaN(r.firstTokenAt);
    const ttft = reached ? (r.firstTokenAt - r.spec.arrival) * 1000 : null;
    const e2e = r.outcome === 'completed' ? (now - r.spec.arrival) * 1000 : null;
    const out: RequestOutcome = {
      id: t.id,
      tenant: t.tenant,
      outcome: r.outcome ?? 'aborted',
      ttft_ms: ttft,
      tpot_ms: ttft !== null && e2e !== null ? tpotMs(e2e, ttft, r.generated) : null,
      e2e_ms: e2e,
      prompt_tokens: t.promptTokens,
      cached_tokens: r.cachedTokens,
      output_tokens: r.generated,
      preemptions: r.preemptions,
      value: 0,
      met_slo: false,
      bill: r.finalBill ?? null,
      attempts: attemptsOf[i] as number,
    };
    if (r.quote) out.quote = r.quote;
    // Judged by the true value and the SLO of the attempt that ran, from that attempt's arrival.
    const expectation = {
      arrival: r.spec.arrival,
      ...(t.value !== undefined ? { value: t.value } : {}),
      ...(t.bid !== undefined ? { bid: t.bid } : {}),
      ...(t.slo ? { slo: t.slo } : {}),
      ...(r.spec.deadlineMs !== undefined ? { deadlineMs: r.spec.deadlineMs } : {}),
      outputTokens: Math.min(t.outputTokens, clampOutput(t, maxContext)),
    };
    out.met_slo = meetsSlo(expectation, out);
    out.value = realizedValue(expectation, out.met_slo, out.output_tokens);
    outcomes[i] = out;
    finished++;
    if (o.onProgress && (finished % 256 === 0 || finished === trace.length)) o.onProgress(finished, trace.length);
  };

  const sched = new Scheduler(createPolicy(o.policy, o.shadow ?? {}), config, {
    onFinish: record,
    // The model "emits EOS" at the request's natural length.
    onToken: (r) => {
      if (r.generated >= (natural.get(r.seq) ?? Infinity)) sched.stop(r.seq);
    },
  });
  const sampling = validateSamplingParams({ temperature: 0, max_tokens: 1 });
  const rng = new Rng(0);
  for (let i = 0; i < trace.length; i++) {
    const t = trace[i] as TraceRequest;
    arrivals.push({ t: t.t, index: i, attempt: 1, maxTokens: requestMaxTokens(t, maxContext, o.knownLengths === true) });
  }
  let clock = trace.length > 0 ? (trace[0] as TraceRequest).t : 0;
  const start = clock;
  let computed = 0;
  const limit = o.maxSimSeconds ?? 30 * 24 * 3600;
  const lengthModel = sched.lengthModel;
  // The serving loop's own time per request, on the clock between steps as on the server's.
  const arrivalSeconds = (p.perArrivalMs ?? 0) / 1000;
  const finishSeconds = (p.perFinishMs ?? 0) / 1000;
  while (arrivals.length > 0 || sched.pending > 0) {
    let arrived = 0;
    for (let a = arrivals.peek(); a !== undefined && a.t <= clock; a = arrivals.peek()) {
      arrivals.pop();
      submit(a, clock);
      arrived++;
    }
    clock += arrived * arrivalSeconds + ended * finishSeconds;
    ended = 0;
    const plan = sched.plan(clock);
    if (plan.items.length === 0) {
      // Block moves without a run (a preemption that freed nothing usable) still take time.
      const moved = plan.kvOps.length > 0 ? engine.executeSync(plan).timing.totalMs / 1000 : 0;
      clock += moved;
      sched.commit({ tokens: new Int32Array(0), timing: { totalMs: 0, runMs: 0, sampleMs: 0, glueMs: 0, runs: 0, batchTokens: 0, kvBytesCopied: 0 } }, clock, 0);
      const next = arrivals.peek();
      if (next !== undefined && sched.pending === 0) clock = Math.max(clock, next.t);
      else if (sched.pending > 0) clock += Math.max(sched.stepSeconds(), 1e-3);
      if (clock - start > limit) throw new Error(`simulation stalled: ${sched.pending} requests pending after ${limit} simulated seconds`);
      continue;
    }
    const result = engine.executeSync(plan);
    for (const it of plan.items) computed += it.count;
    const dt = result.timing.totalMs / 1000;
    clock += dt;
    sched.commit(result, clock, dt);
    // Training runs between steps here, where it cannot delay one: same inputs, same predictions.
    lengthModel.train(Infinity);
    o.checkInvariants?.(sched);
  }

  function submit(a: Attempt, now: number): void {
    const i = a.index;
    const t = trace[i] as TraceRequest;
    attemptsOf[i] = a.attempt;
    const outputTokens = Math.min(clampOutput(t, maxContext), a.maxTokens);
    const promptTokens = Math.min(t.promptTokens, maxContext - a.maxTokens);
    const prompt = synthesizePrompt(promptTokens === t.promptTokens ? t : { ...t, promptTokens }, i);
    const claim = declared(t);
    // A retry's deadline is what is left of the original one.
    const deadlineMs = t.deadlineMs !== undefined ? Math.max(1, t.deadlineMs - (now - t.t) * 1000) : undefined;
    const spec = {
      id: t.id,
      tenant: t.tenant,
      arrival: now,
      prompt,
      maxTokens: a.maxTokens,
      sampling: { ...sampling, maxTokens: a.maxTokens },
      rng,
      tag: i,
      ...(claim.value !== undefined ? { value: claim.value } : {}),
      ...(claim.bid !== undefined ? { bid: claim.bid } : {}),
      ...(t.slo ? { slo: t.slo } : {}),
      ...(deadlineMs !== undefined ? { deadlineMs } : {}),
      ...(t.priority !== undefined ? { priority: t.priority } : {}),
      ...(o.knownLengths ? { knownOutputTokens: outputTokens } : {}),
    };
    const r = sched.submit(spec);
    // Shorter than max_tokens: the model "emits EOS" there; else max_tokens cuts it off (by length).
    if (r.state !== 'done' && outputTokens < a.maxTokens) natural.set(r.seq, outputTokens);
  }

  const list = outcomes.map((x, i) => x ?? lostOutcome(trace[i] as TraceRequest, attemptsOf[i] as number));
  const end = list.reduce((m, x, i) => Math.max(m, (trace[i] as TraceRequest).t + (x.e2e_ms ?? 0) / 1000), start);
  const summary = summarize(o.policy, outcomes.filter((x): x is RequestOutcome => x !== undefined), {
    requests: trace.length,
    durationS: Math.max(end, clock) - start,
    arrivalSpanS: trace.length > 0 ? (trace[trace.length - 1] as TraceRequest).t - start : 0,
    preemptions: sched.counters.preemptions,
    swaps: sched.counters.swaps,
    computedTokens: computed,
    recomputedTokens: sched.counters.recomputedTokens,
    basePrice,
  });
  return { summary, outcomes: list };
}

/** The geometry a simulation runs: the server's defaults, with the profile standing in for the model. */
export function simGeometry(o: Pick<SimOptions, 'geometry' | 'profile'>): Geometry {
  // The fields these replaced would be ignored without a word (object spreads escape the type check).
  for (const old of ['maxRunning', 'maxBatchTokens', 'prefillChunk', 'totalBlocks', 'maxContext']) {
    if (old in o) throw new InvalidArgumentError(`SimOptions.${old} is gone: the serving geometry goes in SimOptions.geometry (src/geometry.ts)`);
  }
  const requested = o.geometry ?? {};
  return resolveGeometry(requested, {
    maxContext: requested.maxModelLen ?? o.profile.maxContext,
    ...(o.profile.kvBytesPerToken !== undefined ? { kvBytesPerToken: o.profile.kvBytesPerToken } : {}),
    // A simulation must not depend on the memory free where it runs: no fractions, no cap.
    freeMemory: NaN,
  });
}

/** The output a request can have in this context: its trace length, clamped so that some prompt still fits. */
function clampOutput(t: TraceRequest, maxContext: number): number {
  return Math.max(1, Math.min(t.outputTokens, maxContext - Math.min(t.promptTokens, maxContext - 1)));
}

/** The max_tokens a request sends: its trace's, else its output length; within the context, leaving room for a prompt token. */
function requestMaxTokens(t: TraceRequest, maxContext: number, known: boolean): number {
  const out = clampOutput(t, maxContext);
  const want = known || t.maxTokens === undefined ? out : t.maxTokens;
  return Math.max(1, Math.min(want, maxContext - Math.min(t.promptTokens, maxContext - Math.min(out, want))));
}

function lostOutcome(t: TraceRequest, attempts: number): RequestOutcome {
  return { id: t.id, tenant: t.tenant, outcome: 'aborted', ttft_ms: null, tpot_ms: null, e2e_ms: null, prompt_tokens: t.promptTokens, cached_tokens: 0, output_tokens: 0, preemptions: 0, value: 0, met_slo: false, bill: null, attempts: Math.max(1, attempts) };
}
