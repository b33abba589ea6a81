import { createWriteStream, existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { loadCurveFile } from '../economy/curves.js';
import { loadProfile, type StepProfile } from '../engine/cost-model.js';
import { calibrate } from '../engine/calibrate.js';
import { profileFromSteps, readStepLog } from '../serving/step-log.js';
import { cpus } from 'node:os';
import { createPolicy } from '../scheduler/policies/index.js';
import type { ShadowOptions } from '../scheduler/policies/shadow.js';
import { LENGTH_MODELS, type LengthModelKind } from '../economy/length-model.js';
import { loadTf } from '../economy/tfjs.js';
import { packageRoot } from '../models/importers.js';
import { simGeometry, simulate, type SimOptions } from '../sim/simulator.js';
import { geometryFromCli, type GeometryCliOptions } from './geometry-options.js';
import { readTrace, type TraceOptions, type TraceRequest } from '../sim/trace.js';
import { defaultWorkload, loadWorkload, tenantBudgets } from '../sim/workload.js';
import type { Summary } from '../sim/metrics.js';

export const DEFAULT_PROFILE = 'bench/profiles/stories15m-cpu.json';

export interface TraceCliOptions {
  trace: string;
  format?: string;
  rateScale?: number;
  lengthScale?: number;
  limit?: number;
  start?: number;
  duration?: number;
  maxPromptTokens?: number;
  maxOutputTokens?: number;
  workload?: string;
  seed?: number;
}

/** Reads a trace the way every tool (sim, tune, bench) does, a default workload where it has no economics. */
export async function readTraceFromCli(o: TraceCliOptions): Promise<TraceRequest[]> {
  const opts: TraceOptions = { workload: o.workload ? await loadWorkload(o.workload) : defaultWorkload() };
  if (o.format !== undefined) opts.format = o.format as NonNullable<TraceOptions['format']>;
  for (const k of ['rateScale', 'lengthScale', 'limit', 'start', 'duration', 'maxPromptTokens', 'maxOutputTokens', 'seed'] as const) {
    const v = o[k];
    if (v !== undefined) opts[k] = v;
  }
  const reqs = await readTrace(o.trace, opts);
  if (reqs.length === 0) throw new InvalidArgumentError(`${o.trace}: no requests (after start/limit/duration)`);
  return reqs;
}

export async function profileFromCli(path: string | undefined): Promise<StepProfile> {
  const p = path ?? join(packageRoot(), DEFAULT_PROFILE);
  if (!existsSync(p)) throw new InvalidArgumentError(`profile ${p} not found (make one with marginal calibrate)`);
  return loadProfile(p);
}

interface SimCliOptions extends TraceCliOptions, GeometryCliOptions {
  policy: string;
  curve?: string;
  profile?: string;
  json?: boolean;
  requestsOut?: string;
  basePrice?: number;
  maxValue?: number;
  riskPrice?: number;
  retention?: string;
  clearing?: boolean;
  payment?: boolean;
  lengthModel?: string;
}

/** The economy's CLI settings (serve, sim, tune): checked, in the form the scheduler takes. */
export function economyFromCli(
  o: { maxValue?: number; riskPrice?: number; retention?: string; clearing?: boolean; payment?: boolean; lengthModel?: string },
  defaultLengthModel: LengthModelKind = 'learned',
): {
  shadow: ShadowOptions;
  clearing: boolean;
  payment: boolean;
  maxValue?: number;
  lengthModel: LengthModelKind;
} {
  const lengthModel = (o.lengthModel ?? defaultLengthModel) as LengthModelKind;
  if (!LENGTH_MODELS.includes(lengthModel)) throw new InvalidArgumentError(`--length-model must be ${LENGTH_MODELS.join(' or ')} (got ${JSON.stringify(o.lengthModel)})`);
  if (o.maxValue !== undefined && !(o.maxValue >= 0)) throw new InvalidArgumentError(`--max-value must be a number >= 0 (got ${o.maxValue})`);
  if (o.riskPrice !== undefined && !(o.riskPrice >= 0)) throw new InvalidArgumentError(`--risk-price must be a number >= 0 (got ${o.riskPrice})`);
  if (o.retention !== undefined && o.retention !== 'keep-value' && o.retention !== 'lru') throw new InvalidArgumentError(`--retention must be keep-value or lru (got ${JSON.stringify(o.retention)})`);
  const shadow: ShadowOptions = {};
  if (o.riskPrice !== undefined) shadow.riskPrice = o.riskPrice;
  if (o.retention !== undefined) shadow.retention = o.retention as 'keep-value' | 'lru';
  return { shadow, clearing: o.clearing !== false, payment: o.payment !== false, lengthModel, ...(o.maxValue !== undefined ? { maxValue: o.maxValue } : {}) };
}

export async function simOptionsFromCli(o: SimCliOptions): Promise<SimOptions> {
  createPolicy(o.policy);
  const s: SimOptions = { policy: o.policy, profile: await profileFromCli(o.profile) };
  if (o.curve) s.curves = await loadCurveFile(o.curve);
  s.geometry = geometryFromCli(o);
  // Bad geometry fails here, before the trace is read.
  simGeometry(s);
  if (o.basePrice !== undefined) s.basePrice = o.basePrice;
  const econ = economyFromCli(o);
  s.shadow = econ.shadow;
  s.clearing = econ.clearing;
  s.payment = econ.payment;
  if (econ.lengthModel === 'learned') await loadTf();
  s.lengthModel = econ.lengthModel;
  if (econ.maxValue !== undefined) s.maxValue = econ.maxValue;
  const budgets = tenantBudgets(o.workload ? await loadWorkload(o.workload) : defaultWorkload());
  if (budgets.size > 0) s.budgets = budgets;
  return s;
}

export async function runSim(o: SimCliOptions): Promise<void> {
  const opts = await simOptionsFromCli(o);
  const trace = await readTraceFromCli(o);
  const { summary, outcomes } = simulate(trace, opts);
  if (o.requestsOut) {
    const out = createWriteStream(o.requestsOut);
    for (const line of outcomes) out.write(JSON.stringify(line) + '\n');
    await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));
  }
  process.stdout.write(o.json ? JSON.stringify(summary) + '\n' : formatSummary(summary));
}

