/**
 * The learned output-length model against the online mean, on replays of the public traces in
 * arrival order: each request is predicted before anything about it is known, and observed
 * `--horizon` arrivals later (as if it finished while that many more arrived), training to
 * completion after each observation as the simulator does. Prints, per trace and model: MAE of
 * the median and of the mean, pinball loss on log length averaged over the levels, coverage of
 * the 10–90% interval, calibration, and training and prediction time per request. Then the
 * welfare side: the pricing scheduler (`shadow`) in the simulator with each predictor, on the
 * replays and geometry of `bench:policies`, at `--welfare-loads` × capacity.
 *
 *   npm run bench:length -- [--limit N] [--horizon 32] [--welfare-loads 1,2] [--json bench/results/length-model.json]
 *
 * What the traces carry: lengths (used unscaled) and arrival times; Mooncake's prompt-prefix
 * hashes (the simulator's synthetic prompt tokens are built from them, so its leading tokens
 * name the shared prefix; elsewhere they are noise); no max_tokens, so each request gets a cap
 * of 4× its tenant's median output rounded up to a power of two, clamped to [64, 4096] — a
 * setting, not the true length — and a completion longer than the cap is served cut off at it
 * (censored). Tenants come from the default workload, which assigns them at random: they carry
 * no information about length here.
 */
import { Command } from 'commander';
import { profileFromCli, readTraceFromCli, type TraceCliOptions } from '../src/cli/sim.js';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createLengthPredictor, LEADING_TOKENS, LearnedLength, LEVELS, type LearnedLengthOptions, type LengthDistribution, type LengthFeatures, type LengthPredictor } from '../src/economy/length-model.js';
import { Rng } from '../src/sampling/rng.js';
import { packageRoot } from '../src/models/importers.js';
import type { Summary } from '../src/sim/metrics.js';
import { simulate, synthesizePrompt, type SimOptions } from '../src/sim/simulator.js';
import { readTrace, type TraceRequest } from '../src/sim/trace.js';
import { defaultWorkload } from '../src/sim/workload.js';

const o = new Command()
  .option('--limit <n>', 'requests per trace (0 = all)', '0')
  .option('--horizon <n>', 'arrivals between a request and its observation', '32')
  .option('--traces <list>', 'which to run', 'azure-code,azure-conv,mooncake-conv,mooncake-synthetic,synthetic')
  .option('--json <file>', 'where the figures go', 'bench/results/length-model.json')
  .option('--learned <json>', 'options for the learned model (LearnedLengthOptions as JSON)', '{}')
  .option('--no-leading-tokens', 'hide the prompt tokens from the models (an ablation)')
  .option('--welfare-loads <list>', 'offered loads (× capacity) for the simulator runs; empty to skip', '1,2')
  .option('--welfare-limit <n>', 'requests per trace in the simulator runs', '3000')
  .parse()
  .opts<{ limit: string; horizon: string; traces: string; json: string; learned: string; leadingTokens: boolean; welfareLoads: string; welfareLimit: string }>();

const limit = Number(o.limit);
const horizon = Number(o.horizon);
const tracesDir = join(packageRoot(), '..', 'shared', 'traces');

interface Case {
  f: LengthFeatures;
  /** Served length: the true length cut at the cap. */
  tokens: number;
  byLength: boolean;
}

function capFor(typical: number): number {
  return Math.min(4096, Math.max(64, 2 ** Math.ceil(Math.log2(4 * typical))));
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] ?? 1;
}

function fromTrace(reqs: TraceRequest[]): { cases: Case[]; caps: Record<string, number> } {
  const byTenant = new Map<string, number[]>();
  for (const r of reqs) (byTenant.get(r.tenant) ?? byTenant.set(r.tenant, []).get(r.tenant)!).push(r.outputTokens);
  const caps: Record<string, number> = {};
  for (const [t, xs] of byTenant) caps[t] = capFor(median(xs));
  const cases = reqs.map((r, i) => {
    const maxTokens = caps[r.tenant]!;
    // The simulator's prompt tokens for this request (only the first few are read).
    const leadingTokens = synthesizePrompt({ ...r, promptTokens: Math.min(LEADING_TOKENS, r.promptTokens) }, i);
    return {
      f: { tenant: r.tenant, promptTokens: r.promptTokens, maxTokens, endpoint: 'trace' as const, hasStop: false, temperature: 0, leadingTokens },
      tokens: Math.min(r.outputTokens, maxTokens),
      byLength: r.outputTokens >= maxTokens,
    };
  });
  return { cases, caps };
}

