/**
 * Sim-to-real: does `marginal sim` predict what `marginal serve` delivers? A trace with values
 * and SLOs is replayed over HTTP (the `marginal bench serve` client, in-process) against the
 * real server at `--load` × its measured capacity, under fcfs and under shadow, and the same
 * trace goes through the simulator with the server's geometry and a profile calibrated on this
 * machine. For each policy: realized value, SLO goodput, completions and latency, real against
 * predicted.
 *
 *   npm run build && npm run bench:sim-to-real -- [--requests 300] [--load 2] [--json FILE]
 *
 * Capacity is measured as the tuner measures it, on the real server: completed requests per
 * second when the whole trace arrives at once under fcfs. The prediction is calibrated on the
 * server's own steps: every run logs them (`serve --step-log`), and each policy's replay is
 * predicted with a profile fitted (`calibrate --from-steps`) to the steps of the other runs —
 * the capacity run and the other policies' replays, never its own — so the profile has seen
 * this machine serving, at batch sizes both policies reach, and no run predicts itself. For
 * comparison the simulator also runs on the engine measured alone (`calibrate --model`, the
 * worker engine on a grid of step shapes), and on each replay's own steps (not a prediction:
 * it shows how much of an error is the step-time model rather than the scheduler's).
 */
import { Command } from 'commander';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { benchServe, type BenchServeResult } from '../src/bench/serve.js';
import { loadProfile, type StepProfile } from '../src/engine/cost-model.js';
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
  .option('--json <file>', 'write everything as JSON', join('bench', 'results', 'sim-to-real.json'))
  .parse()
  .opts<{ shape: string; requests: string; load: string; seed: string; engineProfile?: string; kvBlocks: string; policies: string; json: string }>();

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

function calibrate(args: string[], out: string): StepProfile {
  const r = spawnSync(process.execPath, [cli, 'calibrate', ...args, '--out', out], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`calibrate ${args.join(' ')} failed`);
  return JSON.parse(readFileSync(out, 'utf8')) as StepProfile;
}

async function engineProfile(): Promise<StepProfile | undefined> {
  if (o.engineProfile === 'none') return undefined;
  if (o.engineProfile) return loadProfile(o.engineProfile);
  log(`calibrating the engine alone (${modelDir}, its worker thread, a grid of step shapes)`);
  return calibrate(['--model', modelDir, '--providers', 'cpu'], join(results, `sim-to-real-engine-profile.json`));
}

/** Runs `f` against a fresh server with `policy`, its steps logged to `stepLog`. */
async function serve<T>(policy: string, stepLog: string, f: (url: string) => Promise<T>): Promise<T> {
  const port = await freePort();
  const args = [cli, 'serve', '--model', modelDir, '--port', String(port), '--providers', 'cpu', '--policy', policy, '--step-log', stepLog, ...geometryFlags(geometry).flatMap((x) => x.split(' '))];
  const s = await startServer(args, port, `marginal serve --policy ${policy}`);
  try {
    return await f(s.url);
  } finally {
    await s.stop();
  }
}

async function replay(url: string, reqs: TraceRequest[]): Promise<BenchServeResult> {
  return benchServe({ url, trace: reqs, temperature: 0, timeoutMs: 600_000 });
}

const fmtProfile = (p: StepProfile) => `${p.baseMs.toFixed(2)} ms + ${p.perTokenMs.toFixed(4)} ms/token + ${p.perContextMs.toFixed(3)} ms/1k context + ${p.perSequenceMs.toFixed(3)} ms/seq + ${p.perRunMs.toFixed(2)} ms/extra run (R² ${p.r2?.toFixed(3)}, ${p.samples} samples)`;
const alone = await engineProfile();
if (alone) log(`engine alone: ${fmtProfile(alone)}`);

