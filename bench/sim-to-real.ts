/**
 * Sim-to-real: does `marginal sim` predict what `marginal serve` delivers? A trace with values
 * and SLOs is replayed over HTTP (the `marginal bench serve` client, in-process) against the
 * real server at `--load` × its measured capacity, under fcfs and under shadow, and the same
 * trace goes through the simulator with the server's geometry and a profile calibrated on this
 * machine. For each policy: realized value, SLO goodput, completions and latency, real against
 * predicted.
 *
 *   npm run build && npm run bench:sim-to-real -- [--requests 300] [--load 2] [--threads 1] [--json FILE]
 *
 * Capacity is measured as the tuner measures it, on the real server: completed requests per
 * second when the whole trace arrives at once under fcfs. The prediction is calibrated on the
 * server's own steps: every run logs them (`serve --step-log`), and each replay is predicted
 * with a profile fitted (`calibrate --from-steps`) to the steps of every run before it — the
 * capacity run and the earlier replays of both policies, pooled — so that the profile is the
 * machine's typical pace rather than one minute's. With it comes an interval: the same
 * prediction at the slowest and the fastest pace any earlier run kept relative to that profile
 * (how far this shared machine's speed moved between runs). Replays alternate between the
 * policies (`--repeats` each) and the totals over them are the check. Three more columns
 * separate the causes of an error: the prediction from the previous run's steps alone (the
 * harness before pooling), the simulator on the engine measured alone (`calibrate --model`, the
 * worker engine on a grid of step shapes), and on each replay's own steps (not a prediction: the
 * scheduler's model alone, with the machine's speed during that very run). `pace` is each run's
 * step time relative to the pooled profile of all runs.
 */
import { Command } from 'commander';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { benchServe, promCounter, type BenchServeResult } from '../src/bench/serve.js';
import { loadProfile, predictStepMs, scaleProfile, type StepProfile } from '../src/engine/cost-model.js';
import { paceOf, readStepLog } from '../src/serving/step-log.js';
import { geometryFlags } from '../src/cli/geometry-options.js';
import type { GeometryOptions } from '../src/geometry.js';
import { ensureSynthetic, packageRoot } from '../src/models/importers.js';
import type { Summary } from '../src/sim/metrics.js';
import { simulate } from '../src/sim/simulator.js';
import type { TraceRequest } from '../src/sim/trace.js';
import { generateWorkload, type Workload } from '../src/sim/workload.js';
import { freePort, startServer } from './servers.js';

const o = new Command()
  .option('--shape <name>', 'synthetic model shape', 'stories15m')
  .option('--requests <n>', 'requests in the trace', '300')
  .option('--load <x>', 'offered load, multiple of measured capacity', '2')
  .option('--seed <n>', 'trace seed', '7')
  .option('--engine-profile <file>', 'a profile of the engine alone (calibrate --model) to compare (default: calibrate now; "none" to skip)')
  .option('--kv-blocks <n>', 'KV pool size in blocks (server and simulator)', '512')
  .option('--policies <list>', 'policies to compare', 'fcfs,shadow')
  .option('--repeats <n>', 'replays per policy, alternating (the machine drifts)', '3')
  .option('--json <file>', 'write everything as JSON', join('bench', 'results', 'sim-to-real.json'))
  .option('--threads <n>', "ONNX Runtime intra-op threads of the server's engine (and of the engine-alone calibration); default ONNX Runtime's")
  .option('--keep <dir>', 'keep the step logs and per-request outcomes (real and predicted) in this folder')
  .parse()
  .opts<{ shape: string; requests: string; load: string; seed: string; engineProfile?: string; kvBlocks: string; policies: string; repeats: string; json: string; keep?: string; threads?: string }>();
const threadFlags = o.threads !== undefined ? ['--threads', o.threads] : [];

const root = packageRoot();
const cli = join(root, 'dist', 'cli.js');
const modelDir = ensureSynthetic(o.shape, join(root, 'models', `bench-${o.shape}`));
const geometry: GeometryOptions = { kvBlocks: Number(o.kvBlocks) };
const log = (s: string) => process.stderr.write(s + '\n');

