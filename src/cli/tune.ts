import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Presets, SingleBar } from 'cli-progress';
import { InvalidArgumentError } from '../errors.js';
import { createPolicy } from '../scheduler/policies/index.js';
import { simGeometry, type SimOptions } from '../sim/simulator.js';
import { geometryFlags, geometryFromCli, type GeometryCliOptions } from './geometry-options.js';
import { defaultGrid, loadGrid, parseLoads, tune, writeTuneOutputs, type CandidateResult, type TuneResult } from '../sim/tune.js';
import { profileFromCli, readTraceFromCli, type TraceCliOptions } from './sim.js';

export interface TuneCliOptions extends TraceCliOptions, GeometryCliOptions {
  grid?: string;
  out?: string;
  profile?: string;
  /** Comma-separated multiples of capacity; default the grid's loads, else 1,2. */
  loads?: string;
  /** Overrides the grid's policy. */
  policy?: string;
  threads?: number;
  json?: boolean;
  quiet?: boolean;
  basePrice?: number;
  /** Where the report goes (default stdout); not a flag: for tests and embedders. */
  write?: (text: string) => void;
}

const TRACE_KEYS = ['trace', 'format', 'rateScale', 'lengthScale', 'limit', 'start', 'duration', 'maxPromptTokens', 'maxOutputTokens', 'workload', 'seed'] as const satisfies readonly (keyof TraceCliOptions)[];

export const DEFAULT_TUNE_OUT = 'tune-out';
export const DEFAULT_LOADS = [1, 2];

function parseLoadList(s: string): number[] {
  return parseLoads(s.split(',').map((x) => (x.trim() === '' ? NaN : Number(x))), '--loads');
}