// Capacity on the real server: everything at once, fcfs; its steps calibrate the prediction.
const burst = at(1e6);
const capLog = join(results, 'sim-to-real-capacity.steps.jsonl');
const cap = await serve('fcfs', capLog, (url) => replay(url, burst));
const capacity = cap.summary.completed / cap.summary.duration;
const served = calibrate(['--from-steps', capLog], join(results, 'sim-to-real-capacity-profile.json'));
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
  real: BenchServeResult['summary'];
  predicted: Summary;
  profile: StepProfile;
  capacityOnly: Summary;
  engineAlone: Summary | undefined;
  ownSteps: Summary;
  ownProfile: StepProfile;
}
const loaded = at(rateScale);
const policies = o.policies.split(',');
const stepLog = (policy: string) => join(results, `sim-to-real-${policy}.steps.jsonl`);
const reals = new Map<string, BenchServeResult['summary']>();
for (const policy of policies) {
  const real = await serve(policy, stepLog(policy), (url) => replay(url, loaded));
  reals.set(policy, real.summary);
  log(`${policy}: value realized ${real.summary.value_realized.toFixed(2)}`);
}
const rows: Row[] = [];
for (const policy of policies) {
  const others = [capLog, ...policies.filter((x) => x !== policy).map(stepLog)];
  const profile = calibrate(['--from-steps', others.join(',')], join(results, `sim-to-real-${policy}-profile.json`));
  const ownProfile = calibrate(['--from-steps', stepLog(policy)], join(results, `sim-to-real-${policy}-own-profile.json`));
  const sim = (p: StepProfile) => simulate(loaded, { policy, profile: p, geometry }).summary;
  const real = reals.get(policy) as BenchServeResult['summary'];
  const row: Row = { policy, real, predicted: sim(profile), profile, capacityOnly: sim(served), engineAlone: alone ? sim(alone) : undefined, ownSteps: sim(ownProfile), ownProfile };
  rows.push(row);
  log(`${policy}: value realized real ${real.value_realized.toFixed(2)}, predicted ${row.predicted.value_realized.toFixed(2)} (capacity run's steps alone ${row.capacityOnly.value_realized.toFixed(2)}, engine-alone profile ${row.engineAlone?.value_realized.toFixed(2) ?? '-'}, its own steps ${row.ownSteps.value_realized.toFixed(2)})`);
}

const f = (x: number | null | undefined, d = 1) => (x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));
const ratio = (sim: Summary | undefined, real: number) => (sim === undefined ? '-' : f(sim.value_realized / real, 2));
console.log(`\n${trace.length} requests (${workload.tenants.map((t) => t.name).join('/')}), ${o.shape}, default geometry with --kv-blocks ${o.kvBlocks}; load ${load}× the real capacity of ${capacity.toFixed(2)} req/s\n`);
console.log('| policy | value realized: real | predicted | predicted/real | capacity run only/real | engine-alone profile/real | own-steps profile/real | SLO met real / predicted | completed real / predicted | rejected real / predicted | TTFT p50 ms real / predicted | TPOT p50 ms real / predicted | duration s real / predicted |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  const q = r.predicted;
  console.log(
    `| ${r.policy} | ${f(r.real.value_realized, 2)} | ${f(q.value_realized, 2)} | ${ratio(q, r.real.value_realized)} | ${ratio(r.capacityOnly, r.real.value_realized)} | ${ratio(r.engineAlone, r.real.value_realized)} | ${ratio(r.ownSteps, r.real.value_realized)} | ${r.real.slo_met} / ${q.slo_met} | ${r.real.completed} / ${q.completed} | ${r.real.rejected} / ${q.rejected} | ${f(r.real.ttft_p50_ms, 0)} / ${f(q.ttft_p50_ms, 0)} | ${f(r.real.tpot_p50_ms, 1)} / ${f(q.tpot_p50_ms, 1)} | ${f(r.real.duration, 1)} / ${f(q.duration_s, 1)} |`,
  );
}
console.log('\nprofiles:');
for (const r of rows) console.log(`- ${r.policy}'s prediction (the other runs' steps): ${fmtProfile(r.profile)}`);
console.log(`- capacity run's steps: ${fmtProfile(served)}`);
if (alone) console.log(`- engine alone: ${fmtProfile(alone)}`);
for (const r of rows) console.log(`- ${r.policy} replay's own steps: ${fmtProfile(r.ownProfile)}`);
if (o.json) writeFileSync(o.json, JSON.stringify({ shape: o.shape, requests: trace.length, geometry, capacity, load, rateScale, capacityProfile: served, alone, rows }, null, 2) + '\n');