/**
 * The built-in tenant mix with its SLOs, and max_tokens equal to each request's output (what
 * `bench serve` sends), so that server and simulator see the same requests.
 */
const workload: Workload = {
  seed: 1,
  tenants: [
    { name: 'interactive', share: 0.2, value: { dist: 'lognormal', mean: 2.0, sigma: 0.5 }, valuePerToken: false, slo: { ttftMs: 1000, tpotMs: 100 }, priority: 0 },
    { name: 'standard', share: 0.5, value: { dist: 'lognormal', mean: 0.5, sigma: 0.5 }, valuePerToken: false, slo: { ttftMs: 5000, tpotMs: 250 }, priority: 1 },
    { name: 'batch', share: 0.3, value: { dist: 'uniform', min: 0.0005, max: 0.0015 }, valuePerToken: true, deadlineMs: 600_000, priority: 2 },
  ],
};
// Prompt + output within the model's 256 positions (bench serve's prompts tokenize to about one token a word, plus BOS).
const trace = generateWorkload({
  seed: Number(o.seed),
  requests: Number(o.requests),
  rate: 1,
  tenants: workload,
  promptTokens: { mean: 80, sigma: 0.6 },
  outputTokens: { mean: 48, sigma: 0.6 },
  maxPromptTokens: 150,
  maxOutputTokens: 96,
});

const at = (scale: number): TraceRequest[] => trace.map((r) => ({ ...r, t: r.t / scale }));

const results = join(root, 'bench', 'results');
mkdirSync(results, { recursive: true });
// Step logs and the profiles fitted to them are working files: the JSON report carries the profiles.
const work = o.keep ?? mkdtempSync(join(tmpdir(), 'marginal-sim-to-real-'));
mkdirSync(work, { recursive: true });

function calibrate(args: string[], out: string): StepProfile {
  const r = spawnSync(process.execPath, [cli, 'calibrate', ...args, '--out', out], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`calibrate ${args.join(' ')} failed`);
  return JSON.parse(readFileSync(out, 'utf8')) as StepProfile;
}

async function engineProfile(): Promise<StepProfile | undefined> {
  if (o.engineProfile === 'none') return undefined;
  if (o.engineProfile) return loadProfile(o.engineProfile);
  log(`calibrating the engine alone (${modelDir}, its worker thread, a grid of step shapes)`);
  return calibrate(['--model', modelDir, '--providers', 'cpu', ...threadFlags], join(work, 'engine-profile.json'));
}

// Every client of the replay comes from 127.0.0.1, so the per-address connection cap (256 by
// default) would refuse part of the capacity run's burst: the load generator stands for many clients.
const oneAddressForAll = ['--max-connections-per-address', '4096'];

/** Runs `f` against a fresh server with `policy`, its steps logged to `stepLog`. */
async function serve<T>(policy: string, stepLog: string, f: (url: string) => Promise<T>): Promise<T> {
  const port = await freePort();
  const args = [cli, 'serve', '--model', modelDir, '--port', String(port), '--providers', 'cpu', '--policy', policy, '--step-log', stepLog, ...threadFlags, ...geometryFlags(geometry).flatMap((x) => x.split(' ')), ...oneAddressForAll];
  const s = await startServer(args, port, `marginal serve --policy ${policy}`);
  try {
    return await f(s.url);
  } finally {
    await s.stop();
  }
}

/**
 * Replays `reqs`, and measures the latency outside the scheduler: the clients' mean TTFT less
 * the server's own (its TTFT histogram counts from the moment a request reaches the scheduler,
 * the clock its SLO verdicts and the simulator use), so HTTP, tokenizing and delivery.
 */
async function replay(url: string, reqs: TraceRequest[]): Promise<BenchServeResult & { outsideMs: number | null }> {
  const r = await benchServe({ url, trace: reqs, temperature: 0, timeoutMs: 600_000 });
  const text = await (await fetch(`${url}/metrics`)).text();
  const sum = promCounter(text, 'vllm:time_to_first_token_seconds_sum');
  const count = promCounter(text, 'vllm:time_to_first_token_seconds_count');
  const client = r.outcomes.filter((x) => x.outcome === 'completed' && x.ttft_ms !== null).map((x) => x.ttft_ms as number);
  const outsideMs = sum !== null && count && client.length === count ? client.reduce((a, b) => a + b, 0) / client.length - (sum / count) * 1000 : null;
  return { ...r, outsideMs };
}