/** The `marginal sim` flags that read the same trace (no --rate-scale: each run adds its own). */
function traceFlags(o: TraceCliOptions, seed: number | undefined): string[] {
  const q = (s: string) => (/^[\w./:@%+=,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  const f = [`--trace ${q(o.trace)}`];
  if (o.format !== undefined) f.push(`--format ${o.format}`);
  if (o.lengthScale !== undefined) f.push(`--length-scale ${o.lengthScale}`);
  if (o.limit !== undefined) f.push(`--limit ${o.limit}`);
  if (o.start !== undefined) f.push(`--start ${o.start}`);
  if (o.maxPromptTokens !== undefined) f.push(`--max-prompt-tokens ${o.maxPromptTokens}`);
  if (o.maxOutputTokens !== undefined) f.push(`--max-output-tokens ${o.maxOutputTokens}`);
  if (o.workload !== undefined) f.push(`--workload ${q(o.workload)}`);
  if (seed !== undefined) f.push(`--seed ${seed}`);
  return f;
}

const f = (x: number | null, d = 1) => (x === null || !Number.isFinite(x) ? '-' : x.toFixed(d));

function formatResult(r: TuneResult, files: string[], commands: string[]): string {
  const frontier = new Set(r.frontier);
  const row = (c: CandidateResult, rank: number) =>
    `${String(rank).padStart(4)}  ${String(c.index).padStart(4)}  ${frontier.has(c.index) ? '*' : ' '}  ${f(c.welfare, 2).padStart(10)}  ${f(c.goodput_rps, 3).padStart(8)}  ${f(c.ttft_p99_ms, 0).padStart(9)}  ${c.label}`;
  const failed = r.candidates.filter((c) => c.error !== undefined);
  const lines = [
    `${r.requests} requests, native ${r.native_rate_rps.toFixed(2)} req/s, capacity ${r.capacity_rps.toFixed(2)} req/s (fcfs, all at once)`,
    `${r.candidates.length} candidates × loads ${r.loads.map((l) => `${l.load}× (rate scale ${l.rate_scale})`).join(', ')}, policy ${r.policy}: ${r.candidates.length * r.loads.length} simulations in ${r.timing.elapsed_s.toFixed(1)} s on ${r.timing.threads} threads`,
    '',
    `rank  cand  F     welfare   goodput  p99 TTFT  curves (tokens + kv); F: on the Pareto frontier; means over loads, worst p99`,
    ...r.ranking.slice(0, 10).map((i, k) => row(r.candidates[i] as CandidateResult, k + 1)),
    ...(r.ranking.length > 10 ? [`  … ${r.ranking.length - 10} more in tune.json`] : []),
    '',
    `frontier: ${r.frontier.length} candidates (${r.frontier.join(', ')})`,
    ...(failed.length > 0 ? [`failed: ${failed.length} candidates, e.g. #${failed[0]?.index}: ${failed[0]?.error}`] : []),
    `best: #${r.best} ${(r.candidates[r.best] as CandidateResult).label}`,
    `wrote ${files.join(', ')}`,
    ...(commands.length > 0 ? ['replay the best alone:', ...commands.map((c) => `  ${c}`)] : []),
    '',
  ];
  return lines.join('\n');
}

export async function runTune(o: TuneCliOptions): Promise<void> {
  // Everything the command line can get wrong fails before the trace is read.
  const grid = o.grid ? await loadGrid(o.grid) : defaultGrid();
  if (o.policy !== undefined) {
    createPolicy(o.policy);
    grid.policy = o.policy;
  }
  const loads = o.loads !== undefined ? parseLoadList(o.loads) : (grid.loads ?? DEFAULT_LOADS);
  const threads = o.threads ?? availableParallelism();
  if (!(Number.isInteger(threads) && threads >= 1)) throw new InvalidArgumentError('--threads must be a positive integer');
  // The grid may pin the workload seed so that its results can be reproduced from it alone.
  const seed = o.seed ?? grid.seed;
  if (seed !== undefined) grid.seed = seed;
  const profile = await profileFromCli(o.profile);
  const geometry = geometryFromCli(o);
  const sim: Omit<SimOptions, 'curves' | 'policy'> = { profile, geometry };
  simGeometry(sim);
  if (o.basePrice !== undefined) sim.basePrice = o.basePrice;
  const trace = await readTraceFromCli({ ...o, ...(seed !== undefined ? { seed } : {}) });

  const bar = !o.quiet && process.stderr.isTTY ? new SingleBar({ stream: process.stderr, format: 'tune [{bar}] {value}/{total} simulations | {eta_formatted} left', etaBuffer: 64 }, Presets.shades_classic) : undefined;
  let result: TuneResult;
  try {
    result = await tune({
      trace,
      sim,
      grid,
      loads,
      threads,
      onProgress: (done, total) => (done === 0 ? bar?.start(total, 0) : bar?.update(done)),
    });
  } finally {
    bar?.stop();
  }

  const out = o.out ?? DEFAULT_TUNE_OUT;
  const bestCurve = join(out, 'best-curve.json');
  // Tune scales the trace as read; with --rate-scale or --duration also given, `sim` would
  // scale (and cut) it differently, so no exact replay command exists.
  const exact = o.rateScale === undefined && o.duration === undefined;
  const setup = [
    ...(o.profile !== undefined ? [`--profile ${o.profile}`] : []),
    ...geometryFlags(geometry),
    ...(o.basePrice !== undefined ? [`--base-price ${o.basePrice}`] : []),
  ];
  const commands = exact
    ? result.loads.map((l) => ['marginal sim', ...traceFlags(o, seed), `--rate-scale ${l.rate_scale}`, `--policy ${result.policy}`, `--curve ${bestCurve}`, ...setup, '--json'].join(' '))
    : [];
  // Only what shapes the trace: threads, output and display flags must not make two runs' tune.json differ.
  const traceOpts: Record<string, unknown> = {};
  for (const k of TRACE_KEYS) if (o[k] !== undefined) traceOpts[k] = o[k];
  if (seed !== undefined) traceOpts.seed = seed;
  const files = await writeTuneOutputs(result, out, { trace: traceOpts, replay: commands });
  const write = o.write ?? ((text: string) => void process.stdout.write(text));
  const list = [files.tuneJson, files.bestCurve, files.frontierSvg, files.pricesSvg];
  if (o.json) {
    const best = result.candidates[result.best] as CandidateResult;
    const summary = {
      requests: result.requests,
      capacity_rps: result.capacity_rps,
      loads: result.loads,
      policy: result.policy,
      seed: result.seed,
      candidates: result.candidates.length,
      failed: result.candidates.filter((c) => c.error !== undefined).length,
      frontier: result.frontier,
      best: { index: best.index, label: best.label, curves: best.curves, welfare: best.welfare, goodput_rps: best.goodput_rps, ttft_p99_ms: best.ttft_p99_ms },
      files: list,
      replay: commands,
      timing: result.timing,
    };
    write(JSON.stringify(summary) + '\n');
  } else {
    write(formatResult(result, list, commands));
  }
}