export function formatSummary(s: Summary): string {
  const f = (x: number | null, d = 1) => (x === null ? '-' : x.toFixed(d));
  return [
    `policy ${s.policy}: ${s.requests} requests, ${s.completed} completed, ${s.rejected} rejected, ${s.aborted} aborted, ${s.lost} lost, ${s.preempted} preemptions`,
    `welfare ${s.welfare.toFixed(3)}  value realized ${s.value_realized.toFixed(3)}  SLO met ${s.slo_met} (${f(s.goodput_rps, 3)} req/s)  revenue ${s.revenue.toFixed(3)}`,
    `throughput ${f(s.throughput_tok_s, 0)} tok/s over ${f(s.duration_s, 1)} s  cache hit rate ${(s.cache_hit_rate * 100).toFixed(1)}%  recomputed ${s.recomputed_tokens} tokens`,
    `TTFT p50 ${f(s.ttft_p50_ms, 0)} ms  p99 ${f(s.ttft_p99_ms, 0)} ms   TPOT p50 ${f(s.tpot_p50_ms, 1)} ms  p99 ${f(s.tpot_p99_ms, 1)} ms`,
    '',
  ].join('\n');
}

export async function runCalibrate(o: { model?: string; out: string; providers: string; threads?: number; repeats?: number; blockSize?: number; maxModelLen?: number; fromSteps?: string }): Promise<void> {
  const machine = `${cpus().length}× ${cpus()[0]?.model.trim() ?? 'cpu'}`;
  let profile: StepProfile;
  if (o.fromSteps !== undefined) {
    // Several served runs (comma-separated) pool their steps: a wider spread of step shapes.
    const logs = await Promise.all(o.fromSteps.split(',').map((f) => readStepLog(f.trim())));
    profile = profileFromSteps({ header: (logs[0] as (typeof logs)[number]).header, steps: logs.flatMap((l) => l.steps) }, machine);
  } else {
    if (o.model === undefined) throw new InvalidArgumentError('calibrate needs --model DIR (to measure the engine) or --from-steps FILE (a served run)');
    const opts: Parameters<typeof calibrate>[1] = { providers: o.providers.split(',') as ('cuda' | 'cpu')[], log: (l) => process.stderr.write(l + '\n') };
    if (o.threads !== undefined) opts.intraOpThreads = o.threads;
    if (o.repeats !== undefined) opts.repeats = o.repeats;
    if (o.blockSize !== undefined) opts.blockSize = o.blockSize;
    if (o.maxModelLen !== undefined) opts.maxContext = o.maxModelLen;
    profile = await calibrate(o.model, opts);
  }
  await writeFile(o.out, JSON.stringify(profile, null, 2) + '\n');
  process.stderr.write(`wrote ${o.out}: base ${profile.baseMs.toFixed(3)} ms + ${profile.perTokenMs.toFixed(4)} ms/token + ${profile.perContextMs.toFixed(4)} ms/1k context + ${profile.perSequenceMs.toFixed(4)} ms/sequence + ${profile.perRunMs.toFixed(3)} ms/extra run${profile.perArrivalMs !== undefined ? ` + ${profile.perArrivalMs.toFixed(3)} ms/arriving request + ${(profile.perFinishMs ?? 0).toFixed(3)} ms/ending request` : ''} (R² ${profile.r2?.toFixed(3)}, ${profile.samples} steps)\n`);
}