/**
 * A workload whose features do carry the answer, to show what the model learns when they do:
 * three tenants with different typical lengths and spreads, length growing with prompt length,
 * and two prompt templates (leading tokens) of which one doubles the length; lognormal noise.
 */
function synthetic(n: number): { cases: Case[]; caps: Record<string, number> } {
  const rng = new Rng(2024);
  const tenants = [
    { name: 'terse', mu: 2.5, sigma: 0.3 },
    { name: 'chatty', mu: 4.0, sigma: 0.5 },
    { name: 'essayist', mu: 5.0, sigma: 0.8 },
  ];
  const templates = [Int32Array.from([1, 887, 526, 263, 8444, 20255, 29889, 13]), Int32Array.from([1, 14350, 263, 5828, 1048, 263, 26361, 13])];
  const cases: Case[] = [];
  for (let i = 0; i < n; i++) {
    const t = tenants[rng.nextUint32() % tenants.length]!;
    const template = rng.nextUint32() % 2;
    const promptTokens = Math.round(Math.exp(3 + 4 * rng.next()));
    const z = Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
    const raw = Math.max(1, Math.round(Math.exp(t.mu + 0.4 * (Math.log(promptTokens) - 5) + template * Math.LN2 + t.sigma * z)));
    const maxTokens = 2048;
    cases.push({ f: { tenant: t.name, promptTokens, maxTokens, endpoint: 'completion', hasStop: false, temperature: 0.7, leadingTokens: templates[template]! }, tokens: Math.min(raw, maxTokens), byLength: raw >= maxTokens });
  }
  return { cases, caps: { all: 2048 } };
}

interface Scores {
  model: string;
  requests: number;
  mae_median: number;
  /** Root mean squared error of mean(): what a sum of expected footprints errs by. */
  rmse_mean: number;
  /** Σ mean() / Σ served − 1. */
  bias_mean: number;
  /** Pinball loss on log length, averaged over LEVELS. */
  pinball_log: number;
  /** Fraction with q10 ≤ served ≤ q90 (0.8 is calibrated). */
  coverage_10_90: number;
  /** Per level: the fraction of served lengths at or below the predicted quantile. */
  calibration: number[];
  /** Mean |observed − level| over the levels. */
  calibration_error: number;
  train_ms_per_obs: number;
  predict_us: number;
}

function replay(model: LengthPredictor, cases: Case[]): Scores {
  const n = cases.length;
  const preds: LengthDistribution[] = new Array(n);
  let trainMs = 0;
  for (let i = 0; i < n; i++) {
    const c = cases[i]!;
    preds[i] = model.predict(c.f);
    const done = i - horizon;
    if (done >= 0) {
      const d = cases[done]!;
      model.observe(d.f, d.tokens, d.byLength);
      const t1 = performance.now();
      model.train(Infinity);
      trainMs += performance.now() - t1;
    }
  }
  // Prediction time on the trained model, the best of three passes over the requests (the
  // machine is shared; the best pass is the least disturbed).
  let predictMs = Infinity;
  for (let pass = 0; pass < 3; pass++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) model.predict(cases[i]!.f);
    predictMs = Math.min(predictMs, performance.now() - t0);
  }
  const iMedian = LEVELS.indexOf(0.5);
  const i10 = LEVELS.indexOf(0.1);
  const i90 = LEVELS.indexOf(0.9);
  let maeMedian = 0;
  let sqMean = 0;
  let sumMean = 0;
  let sumServed = 0;
  let pin = 0;
  let covered = 0;
  const below = new Float64Array(LEVELS.length);
  for (let i = 0; i < n; i++) {
    const p = preds[i]!;
    const y = cases[i]!.tokens;
    maeMedian += Math.abs(p.quantiles[iMedian]! - y);
    const m = p.mean();
    sqMean += (m - y) ** 2;
    sumMean += m;
    sumServed += y;
    for (let j = 0; j < LEVELS.length; j++) {
      const d = Math.log(y) - Math.log(p.quantiles[j]!);
      pin += Math.max(LEVELS[j]! * d, (LEVELS[j]! - 1) * d) / LEVELS.length;
      if (y <= p.quantiles[j]!) below[j]!++;
    }
    if (y >= p.quantiles[i10]! && y <= p.quantiles[i90]!) covered++;
  }
  const calibration = Array.from(below, (b) => b / n);
  return {
    model: model.name,
    requests: n,
    mae_median: maeMedian / n,
    rmse_mean: Math.sqrt(sqMean / n),
    bias_mean: sumMean / sumServed - 1,
    pinball_log: pin / n,
    coverage_10_90: covered / n,
    calibration,
    calibration_error: calibration.reduce((s, c, j) => s + Math.abs(c - LEVELS[j]!), 0) / LEVELS.length,
    train_ms_per_obs: trainMs / Math.max(1, n - horizon),
    predict_us: (predictMs * 1000) / n,
  };
}

