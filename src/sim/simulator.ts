import type { PriceCurves } from '../economy/curves.js';
import { CostModelEngine, type StepProfile } from '../engine/cost-model.js';
import { Rng, validateSamplingParams } from '../engine/sampling.js';
import { createPolicy } from '../scheduler/policies/index.js';
import type { ShadowOptions } from '../scheduler/policies/shadow.js';
import type { SchedRequest } from '../scheduler/request.js';
import { Scheduler, type SchedulerConfig } from '../scheduler/scheduler.js';
import { meetsSlo, realizedValue, summarize, tpotMs, type RequestOutcome, type Summary } from './metrics.js';
import type { TraceRequest } from './trace.js';

export interface SimOptions {
  policy: string;
  profile: StepProfile;
  curves?: PriceCurves;
  /** Scheduler geometry; defaults come from the profile. */
  maxBatchTokens?: number;
  maxRunning?: number;
  prefillChunk?: number;
  totalBlocks?: number;
  maxContext?: number;
  antiThrashSteps?: number;
  prefixCaching?: boolean;
  shadow?: ShadowOptions;
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
 * every request ends completed or rejected with a quote (`lost` counts any that do not).
 */
export function simulate(trace: readonly TraceRequest[], o: SimOptions): SimResult {
  const p = o.profile;
  const maxRunning = o.maxRunning ?? p.maxSequences;
  const maxContext = o.maxContext ?? p.maxContext;
  const totalBlocks = o.totalBlocks ?? maxRunning * Math.ceil(maxContext / p.blockSize);
  const engine = new CostModelEngine(p, { maxSequences: maxRunning, maxContext, totalBlocks });
  const outcomes: (RequestOutcome | undefined)[] = new Array(trace.length);
  const basePrice = o.basePrice ?? DEFAULT_BASE_PRICE;
  let finished = 0;
  const config: SchedulerConfig = {
    maxBatchTokens: o.maxBatchTokens ?? 512,
    maxRunning,
    prefillChunk: o.prefillChunk ?? 256,
    totalBlocks,
    blockSize: p.blockSize,
    maxContext,
    hostBlocks: engine.info.hostBlocks,
    swapSecondsPerToken: engine.info.swapSecondsPerToken,
    initialStepSeconds: (p.baseMs + p.perTokenMs * 32 + p.perSequenceMs * 32) / 1000,
  };
  if (o.curves) config.curves = o.curves;
  if (o.antiThrashSteps !== undefined) config.antiThrashSteps = o.antiThrashSteps;
  if (o.prefixCaching !== undefined) config.prefixCaching = o.prefixCaching;
  o.curves?.tokens.reset?.();
  o.curves?.kv.reset?.();

  const record = (r: SchedRequest, now: number) => {
    const i = r.spec.tag as number;
    const t = trace[i] as TraceRequest;
    const reached = !Number.isNaN(r.firstTokenAt);
    const ttft = reached ? (r.firstTokenAt - t.t) * 1000 : null;
    const e2e = r.outcome === 'completed' ? (now - t.t) * 1000 : null;
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
    };
    if (r.quote) out.quote = r.quote;
    const expectation = { arrival: t.t, ...(t.value !== undefined ? { value: t.value } : {}), ...(t.bid !== undefined ? { bid: t.bid } : {}), ...(t.slo ? { slo: t.slo } : {}), ...(t.deadlineMs !== undefined ? { deadlineMs: t.deadlineMs } : {}) };
    out.met_slo = meetsSlo(expectation, out);
    out.value = realizedValue(expectation, out.met_slo, out.output_tokens);
    outcomes[i] = out;
    finished++;
    if (o.onProgress && (finished % 256 === 0 || finished === trace.length)) o.onProgress(finished, trace.length);
  };

  const sched = new Scheduler(createPolicy(o.policy, o.shadow ?? {}), config, { onFinish: record });
  const sampling = validateSamplingParams({ temperature: 0, max_tokens: 1 });
  const rng = new Rng(0);
  let clock = trace.length > 0 ? (trace[0] as TraceRequest).t : 0;
  const start = clock;
  let next = 0;
  let computed = 0;
  const limit = o.maxSimSeconds ?? 30 * 24 * 3600;
  while (next < trace.length || sched.pending > 0) {
    while (next < trace.length && (trace[next] as TraceRequest).t <= clock) {
      const t = trace[next] as TraceRequest;
      const outputTokens = Math.max(1, Math.min(t.outputTokens, maxContext - Math.min(t.promptTokens, maxContext - 1)));
      const promptTokens = Math.min(t.promptTokens, maxContext - outputTokens);
      const prompt = synthesizePrompt(promptTokens === t.promptTokens ? t : { ...t, promptTokens }, next);
      const spec = {
        id: t.id,
        tenant: t.tenant,
        arrival: t.t,
        prompt,
        maxTokens: outputTokens,
        sampling: { ...sampling, maxTokens: outputTokens },
        rng,
        ...(t.value !== undefined ? { value: t.value } : {}),
        ...(t.bid !== undefined ? { bid: t.bid } : {}),
        ...(t.slo ? { slo: t.slo } : {}),
        ...(t.deadlineMs !== undefined ? { deadlineMs: t.deadlineMs } : {}),
        ...(t.priority !== undefined ? { priority: t.priority } : {}),
      };
      sched.submit({ ...spec, tag: next });
      next++;
    }
    const plan = sched.plan(clock);
    if (plan.items.length === 0) {
      // Block moves without a run (a preemption that freed nothing usable) still take time.
      const moved = plan.kvOps.length > 0 ? engine.executeSync(plan).timing.totalMs / 1000 : 0;
      clock += moved;
      sched.commit({ tokens: new Int32Array(0), timing: { totalMs: 0, runMs: 0, sampleMs: 0, glueMs: 0, runs: 0, batchTokens: 0, kvBytesCopied: 0 } }, clock, 0);
      if (next < trace.length) clock = Math.max(clock, (trace[next] as TraceRequest).t);
      else if (sched.pending > 0) clock += Math.max(sched.stepSeconds(), 1e-3);
      if (clock - start > limit) throw new Error(`simulation stalled: ${sched.pending} requests pending after ${limit} simulated seconds`);
      continue;
    }
    const result = engine.executeSync(plan);
    for (const it of plan.items) computed += it.count;
    const dt = result.timing.totalMs / 1000;
    clock += dt;
    sched.commit(result, clock, dt);
    o.checkInvariants?.(sched);
  }
  const list = outcomes.map((x, i) => x ?? lostOutcome(trace[i] as TraceRequest));
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

function lostOutcome(t: TraceRequest): RequestOutcome {
  return { id: t.id, tenant: t.tenant, outcome: 'aborted', ttft_ms: null, tpot_ms: null, e2e_ms: null, prompt_tokens: t.promptTokens, cached_tokens: 0, output_tokens: 0, preemptions: 0, value: 0, met_slo: false, bill: null };
}
