/**
 * The price-curve tuner behind `marginal tune`: replays one trace through the simulator under
 * every candidate pair of congestion curves (DESIGN.md §1) at several offered loads, on a
 * piscina pool, and reports which candidates are Pareto-optimal in welfare, SLO goodput and
 * p99 TTFT, and which has the best welfare: the curve file to serve with.
 *
 * Grid file (`--grid FILE`, JSON):
 *
 *     { "seed": 1,
 *       "policy": "shadow",
 *       "loads": [1, 2],
 *       "sample": 40,
 *       "tokens": [ { "kind": "power", "p0": 0, "scale": [1e-4, 1e-3, 1e-2], "exponent": [2, 4] },
 *                   { "kind": "mm1", "p0": 0, "scale": [1e-5, 1e-4] },
 *                   { "kind": "table", "points": [ [[0, 0], [0.8, 1e-4], [1, 1e-3]],
 *                                                  [[0, 0], [0.5, 1e-4], [1, 1e-2]] ] },
 *                   { "kind": "dual", "p0": 0, "step": [1e-5, 1e-4], "target": [0.7, 0.85], "max": 0.01 } ],
 *       "kv":     [ { "kind": "mm1", "p0": 0, "scale": [1e-5, 1e-4] } ] }
 *
 * Each entry of `tokens` and `kv` is a curve spec as in a curve file (src/economy/curves.ts)
 * whose fields may be lists of alternatives; an entry stands for the Cartesian product of its
 * lists, and the candidates are every tokens curve × every kv curve (tokens-major). A table's
 * `points` is one alternative when it is a list of [u, price] pairs, a list of alternatives
 * when it is a list of such lists. `kind` never expands: give each kind its own entry.
 * All fields are optional:
 *
 *   tokens, kv  non-empty lists of entries (absent: the default curve of defaultCurves() alone)
 *   policy      the scheduling policy every candidate runs under (default "shadow")
 *   loads       offered loads as multiples of the measured capacity (`--loads` overrides)
 *   seed        integer: the workload seed `marginal tune` reads the trace with when `--seed`
 *               is absent, and the seed of `sample`
 *   sample      positive integer: keep this many candidates, chosen by a seeded shuffle, when
 *               the product has more (for wide grids)
 *   description, comment, and keys starting with "$": notes, ignored
 *
 * Specs that expand to the same curve are kept once. Every expanded curve is checked with
 * parseCurve, so an error names its entry and field ("grid tokens[1].exponent must be ...").
 *
 * Every candidate runs on several replicates of the trace — the same arrivals under other
 * workload seeds, so other requests are interactive, standard or batch and worth other values —
 * and its objectives are means over loads and replicates. The spread over replicates is the
 * run-to-run noise: the best (most welfare) is picked only when it beats the runner-up by more
 * than twice the standard error of their paired difference; otherwise tune says that no
 * candidate separates from the others and picks none (no best-curve.json).
 *
 * The sweep is deterministic: each (candidate, load, replicate) run is a pure function of the
 * trace, the simulator options and its curves, results are put back in candidate order whatever
 * order the workers finish them in, and the ranking is a total order (welfare, then goodput,
 * then p99 TTFT, then candidate index).
 */
import { availableParallelism } from 'node:os';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { pack } from 'msgpackr';
import { Piscina } from 'piscina';
import { InvalidArgumentError } from '../errors.js';
import { curveFileJson, defaultCurves, parseCurve, parseCurveFile } from '../economy/curves.js';
import { createPolicy } from '../scheduler/policies/index.js';
import { mulberry32 } from '../random.js';
import type { Summary } from './metrics.js';
import { simulate, type SimOptions } from './simulator.js';
import { lineChart } from './svg.js';
import type { TraceRequest } from './trace.js';
import type { TuneSimOptions, TuneTask, TuneTaskResult, TuneWorkerData } from './tune-worker.js';

// ---------------------------------------------------------------------------------------------
// Grids.

/** A curve spec as parseCurve reads it (normalized by describe(): defaults filled in). */
export type CurveSpec = Record<string, unknown> & { kind: string };

/** A validated grid: the expanded, deduplicated curve lists. */
export interface Grid {
  policy: string;
  tokens: CurveSpec[];
  kv: CurveSpec[];
  loads?: number[];
  seed?: number;
  sample?: number;
}

export interface Candidate {
  index: number;
  tokens: CurveSpec;
  kv: CurveSpec;
}

/** Bounds memory before anything is simulated: a grid this wide is a typo or wants `sample`. */
export const MAX_CANDIDATES = 100_000;