const sources: Record<string, () => Promise<{ cases: Case[]; caps: Record<string, number> }>> = {
  'azure-code': async () => fromTrace(await readTrace(join(tracesDir, 'azure2023_AzureLLMInferenceTrace_code.csv'), { workload: defaultWorkload(), ...(limit > 0 ? { limit } : {}) })),
  'azure-conv': async () => fromTrace(await readTrace(join(tracesDir, 'azure2023_AzureLLMInferenceTrace_conv.csv'), { workload: defaultWorkload(), ...(limit > 0 ? { limit } : {}) })),
  'mooncake-conv': async () => fromTrace(await readTrace(join(tracesDir, 'mooncake_fast25_conversation_trace.jsonl'), { workload: defaultWorkload(), ...(limit > 0 ? { limit } : {}) })),
  'mooncake-synthetic': async () => fromTrace(await readTrace(join(tracesDir, 'mooncake_fast25_synthetic_trace.jsonl'), { workload: defaultWorkload(), ...(limit > 0 ? { limit } : {}) })),
  synthetic: async () => synthetic(limit > 0 ? limit : 8000),
};

const f2 = (x: number, d = 1): string => x.toFixed(d);
const pct = (x: number): string => `${(x * 100).toFixed(1)}%`;
const results: { trace: string; caps: Record<string, number>; censored: number; scores: Scores[] }[] = [];
let backend = '';
for (const name of o.traces.split(',').filter((n) => n !== '')) {
  const source = sources[name];
  if (!source) throw new Error(`unknown trace ${name} (expected one of ${Object.keys(sources).join(', ')})`);
  const { cases, caps } = await source();
  if (!o.leadingTokens) for (const c of cases) c.f.leadingTokens = [];
  const censored = cases.filter((c) => c.byLength).length / cases.length;
  const learned = await createLengthPredictor('learned', { ...(JSON.parse(o.learned) as LearnedLengthOptions), log: (l) => (backend = l) });
  const scores = [replay(createLengthPredictor('online-mean'), cases), replay(learned, cases)];
  (learned as LearnedLength).dispose();
  results.push({ trace: name, caps, censored, scores });
  console.log(`\n### ${name}: ${cases.length} requests, max_tokens ${[...new Set(Object.values(caps))].join('/')}, ${pct(censored)} cut off by it\n`);
  console.log(`| model | MAE median | RMSE mean | mean bias | pinball (log) | 10–90% coverage | calibration at ${LEVELS.join(' / ')} | calibration error | train ms/obs | predict µs |`);
  console.log('|---|---:|---:|---:|---:|---:|---|---:|---:|---:|');
  for (const s of scores) {
    console.log(
      `| ${s.model} | ${f2(s.mae_median)} | ${f2(s.rmse_mean)} | ${s.bias_mean >= 0 ? '+' : ''}${pct(s.bias_mean)} | ${f2(s.pinball_log, 4)} | ${pct(s.coverage_10_90)} | ${s.calibration.map((c) => c.toFixed(2)).join(' / ')} | ${f2(s.calibration_error, 3)} | ${f2(s.train_ms_per_obs, 2)} | ${f2(s.predict_us, 2)} |`,
    );
  }
  const [m, l] = scores as [Scores, Scores];
  console.log(`\nlearned / online-mean: pinball ${f2(l.pinball_log / m.pinball_log, 2)}, MAE median ${f2(l.mae_median / m.mae_median, 2)}, RMSE mean ${f2(l.rmse_mean / m.rmse_mean, 2)}`);
}
// ---------------------------------------------------------------------------------------------
// Welfare: the same scheduler with each predictor, everything else equal.