const fmtProfile = (p: StepProfile) =>
  `${p.baseMs.toFixed(2)} ms + ${p.perTokenMs.toFixed(4)} ms/token + ${p.perContextMs.toFixed(3)} ms/1k context + ${p.perSequenceMs.toFixed(3)} ms/seq + ${p.perRunMs.toFixed(2)} ms/extra run${p.perArrivalMs !== undefined ? ` + ${p.perArrivalMs.toFixed(2)} ms/arrival + ${(p.perFinishMs ?? 0).toFixed(2)} ms/finish` : ''} (R² ${p.r2?.toFixed(3)}, ${p.samples} samples)`;
const alone = await engineProfile();
if (alone) log(`engine alone: ${fmtProfile(alone)}`);

// Capacity on the real server: everything at once, fcfs; its steps calibrate the prediction.
const burst = at(1e6);
const capLog = join(work, 'capacity.steps.jsonl');
const cap = await serve('fcfs', capLog, (url) => replay(url, burst));
const capacity = cap.summary.completed / cap.summary.duration;
const served = calibrate(['--from-steps', capLog], join(work, 'capacity-profile.json'));
log(`capacity run's steps: ${fmtProfile(served)}`);
const simCapacity = (p: StepProfile) => {
  const r = simulate(burst, { policy: 'fcfs', profile: p, geometry }).summary;
  return r.completed / r.duration_s;
};
const nativeRate = (trace.length - 1) / ((trace[trace.length - 1] as TraceRequest).t - (trace[0] as TraceRequest).t);
const load = Number(o.load);
const rateScale = (load * capacity) / nativeRate;
log(`capacity: real ${capacity.toFixed(2)} req/s (${cap.summary.duration.toFixed(1)} s); simulated on its steps ${simCapacity(served).toFixed(2)}${alone ? `, on the engine alone ${simCapacity(alone).toFixed(2)}` : ''}; replaying at ${load}× = rate scale ${rateScale.toFixed(3)}`);