const GRID_KEYS = ['seed', 'policy', 'loads', 'sample', 'tokens', 'kv'];
const isNote = (k: string): boolean => k === 'description' || k === 'comment' || k.startsWith('$');
const isObject = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);

/** Whether a field's value lists alternatives rather than being one value. */
function isAlternatives(field: string, v: unknown): v is unknown[] {
  if (!Array.isArray(v)) return false;
  // A single table is itself a list (of pairs): only a list of lists of pairs is alternatives.
  if (field === 'points') return v.length === 0 || (Array.isArray(v[0]) && Array.isArray((v[0] as unknown[])[0]));
  return true;
}

function expandEntry(entry: unknown, where: string): CurveSpec[] {
  if (!isObject(entry)) throw new InvalidArgumentError(`${where} must be an object with a "kind" field`);
  let specs: Record<string, unknown>[] = [{}];
  for (const [key, v] of Object.entries(entry)) {
    const alts = key !== 'kind' && isAlternatives(key, v) ? v : [v];
    if (alts.length === 0) throw new InvalidArgumentError(`${where}.${key} must not be an empty list`);
    const next: Record<string, unknown>[] = [];
    for (const s of specs) for (const a of alts) next.push({ ...s, [key]: a });
    specs = next;
    if (specs.length > MAX_CANDIDATES) throw new InvalidArgumentError(`${where} expands to more than ${MAX_CANDIDATES} curves`);
  }
  return specs.map((s) => {
    try {
      return parseCurve(s, where).describe() as CurveSpec;
    } catch (e) {
      // With lists in play the field alone does not say which alternative failed.
      const multi = Object.entries(entry).some(([k, v]) => k !== 'kind' && isAlternatives(k, v) && v.length > 1);
      if (multi) throw new InvalidArgumentError(`${(e as Error).message} (in ${JSON.stringify(s)})`);
      throw e;
    }
  });
}

function expandList(v: unknown, where: string): CurveSpec[] {
  if (!Array.isArray(v) || v.length === 0) throw new InvalidArgumentError(`${where} must be a non-empty array of curve entries`);
  const seen = new Set<string>();
  const out: CurveSpec[] = [];
  v.forEach((entry, i) => {
    for (const spec of expandEntry(entry, `${where}[${i}]`)) {
      const key = JSON.stringify(spec);
      if (seen.has(key)) continue;
      seen.add(key);
      out.push(spec);
    }
  });
  return out;
}

export function parseLoads(v: unknown, where: string): number[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && x > 0)) {
    throw new InvalidArgumentError(`${where} must be a non-empty array of positive numbers (multiples of capacity)`);
  }
  return v as number[];
}

/** Validates a grid file's JSON and expands it; `source` prefixes every error. */
export function parseGrid(json: unknown, source = 'grid'): Grid {
  if (!isObject(json)) throw new InvalidArgumentError(`${source} must be a JSON object (fields: ${GRID_KEYS.join(', ')})`);
  for (const key of Object.keys(json)) {
    if (!GRID_KEYS.includes(key) && !isNote(key)) throw new InvalidArgumentError(`${source}: unknown field "${key}" (fields: ${GRID_KEYS.join(', ')})`);
  }
  const policy = json.policy ?? 'shadow';
  if (typeof policy !== 'string') throw new InvalidArgumentError(`${source} policy must be a string`);
  try {
    createPolicy(policy);
  } catch (e) {
    throw new InvalidArgumentError(`${source} policy: ${(e as Error).message}`);
  }
  const d = defaultCurves();
  const grid: Grid = {
    policy,
    tokens: json.tokens === undefined ? [d.tokens.describe() as CurveSpec] : expandList(json.tokens, `${source} tokens`),
    kv: json.kv === undefined ? [d.kv.describe() as CurveSpec] : expandList(json.kv, `${source} kv`),
  };
  if (json.loads !== undefined) grid.loads = parseLoads(json.loads, `${source} loads`);
  if (json.seed !== undefined) {
    if (!Number.isInteger(json.seed)) throw new InvalidArgumentError(`${source} seed must be an integer`);
    grid.seed = json.seed as number;
  }
  if (json.sample !== undefined) {
    if (!(Number.isInteger(json.sample) && (json.sample as number) > 0)) throw new InvalidArgumentError(`${source} sample must be a positive integer`);
    grid.sample = json.sample as number;
  }
  const n = grid.tokens.length * grid.kv.length;
  if (Math.min(n, grid.sample ?? n) > MAX_CANDIDATES) {
    throw new InvalidArgumentError(`${source} has ${n} candidates (tokens × kv); at most ${MAX_CANDIDATES}: narrow it or set "sample"`);
  }
  return grid;
}