const welfareLoads = o.welfareLoads === '' ? [] : o.welfareLoads.split(',').map(Number);
const welfareLimit = Number(o.welfareLimit);
// bench:policies' replays and geometry, so that these rows sit beside its table.
const geometry = { maxNumSeqs: 64, maxModelLen: 1024, kvBlocks: 512, maxNumBatchedTokens: 512 };
const replays: { name: string; cli: TraceCliOptions }[] = [
  { name: 'azure-conv', cli: { trace: join(tracesDir, 'azure2023_AzureLLMInferenceTrace_conv.csv'), lengthScale: 0.125, maxPromptTokens: 768, maxOutputTokens: 192, limit: welfareLimit } },
  { name: 'mooncake-conv', cli: { trace: join(tracesDir, 'mooncake_fast25_conversation_trace.jsonl'), lengthScale: 0.03125, maxPromptTokens: 768, maxOutputTokens: 192, limit: welfareLimit } },
];
const welfare: { trace: string; load: number; rateScale: number; model: string; summary: Summary; wallS: number }[] = [];
if (welfareLoads.length > 0) {
  const base: Omit<SimOptions, 'policy'> = { profile: await profileFromCli(undefined), geometry };
  for (const t of replays) {
    const reqs = await readTraceFromCli(t.cli);
    const nativeRate = reqs.length / ((reqs[reqs.length - 1]?.t ?? 0) - (reqs[0]?.t ?? 0));
    // Capacity as bench:policies measures it: fcfs with everything arriving at once.
    const sat = simulate(
      reqs.map((r) => ({ ...r, t: r.t / 1e6 })),
      { ...base, policy: 'fcfs' },
    ).summary;
    const capacity = sat.completed / sat.duration_s;
    console.log(`\n### ${t.name} in the simulator: ${reqs.length} requests, shadow policy\n`);
    console.log('| load | length model | welfare | value | SLO met | goodput req/s | rejected | preempted | recomputed tokens | lost | wall s |');
    console.log('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const load of welfareLoads) {
      const rateScale = Number(((load * capacity) / nativeRate).toPrecision(6));
      const scaled = reqs.map((r) => ({ ...r, t: r.t / rateScale }));
      for (const kind of ['online-mean', 'learned'] as const) {
        const lengthModel = kind === 'learned' ? await createLengthPredictor('learned', { ...(JSON.parse(o.learned) as LearnedLengthOptions), log: () => {} }) : createLengthPredictor('online-mean');
        const t0 = performance.now();
        const s = simulate(scaled, { ...base, policy: 'shadow', lengthModel }).summary;
        const wallS = (performance.now() - t0) / 1000;
        if (lengthModel instanceof LearnedLength) lengthModel.dispose();
        welfare.push({ trace: t.name, load, rateScale, model: kind, summary: s, wallS });
        console.log(`| ${load}× | ${kind} | ${f2(s.welfare)} | ${f2(s.value_realized)} | ${s.slo_met} | ${f2(s.goodput_rps, 3)} | ${s.rejected} | ${s.preempted} | ${s.recomputed_tokens} | ${s.lost} | ${f2(wallS)} |`);
      }
    }
  }
}

console.log(`\n${backend}`);
console.log(`\`npm run bench:length -- --limit ${limit} --horizon ${horizon} --welfare-loads ${o.welfareLoads} --welfare-limit ${welfareLimit}\``);
mkdirSync(dirname(o.json), { recursive: true });
writeFileSync(o.json, JSON.stringify({ horizon, limit, levels: LEVELS, backend, results, welfare }, null, 2) + '\n');