interface Row {
  policy: string;
  repeat: number;
  real: BenchServeResult['summary'];
  /** From the pooled steps of every earlier run. */
  predicted: Summary;
  profile: StepProfile;
  /**
   * The earlier runs' paces relative to `profile`; the prediction at each (their mean: the
   * value expected when this run's pace is drawn from those), and at the slowest and fastest.
   */
  paces: number[];
  atPaces: number[];
  expected: number;
  slowest: Summary;
  fastest: Summary;
  previousOnly: Summary;
  engineAlone: Summary | undefined;
  ownSteps: Summary;
  ownProfile: StepProfile;
  /** Mean TTFT the clients saw less the server's mean (null where the counts disagree). */
  outsideMs: number | null;
}
const loaded = at(rateScale);
const policies = o.policies.split(',');
const repeats = Number(o.repeats);
// Policies alternate, so that the machine's drift (it is shared) falls on each alike.
const runs: { policy: string; repeat: number; log: string; real?: BenchServeResult['summary']; outsideMs?: number | null }[] = [];
for (let k = 0; k < repeats; k++) for (const policy of policies) runs.push({ policy, repeat: k, log: join(work, `${policy}-${k}.steps.jsonl`) });
for (const run of runs) {
  const real = await serve(run.policy, run.log, (url) => replay(url, loaded));
  run.real = real.summary;
  run.outsideMs = real.outsideMs;
  if (o.keep) writeFileSync(join(work, `${run.policy}-${run.repeat}.real.jsonl`), real.outcomes.map((x) => JSON.stringify(x)).join('\n') + '\n');
  log(`${run.policy} #${run.repeat}: value realized ${real.summary.value_realized.toFixed(2)}`);
}
const steps = new Map<string, Awaited<ReturnType<typeof readStepLog>>['steps']>();
for (const l of [capLog, ...runs.map((r) => r.log)]) steps.set(l, (await readStepLog(l)).steps);
const rows: Row[] = [];
for (let i = 0; i < runs.length; i++) {
  const run = runs[i] as (typeof runs)[number];
  const earlier = [capLog, ...runs.slice(0, i).map((r) => r.log)];
  const profile = calibrate(['--from-steps', earlier.join(',')], join(work, 'profile.json'));
  const previousProfile = calibrate(['--from-steps', earlier[earlier.length - 1] as string], join(work, 'previous-profile.json'));
  const ownProfile = calibrate(['--from-steps', run.log], join(work, 'own-profile.json'));
  const paces = earlier.map((l) => paceOf(profile, steps.get(l) ?? []));
  const simRun = (p: StepProfile) => simulate(loaded, { policy: run.policy, profile: p, geometry });
  const sim = (p: StepProfile) => simRun(p).summary;
  const real = run.real as BenchServeResult['summary'];
  const predicted = simRun(profile);
  const atPaces = paces.map((x) => sim(scaleProfile(profile, x)).value_realized);
  const row: Row = {
    policy: run.policy,
    repeat: run.repeat,
    real,
    predicted: predicted.summary,
    profile,
    paces,
    atPaces,
    expected: atPaces.reduce((a, b) => a + b, 0) / atPaces.length,
    slowest: sim(scaleProfile(profile, Math.max(...paces))),
    fastest: sim(scaleProfile(profile, Math.min(...paces))),
    previousOnly: sim(previousProfile),
    engineAlone: alone ? sim(alone) : undefined,
    ownSteps: sim(ownProfile),
    ownProfile,
    outsideMs: run.outsideMs ?? null,
  };
  rows.push(row);
  if (o.keep) writeFileSync(join(work, `${run.policy}-${run.repeat}.predicted.jsonl`), predicted.outcomes.map((x) => JSON.stringify(x)).join('\n') + '\n');
  if (o.keep) writeFileSync(join(work, `${run.policy}-${run.repeat}.own.jsonl`), simRun(ownProfile).outcomes.map((x) => JSON.stringify(x)).join('\n') + '\n');
  log(`${run.policy} #${run.repeat}: value realized real ${real.value_realized.toFixed(2)}, predicted ${row.predicted.value_realized.toFixed(2)} (over the earlier paces ${row.expected.toFixed(2)}, ${interval(row)}; previous run alone ${row.previousOnly.value_realized.toFixed(2)}, engine-alone profile ${row.engineAlone?.value_realized.toFixed(2) ?? '-'}, its own steps ${row.ownSteps.value_realized.toFixed(2)})`);
}
// Every run's pace against one profile of them all: how far the machine's speed moved.
const allProfile = calibrate(['--from-steps', [capLog, ...runs.map((r) => r.log)].join(','), ], join(work, 'all-profile.json'));
const paceAll = (l: string) => paceOf(allProfile, steps.get(l) ?? []);

function interval(r: Row): string {
  const lo = Math.min(r.slowest.value_realized, r.fastest.value_realized);
  const hi = Math.max(r.slowest.value_realized, r.fastest.value_realized);
  return `${lo.toFixed(2)}–${hi.toFixed(2)}`;
}