export async function loadGrid(path: string): Promise<Grid> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`cannot read grid file ${path}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new InvalidArgumentError(`grid file ${path} is not valid JSON: ${(e as Error).message}`);
  }
  return parseGrid(json, `grid ${path}`);
}

/**
 * 32 candidates over all five kinds, centred on the defaults (power 1e-3, exponent 4; mm1
 * 1e-5): token prices from ~1e-4 to ~1e-2 at full load, i.e. from "only the cheapest batch
 * work waits" to "a standard request's prompt costs about its value" (see defaultCurves for the
 * scale). Dual steps are sized so that 20 points of excess utilization move the price by
 * ~1e-3 in 50 to 500 steps (a few seconds of a busy server).
 */
export function defaultGrid(): Grid {
  return parseGrid(
    {
      policy: 'shadow',
      tokens: [
        { kind: 'linear', p0: 0, slope: [1e-4, 1e-3] },
        { kind: 'power', p0: 0, scale: [3e-4, 1e-3, 3e-3], exponent: [2, 4] },
        { kind: 'mm1', p0: 0, scale: [1e-5, 1e-4], max_utilization: 0.99 },
        {
          kind: 'table',
          points: [
            [[0, 0], [0.6, 0], [0.9, 2e-4], [1, 2e-3]],
            [[0, 0], [0.5, 5e-5], [0.8, 5e-4], [1, 5e-3]],
          ],
        },
        { kind: 'dual', p0: 0, step: [1e-5, 1e-4], target: [0.7, 0.9], min: 0, max: 1e-2 },
      ],
      kv: [{ kind: 'mm1', p0: 0, scale: [1e-5, 1e-4], max_utilization: 0.99 }],
    },
    'default grid',
  );
}


/** tokens × kv, tokens-major; with `sample`, a seeded subset kept in that order. */
export function gridCandidates(g: Grid): Candidate[] {
  const n = g.tokens.length * g.kv.length;
  let picks = Array.from({ length: n }, (_, i) => i);
  if (g.sample !== undefined && g.sample < n) {
    const rng = mulberry32(g.seed ?? 0);
    for (let i = 0; i < g.sample; i++) {
      const j = i + Math.floor(rng() * (n - i));
      [picks[i], picks[j]] = [picks[j]!, picks[i]!];
    }
    picks = picks.slice(0, g.sample).sort((a, b) => a - b);
  }
  return picks.map((p, index) => ({ index, tokens: g.tokens[Math.floor(p / g.kv.length)]!, kv: g.kv[p % g.kv.length]! }));
}

const num = (v: unknown): string => (typeof v === 'number' ? String(Number(v.toPrecision(4))) : JSON.stringify(v));

/** e.g. "power(p0=0, scale=0.001, exponent=4)"; tables by their knots. */
export function curveLabel(s: CurveSpec): string {
  if (s.kind === 'table') return `table(${(s.points as [number, number][]).map(([u, p]) => `${num(u)}:${num(p)}`).join(' ')})`;
  return `${s.kind}(${Object.entries(s).filter(([k]) => k !== 'kind').map(([k, v]) => `${k}=${num(v)}`).join(', ')})`;
}

// ---------------------------------------------------------------------------------------------
// The sweep.

export interface TuneOptions {
  /** The trace under each replicate's workload seed (at least one; two or more to measure noise). */
  traces: readonly (readonly TraceRequest[])[];
  sim: Omit<SimOptions, 'curves' | 'policy'>;
  grid: Grid;
  /** Offered loads, multiples of the capacity measured on this trace. */
  loads: number[];
  /** Worker threads (default: every core). */
  threads?: number;
  /** After each finished simulation, of candidates × loads. */
  onProgress?: (done: number, total: number) => void;
}

export interface TuneRun {
  load: number;
  rate_scale: number;
  replicate: number;
  summary: Summary;
}

export interface CandidateResult {
  index: number;
  label: string;
  /** A curve file (what best-curve.json holds for the best). */
  curves: { tokens: CurveSpec; kv: CurveSpec };
  /** Mean over loads and replicates. */
  welfare: number;
  /** Standard error of `welfare` over replicates (NaN with one replicate). */
  welfare_stderr: number;
  /** Mean over loads and replicates: what the server is paid. */
  revenue: number;
  /** Mean over loads and replicates. */
  goodput_rps: number;
  /** Worst over loads; null when some load completed nothing. */
  ttft_p99_ms: number | null;
  /** Set when a run failed (e.g. the simulator stalled); such candidates are never on the frontier. */
  error?: string;
  runs: TuneRun[];
}

export interface TuneResult {
  policy: string;
  seed: number | null;
  requests: number;
  /** Requests per second of the trace as given (n / arrival span). */
  native_rate_rps: number;
  /** Completed requests per second under fcfs with every request arriving at once. */
  capacity_rps: number;
  loads: { load: number; rate_scale: number }[];
  /** The simulator settings every run shared (geometry, base price, profile). */
  sim: Record<string, unknown>;
  replicates: number;
  candidates: CandidateResult[];
  /** Indices of the candidates no other beats on welfare, revenue, goodput and p99 TTFT at once. */
  frontier: number[];
  /** Indices, best first. */
  ranking: number[];
  /** The top of the ranking when it separates from the runner-up beyond noise; else null. */
  best: number | null;
  /** Candidates whose welfare is within noise of the top one's (the top one included). */
  tied: number[];
  /** The top's welfare minus the runner-up's, with the standard error of that paired difference. */
  separation: { difference: number; stderr: number; separated: boolean; reason: string };
  /**
   * Where the curves matter: per objective, its range over the candidates, and whether the
   * candidates at the two ends of it differ by more than twice the noise of their paired difference.
   */
  objectives: ObjectiveSpread[];
  /** Wall-clock facts: the only fields that differ between two runs of the same sweep. */
  timing: { elapsed_s: number; threads: number };
}

/** The worker next to this module: .ts from source under tsx, .js in dist/. */
function workerFile(): string {
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  return fileURLToPath(new URL(`./tune-worker${ext}`, import.meta.url));
}

/** What can cross to a worker: functions cannot be cloned, and tests' invariant checks stay home. */
function cloneableSim(sim: Omit<SimOptions, 'curves' | 'policy'>): TuneSimOptions {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(sim)) if (v !== undefined && typeof v !== 'function') out[k] = v;
  return out as unknown as TuneSimOptions;
}

/**
 * Capacity as bench/policies.ts measures it: completed requests per second when every request
 * arrives at once, under fcfs (which turns nobody away), so that load 1 is the rate the
 * server can just sustain on this trace's mix.
 */
export function measureCapacity(trace: readonly TraceRequest[], sim: TuneSimOptions): { capacity: number; summary: Summary } {
  const burst = trace.map((r) => ({ ...r, t: r.t / 1e6 }));
  const summary = simulate(burst, { ...sim, policy: 'fcfs' }).summary;
  const capacity = summary.completed / summary.duration_s;
  if (!(capacity > 0 && Number.isFinite(capacity))) throw new InvalidArgumentError(`cannot measure capacity: fcfs completed ${summary.completed} of ${trace.length} requests`);
  return { capacity, summary };
}

/** a dominates b: at least as good on all four objectives and better on one. */
function dominates(a: CandidateResult, b: CandidateResult): boolean {
  const pa = a.ttft_p99_ms ?? Infinity;
  const pb = b.ttft_p99_ms ?? Infinity;
  return (
    a.welfare >= b.welfare &&
    a.revenue >= b.revenue &&
    a.goodput_rps >= b.goodput_rps &&
    pa <= pb &&
    (a.welfare > b.welfare || a.revenue > b.revenue || a.goodput_rps > b.goodput_rps || pa < pb)
  );
}

export type Objective = 'welfare' | 'revenue' | 'goodput_rps' | 'ttft_p99_ms';

export interface ObjectiveSpread {
  objective: Objective;
  min: number;
  max: number;
  /** Standard error of the paired difference between the candidates at max and at min. */
  stderr: number;
  separated: boolean;
}

/** An objective per replicate: the mean over loads (the worst over loads for p99 TTFT), in replicate order. */
function byReplicate(c: CandidateResult, replicates: number, objective: Objective = 'welfare'): number[] {
  const out = new Array<number>(replicates).fill(objective === 'ttft_p99_ms' ? -Infinity : 0);
  const counts = new Array<number>(replicates).fill(0);
  for (const r of c.runs) {
    const v = objective === 'ttft_p99_ms' ? (r.summary.ttft_p99_ms ?? Infinity) : r.summary[objective];
    out[r.replicate] = objective === 'ttft_p99_ms' ? Math.max(out[r.replicate] as number, v) : (out[r.replicate] as number) + v;
    counts[r.replicate] = (counts[r.replicate] as number) + 1;
  }
  return objective === 'ttft_p99_ms' ? out : out.map((s, i) => s / Math.max(1, counts[i] as number));
}

function welfareByReplicate(c: CandidateResult, replicates: number): number[] {
  return byReplicate(c, replicates, 'welfare');
}

/** For each objective: how far apart the candidates are, against the noise of the two ends' paired difference. */
export function objectiveSpreads(cs: readonly CandidateResult[], replicates: number): ObjectiveSpread[] {
  const ok = cs.filter((c) => c.error === undefined);
  return (['welfare', 'revenue', 'goodput_rps', 'ttft_p99_ms'] as const).map((objective) => {
    const mean = (c: CandidateResult) => {
      const xs = byReplicate(c, replicates, objective);
      return xs.reduce((a, b) => a + b, 0) / xs.length;
    };
    let lo = ok[0] as CandidateResult;
    let hi = lo;
    for (const c of ok) {
      if (mean(c) < mean(lo)) lo = c;
      if (mean(c) > mean(hi)) hi = c;
    }
    const a = byReplicate(hi, replicates, objective);
    const b = byReplicate(lo, replicates, objective);
    const d = a.map((x, i) => x - (b[i] as number));
    const difference = d.reduce((s, x) => s + x, 0) / d.length;
    const stderr = stderrOf(d);
    return { objective, min: mean(lo), max: mean(hi), stderr, separated: replicates >= 2 && Number.isFinite(difference) && difference > 0 && (stderr === 0 || difference > 2 * stderr) };
  });
}

function stderrOf(xs: readonly number[]): number {
  const n = xs.length;
  if (n < 2) return NaN;
  const m = xs.reduce((a, b) => a + b, 0) / n;
  const v = xs.reduce((a, b) => a + (b - m) ** 2, 0) / (n - 1);
  return Math.sqrt(v / n);
}

/**
 * Whether `a` beats `b` beyond noise: their welfare compared replicate by replicate (the same
 * requests with the same values), the mean difference against twice its standard error.
 */
export function pairedSeparation(a: CandidateResult, b: CandidateResult, replicates: number): { difference: number; stderr: number; separated: boolean } {
  const wa = welfareByReplicate(a, replicates);
  const wb = welfareByReplicate(b, replicates);
  const d = wa.map((x, i) => x - (wb[i] as number));
  const difference = d.reduce((s, x) => s + x, 0) / d.length;
  const stderr = stderrOf(d);
  // A difference that is exactly the same on every replicate has no noise to beat.
  return { difference, stderr, separated: replicates >= 2 && difference > 0 && (stderr === 0 || difference > 2 * stderr) };
}

export function paretoFrontier(cs: readonly CandidateResult[]): number[] {
  const ok = cs.filter((c) => c.error === undefined);
  return ok.filter((c) => !ok.some((o) => dominates(o, c))).map((c) => c.index);
}

/** Welfare, then goodput, then p99 TTFT, then index: total, so the best is unique. */
function better(a: CandidateResult, b: CandidateResult): number {
  return b.welfare - a.welfare || b.goodput_rps - a.goodput_rps || (a.ttft_p99_ms ?? Infinity) - (b.ttft_p99_ms ?? Infinity) || a.index - b.index;
}

export async function tune(o: TuneOptions): Promise<TuneResult> {
  const t0 = performance.now();
  const loads = parseLoads(o.loads, 'loads');
  const threads = o.threads ?? availableParallelism();
  if (!(Number.isInteger(threads) && threads >= 1)) throw new InvalidArgumentError(`threads must be a positive integer (got ${threads})`);
  if (o.traces.length === 0) throw new InvalidArgumentError('tune needs at least one replicate of the trace');
  const trace = o.traces[0] as readonly TraceRequest[];
  const first = trace[0];
  const last = trace[trace.length - 1];
  const span = first && last ? last.t - first.t : 0;
  if (!(span > 0)) throw new InvalidArgumentError('the trace needs requests at two or more distinct times: loads are scaled from its arrival rate');
  const candidates = gridCandidates(o.grid);
  const sim = cloneableSim(o.sim);
  const replicates = o.traces.length;
  const total = candidates.length * loads.length * replicates;

  const shared = o.traces.map((t) => {
    const packed = pack(t);
    const buf = new SharedArrayBuffer(packed.length);
    new Uint8Array(buf).set(packed);
    return buf;
  });
  const workerData: TuneWorkerData = { traces: shared, sim };
  const pool = new Piscina<TuneTask, TuneTaskResult>({
    filename: workerFile(),
    workerData,
    minThreads: Math.min(threads, total),
    maxThreads: Math.min(threads, total),
  });
  // A worker that dies outside a task (or cannot even start) is reported only as an 'error'
  // event, and its tasks would wait forever: fail the sweep instead.
  let crashed: (e: unknown) => void = () => {};
  const crash = new Promise<never>((_, reject) => (crashed = reject));
  crash.catch(() => {});
  pool.on('error', (e: unknown) => crashed(e));
  try {
    // On the main thread while the workers start.
    const { capacity } = measureCapacity(trace, sim);
    const nativeRate = trace.length / span;
    // Rounded as bench/policies.ts does, so `marginal sim --rate-scale R` replays a run exactly.
    const loadScales = loads.map((load) => ({ load, rate_scale: Number(((load * capacity) / nativeRate).toPrecision(6)) }));

    // Per candidate, runs in (load, replicate) order.
    const results: TuneTaskResult[][] = candidates.map(() => []);
    let done = 0;
    o.onProgress?.(0, total);
    const tasks: Promise<void>[] = [];
    loadScales.forEach(({ rate_scale }, li) => {
      for (let rep = 0; rep < replicates; rep++) {
        for (const c of candidates) {
          const task: TuneTask = { candidate: c.index, load: li, replicate: rep, policy: o.grid.policy, rateScale: rate_scale, curves: { tokens: c.tokens, kv: c.kv } };
          tasks.push(
            pool.run(task).then((r) => {
              (results[r.candidate] as TuneTaskResult[])[r.load * replicates + r.replicate] = r;
              o.onProgress?.(++done, total);
            }),
          );
        }
      }
    });
    await Promise.race([Promise.all(tasks), crash]);

    const out: CandidateResult[] = candidates.map((c) => {
      const rs = results[c.index] as TuneTaskResult[];
      const res: CandidateResult = {
        index: c.index,
        label: `${curveLabel(c.tokens)} + ${curveLabel(c.kv)}`,
        curves: { tokens: c.tokens, kv: c.kv },
        welfare: NaN,
        welfare_stderr: NaN,
        revenue: NaN,
        goodput_rps: NaN,
        ttft_p99_ms: null,
        runs: [],
      };
      const failed = rs.find((r): r is Extract<TuneTaskResult, { error: string }> => 'error' in r);
      if (failed) {
        res.error = `load ${loadScales[failed.load]?.load}×: ${failed.error}`;
        return res;
      }
      res.runs = rs.map((r) => ({ ...(loadScales[r.load] as { load: number; rate_scale: number }), replicate: r.replicate, summary: (r as { summary: Summary }).summary }));
      // Summed in (load, replicate) order: the same float operations whatever order the runs finished in.
      res.welfare = res.runs.reduce((s, r) => s + r.summary.welfare, 0) / res.runs.length;
      res.welfare_stderr = stderrOf(welfareByReplicate(res, replicates));
      res.revenue = res.runs.reduce((s, r) => s + r.summary.revenue, 0) / res.runs.length;
      res.goodput_rps = res.runs.reduce((s, r) => s + r.summary.goodput_rps, 0) / res.runs.length;
      const p99s = res.runs.map((r) => r.summary.ttft_p99_ms);
      res.ttft_p99_ms = p99s.some((p) => p === null) ? null : Math.max(...(p99s as number[]));
      return res;
    });
    const ranking = out.filter((c) => c.error === undefined).sort(better).map((c) => c.index);
    const top = ranking[0];
    if (top === undefined) throw new Error(`every candidate failed; the first: ${out[0]?.error ?? 'no candidates'}`);
    const topC = out[top] as CandidateResult;
    const tied = ranking.filter((i) => i === top || !pairedSeparation(topC, out[i] as CandidateResult, replicates).separated);
    const second = ranking[1];
    let separation: TuneResult['separation'];
    if (second === undefined) separation = { difference: NaN, stderr: NaN, separated: true, reason: 'one candidate' };
    else {
      const sep = pairedSeparation(topC, out[second] as CandidateResult, replicates);
      const reason =
        replicates < 2
          ? 'one replicate: run-to-run noise unknown (use --replicates 2 or more)'
          : sep.separated
            ? `#${top} beats #${second} by ${sep.difference.toPrecision(3)} welfare, more than twice the noise (±${sep.stderr.toPrecision(3)})`
            : `#${top} beats #${second} by ${sep.difference.toPrecision(3)} welfare, within twice the noise (±${sep.stderr.toPrecision(3)}): no candidate separates from the others`;
      separation = { ...sep, reason };
    }
    const { profile, ...rest } = sim;
    return {
      policy: o.grid.policy,
      seed: o.grid.seed ?? null,
      requests: trace.length,
      native_rate_rps: nativeRate,
      capacity_rps: capacity,
      loads: loadScales,
      sim: { ...rest, profile },
      replicates,
      candidates: out,
      frontier: paretoFrontier(out),
      ranking,
      best: separation.separated ? top : null,
      tied,
      separation,
      objectives: objectiveSpreads(out, replicates),
      timing: { elapsed_s: (performance.now() - t0) / 1000, threads: Math.min(threads, total) },
    };
  } finally {
    crashed = () => {};
    // Every task has settled (or the sweep failed), so nothing is cut short.
    await pool.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs.

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const fmt = (v: number) => (Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(1) : String(Number(v.toPrecision(4))));

function ticks(lo: number, hi: number, n = 5): number[] {
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

export interface ScatterPoint {
  x: number;
  y: number;
  /** 0: plain, 1: highlighted, 2: marked and labelled. */
  level: 0 | 1 | 2;
  /** Hover text. */
  title: string;
  label?: string;
}

/** A self-contained SVG scatter plot in svg.ts's style; `legend` names the three levels. */
export function scatterChart(
  points: readonly ScatterPoint[],
  o: { title: string; xLabel: string; yLabel: string; legend: [string, string, string]; notes?: string[]; width?: number; height?: number },
): string {
  const W = o.width ?? 720;
  const H = o.height ?? 440;
  const m = { l: 80, r: 200, t: 40, b: 50 };
  const pad = (lo: number, hi: number): [number, number] => {
    const d = hi - lo || Math.abs(hi) || 1;
    return [lo - d * 0.05, hi + d * 0.05];
  };
  const fin = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const [x0, x1] = pad(Math.min(...fin.map((p) => p.x)), Math.max(...fin.map((p) => p.x)));
  const [y0, y1] = pad(Math.min(...fin.map((p) => p.y)), Math.max(...fin.map((p) => p.y)));
  const px = (x: number) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const py = (y: number) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l - 50}" y="22" font-size="14">${esc(o.title)}</text>`,
  ];
  for (const t of ticks(x0, x1)) parts.push(`<line x1="${px(t)}" y1="${H - m.b}" x2="${px(t)}" y2="${m.t}" stroke="#eee"/>`, `<text x="${px(t)}" y="${H - m.b + 16}" text-anchor="middle">${fmt(t)}</text>`);
  for (const t of ticks(y0, y1)) parts.push(`<line x1="${m.l}" y1="${py(t)}" x2="${W - m.r}" y2="${py(t)}" stroke="#eee"/>`, `<text x="${m.l - 6}" y="${py(t) + 4}" text-anchor="end">${fmt(t)}</text>`);
  parts.push(
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${m.l}" y2="${m.t}" stroke="black"/>`,
    `<text x="${(m.l + W - m.r) / 2}" y="${H - 12}" text-anchor="middle">${esc(o.xLabel)}</text>`,
    `<text x="18" y="${(m.t + H - m.b) / 2}" text-anchor="middle" font-size="11" transform="rotate(-90 18 ${(m.t + H - m.b) / 2})">${esc(o.yLabel)}</text>`,
  );
  const style = [
    { r: 3, fill: '#bbbbbb', stroke: 'none' },
    { r: 4.5, fill: '#1b6ca8', stroke: 'none' },
    { r: 6, fill: '#d1495b', stroke: 'black' },
  ] as const;
  // Highlighted points last, so the plain cloud never hides them.
  for (const level of [0, 1, 2] as const) {
    for (const p of fin.filter((q) => q.level === level)) {
      const s = style[level];
      parts.push(`<circle cx="${px(p.x).toFixed(1)}" cy="${py(p.y).toFixed(1)}" r="${s.r}" fill="${s.fill}" stroke="${s.stroke}"><title>${esc(p.title)}</title></circle>`);
      if (p.label) parts.push(`<text x="${(px(p.x) + 9).toFixed(1)}" y="${(py(p.y) + 4).toFixed(1)}">${esc(p.label)}</text>`);
    }
  }
  o.legend.forEach((name, i) => {
    const s = style[i as 0 | 1 | 2];
    const ly = m.t + 16 + i * 18;
    parts.push(`<circle cx="${W - m.r + 20}" cy="${ly - 4}" r="${s.r}" fill="${s.fill}" stroke="${s.stroke}"/>`, `<text x="${W - m.r + 32}" y="${ly}">${esc(name)}</text>`);
  });
  (o.notes ?? []).forEach((line, i) => parts.push(`<text x="${W - m.r + 12}" y="${m.t + 16 + 3 * 18 + 6 + i * 14}" font-size="10">${esc(line)}</text>`));
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

export function frontierSvg(r: TuneResult): string {
  const top = r.ranking[0];
  const onFrontier = new Set(r.frontier);
  const loads = r.loads.map((l) => `${l.load}×`).join(', ');
  const points: ScatterPoint[] = r.candidates
    .filter((c) => c.error === undefined)
    .map((c) => ({
      x: c.goodput_rps,
      y: c.welfare,
      level: c.index === top ? 2 : onFrontier.has(c.index) ? 1 : 0,
      title: `#${c.index} ${c.label}\nwelfare ${fmt(c.welfare)} ± ${fmt(c.welfare_stderr)}, revenue ${fmt(c.revenue)}, goodput ${fmt(c.goodput_rps)} req/s, p99 TTFT ${c.ttft_p99_ms === null ? '-' : fmt(c.ttft_p99_ms)} ms`,
      ...(c.index === top ? { label: r.best === null ? `top #${c.index} (within noise)` : `best #${c.index}` } : {}),
    }));
  return scatterChart(points, {
    title: `${r.candidates.length} curve pairs, ${r.policy}, mean over loads ${loads} of capacity`,
    xLabel: 'SLO goodput (req/s, mean over loads)',
    yLabel: 'welfare (mean over loads)',
    legend: ['candidate', 'Pareto frontier*', r.best === null ? 'top (not separated)' : 'best (max welfare)'],
    // The frontier is four-dimensional, so in this projection some of it looks dominated.
    notes: ['* non-dominated in welfare, revenue,', 'goodput and worst p99 TTFT at once'],
  });
}

/** Token price against utilization for the token curves of the best candidates (distinct, up to `top`). */
export function pricesSvg(r: TuneResult, top = 5): string {
  const seen = new Set<string>();
  const series: { name: string; points: [number, number][] }[] = [];
  let adaptive = false;
  for (const i of r.ranking) {
    if (series.length >= top) break;
    const c = r.candidates[i] as CandidateResult;
    const key = JSON.stringify(c.curves.tokens);
    if (seen.has(key)) continue;
    seen.add(key);
    const curve = parseCurve(c.curves.tokens, `candidate ${i} tokens`);
    // A dual curve's price is state, not a function of u: its starting price is all a plot can show.
    const dual = curve.kind === 'dual';
    adaptive ||= dual;
    series.push({ name: `#${i} ${curve.kind}${dual ? '*' : ''}`, points: Array.from({ length: 51 }, (_, k) => [k / 50, curve.price(k / 50)] as [number, number]) });
  }
  return lineChart(series, {
    title: `token price of the ${series.length} best token curves (by rank)${adaptive ? '; * adaptive: p0 shown' : ''}`,
    xLabel: 'token budget utilization',
    yLabel: 'price per batched token',
  });
}

export interface TuneFiles {
  tuneJson: string;
  /** Absent when no candidate separated from the rest beyond noise. */
  bestCurve?: string;
  frontierSvg: string;
  pricesSvg: string;
}

/** Writes tune.json (with `extra` merged in, e.g. the command line), best-curve.json and both plots. */
export async function writeTuneOutputs(r: TuneResult, dir: string, extra: Record<string, unknown> = {}): Promise<TuneFiles> {
  await mkdir(dir, { recursive: true });
  const files: TuneFiles = {
    tuneJson: join(dir, 'tune.json'),
    frontierSvg: join(dir, 'frontier.svg'),
    pricesSvg: join(dir, 'prices.svg'),
  };
  const writes = [
    // JSON has no NaN: a candidate with one replicate has no noise estimate, written as null.
    writeFile(files.tuneJson, JSON.stringify({ ...extra, ...r }, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n'),
    writeFile(files.frontierSvg, frontierSvg(r)),
    writeFile(files.pricesSvg, pricesSvg(r)),
  ];
  const stale = join(dir, 'best-curve.json');
  if (r.best !== null) {
    const best = r.candidates[r.best] as CandidateResult;
    // Through parseCurveFile and back: the file is what loadCurveFile reads, by construction.
    const bestCurve = curveFileJson(parseCurveFile(best.curves, `candidate ${best.index}`));
    files.bestCurve = stale;
    writes.push(writeFile(stale, JSON.stringify(bestCurve, null, 2) + '\n'));
  } else writes.push(rm(stale, { force: true }));
  await Promise.all(writes);
  return files;
}