const f = (x: number | null | undefined, d = 1) => (x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));
const ratio = (sim: number | undefined, real: number) => (sim === undefined ? '-' : f(sim / real, 2));
console.log(`\n${trace.length} requests (${workload.tenants.map((t) => t.name).join('/')}), ${o.shape}, default geometry with --kv-blocks ${o.kvBlocks}${o.threads !== undefined ? `, --threads ${o.threads}` : ''}; load ${load}× the real capacity of ${capacity.toFixed(2)} req/s; ${repeats} alternating replays per policy\n`);
const ratioRange = (a: number, b: number, real: number) => `${f(Math.min(a, b) / real, 2)}–${f(Math.max(a, b) / real, 2)}`;
console.log('| policy | run | pace | value realized: real | predicted | predicted/real | expected over the earlier runs\' paces/real | at their slowest–fastest pace, /real | previous run alone/real | engine-alone profile/real | own steps/real | SLO met real / predicted | completed real / predicted | rejected real / predicted | TTFT p50 ms real (client) / predicted | TTFT outside the scheduler, mean ms | TPOT p50 ms real / predicted | duration s real / predicted |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
console.log(`| fcfs | capacity | ${f(paceAll(capLog), 2)} | | | | | | | | | | ${cap.summary.completed} / | | | ${f(cap.outsideMs, 0)} | | ${f(cap.summary.duration, 1)} / |`);
for (const r of rows) {
  const q = r.predicted;
  const v = r.real.value_realized;
  const run = runs.find((x) => x.policy === r.policy && x.repeat === r.repeat) as (typeof runs)[number];
  console.log(
    `| ${r.policy} | ${r.repeat + 1} | ${f(paceAll(run.log), 2)} | ${f(v, 2)} | ${f(q.value_realized, 2)} | ${ratio(q.value_realized, v)} | ${ratio(r.expected, v)} | ${ratioRange(r.slowest.value_realized, r.fastest.value_realized, v)} | ${ratio(r.previousOnly.value_realized, v)} | ${ratio(r.engineAlone?.value_realized, v)} | ${ratio(r.ownSteps.value_realized, v)} | ${r.real.slo_met} / ${q.slo_met} | ${r.real.completed} / ${q.completed} | ${r.real.rejected} / ${q.rejected} | ${f(r.real.ttft_p50_ms, 0)} / ${f(q.ttft_p50_ms, 0)} | ${f(r.outsideMs, 0)} | ${f(r.real.tpot_p50_ms, 1)} / ${f(q.tpot_p50_ms, 1)} | ${f(r.real.duration, 1)} / ${f(q.duration_s, 1)} |`,
  );
}
const total = (rs: Row[], pick: (r: Row) => number | undefined) => rs.reduce((s, r) => s + (pick(r) ?? NaN), 0);
const totals: Record<string, { real: number; predicted: number; expected: number; slowest: number; fastest: number }> = {};
for (const policy of policies) {
  const rs = rows.filter((r) => r.policy === policy);
  const real = total(rs, (r) => r.real.value_realized);
  const predicted = total(rs, (r) => r.predicted.value_realized);
  const slowest = total(rs, (r) => r.slowest.value_realized);
  const fastest = total(rs, (r) => r.fastest.value_realized);
  const expected = total(rs, (r) => r.expected);
  totals[policy] = { real, predicted, expected, slowest, fastest };
  console.log(
    `| **${policy}** | all | | **${f(real, 2)}** | **${f(predicted, 2)}** | **${ratio(predicted, real)}** | **${ratio(expected, real)}** | ${ratioRange(slowest, fastest, real)} | ${ratio(total(rs, (r) => r.previousOnly.value_realized), real)} | ${alone ? ratio(total(rs, (r) => r.engineAlone?.value_realized), real) : '-'} | ${ratio(total(rs, (r) => r.ownSteps.value_realized), real)} | | | | | | | |`,
  );
}
console.log('\nprofiles:');
console.log(`- capacity run's steps: ${fmtProfile(served)}`);
if (alone) console.log(`- engine alone: ${fmtProfile(alone)}`);
console.log(`- every run pooled (the pace column's reference): ${fmtProfile(allProfile)}`);
for (const r of rows) console.log(`- ${r.policy} #${r.repeat + 1}: predicted with the earlier runs' ${fmtProfile(r.profile)}; earlier paces ${r.paces.map((x) => x.toFixed(2)).join(', ')}; its own steps ${fmtProfile(r.ownProfile)}`);
if (o.json) writeFileSync(o.json, JSON.stringify({ shape: o.shape, requests: trace.length, geometry, threads: o.threads ?? null, capacity, load, rateScale, repeats, capacityProfile: served, alone, allProfile, paces: Object.fromEntries([capLog, ...runs.map((r) => r.log)].map((l) => [l.slice(work.length + 1).replace('.steps.jsonl', ''), paceAll(l)])), totals, rows }, null, 2) + '\n');
if (!o.keep) rmSync(work, { recursive: true, force: true });
