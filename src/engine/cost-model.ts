import { readFile } from 'node:fs/promises';
import { InvalidArgumentError } from '../errors.js';
import { KvOp, type Engine, type EngineInfo, type StepItem, type StepPlan, type StepResult } from './types.js';

/**
 * Step time of the real engine as a linear function of what a step does, fitted by
 * `marginal calibrate` from measurements:
 *
 *   ms = base + perToken·tokens + perContext·(context / 1000)
 *        + perSequence·sequences + perRun·(session runs − 1)
 *
 * `tokens` prices the weight GEMMs, `perContext` the attention over the cache, `perSequence`
 * sampling and per-row glue, `perRun` each extra session.run. What `context` counts is the
 * profile's `contextTerm` (see StepShape).
 */
export interface StepProfile {
  model: string;
  machine: string;
  flavour: string;
  baseMs: number;
  perTokenMs: number;
  perContextMs: number;
  perSequenceMs: number;
  perRunMs: number;
  /**
   * What the serving loop spends per request that reaches the scheduler (HTTP, tokenizing) and
   * per request that ends (its response), in the period of the step they fall in: fitted to a
   * server's step log (`calibrate --from-steps`); absent (0) for the engine measured alone.
   */
  perArrivalMs?: number;
  perFinishMs?: number;
  /** Engine geometry the profile was measured with. */
  maxSequences: number;
  maxContext: number;
  blockSize: number;
  /** Time to move one token's keys and values between the pool and host memory, one way. */
  swapMsPerToken?: number;
  /** Bytes one token's keys and values take: turns --kv-memory into blocks in the simulator. */
  kvBytesPerToken?: number;
  /**
   * What perContextMs multiplies: `attended`, the positions the paged engine's attention reads
   * (StepShape.contextTokens); absent (profiles fitted before the paged pool), `held`: Σ over
   * the step's sequences of the positions they hold after it.
   */
  contextTerm?: 'attended';
  /** Fit quality on the calibration samples. */
  r2?: number;
  samples?: number;
}

export interface StepShape {
  tokens: number;
  /**
   * Positions the step's attention reads, as the paged engine runs it: in each session run
   * (the decodes together, prefill chunks of one length together) every row reads the longest
   * past in the run, in whole blocks, plus the run's new tokens. (For a profile without
   * `contextTerm`: Σ of the positions each sequence holds after the step.)
   */
  contextTokens: number;
  sequences: number;
  runs: number;
}

// Scratch for stepShape: one entry per run (width 1 = the decodes), reused across calls.
const runWidth: number[] = [];
const runRows: number[] = [];
const runLongest: number[] = [];

/** A step's shape as the engine will run it (see StepShape); writes into `into`. */
export function stepShape(items: readonly StepItem[], blockSize: number, into: StepShape): StepShape {
  let runs = 0;
  let tokens = 0;
  for (const it of items) {
    tokens += it.count;
    let r = 0;
    while (r < runs && runWidth[r] !== it.count) r++;
    if (r === runs) {
      runWidth[r] = it.count;
      runRows[r] = 0;
      runLongest[r] = 0;
      runs++;
    }
    runRows[r] = (runRows[r] as number) + 1;
    if (it.offset > (runLongest[r] as number)) runLongest[r] = it.offset;
  }
  let context = 0;
  for (let r = 0; r < runs; r++) {
    const past = Math.max(1, Math.ceil((runLongest[r] as number) / blockSize)) * blockSize;
    context += (runRows[r] as number) * (past + (runWidth[r] as number));
  }
  into.tokens = tokens;
  into.contextTokens = context;
  into.sequences = items.length;
  into.runs = runs;
  return into;
}

export function predictStepMs(p: StepProfile, s: StepShape): number {
  return p.baseMs + p.perTokenMs * s.tokens + p.perContextMs * (s.contextTokens / 1000) + p.perSequenceMs * s.sequences + p.perRunMs * Math.max(0, s.runs - 1);
}

/** A served step's whole period as the profile predicts it: the step, plus the requests that arrived and ended during it. */
export function predictSampleMs(p: StepProfile, x: StepSample): number {
  return predictStepMs(p, x.shape) + (p.perArrivalMs ?? 0) * (x.arrivals ?? 0) + (p.perFinishMs ?? 0) * (x.finished ?? 0);
}

/** The profile of a machine `factor` times slower (every term scales: the machine's pace, not the model's shape). */
export function scaleProfile(p: StepProfile, factor: number): StepProfile {
  if (!(factor > 0) || !Number.isFinite(factor)) throw new InvalidArgumentError(`a profile's speed factor must be a positive number, got ${factor}`);
  return {
    ...p,
    baseMs: p.baseMs * factor,
    perTokenMs: p.perTokenMs * factor,
    perContextMs: p.perContextMs * factor,
    perSequenceMs: p.perSequenceMs * factor,
    perRunMs: p.perRunMs * factor,
    ...(p.perArrivalMs !== undefined ? { perArrivalMs: p.perArrivalMs * factor } : {}),
    ...(p.perFinishMs !== undefined ? { perFinishMs: p.perFinishMs * factor } : {}),
  };
}

export function parseProfile(json: unknown, source = 'profile'): StepProfile {
  if (json === null || typeof json !== 'object') throw new InvalidArgumentError(`${source} must be a JSON object`);
  const o = json as Record<string, unknown>;
  const num = (k: string, min = 0): number => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min) throw new InvalidArgumentError(`${source} ${k} must be a number >= ${min}`);
    return v;
  };
  const int = (k: string): number => {
    const v = num(k, 1);
    if (!Number.isInteger(v)) throw new InvalidArgumentError(`${source} ${k} must be an integer`);
    return v;
  };
  return {
    model: typeof o.model === 'string' ? o.model : 'unknown',
    machine: typeof o.machine === 'string' ? o.machine : 'unknown',
    flavour: typeof o.flavour === 'string' ? o.flavour : 'fast',
    baseMs: num('baseMs'),
    perTokenMs: num('perTokenMs'),
    perContextMs: num('perContextMs'),
    perSequenceMs: num('perSequenceMs'),
    perRunMs: num('perRunMs'),
    maxSequences: int('maxSequences'),
    maxContext: int('maxContext'),
    blockSize: int('blockSize'),
    ...(o.perArrivalMs !== undefined ? { perArrivalMs: num('perArrivalMs') } : {}),
    ...(o.perFinishMs !== undefined ? { perFinishMs: num('perFinishMs') } : {}),
    ...(typeof o.swapMsPerToken === 'number' ? { swapMsPerToken: o.swapMsPerToken } : {}),
    ...(typeof o.kvBytesPerToken === 'number' ? { kvBytesPerToken: o.kvBytesPerToken } : {}),
    ...(o.contextTerm === 'attended' ? { contextTerm: 'attended' as const } : {}),
    ...(typeof o.r2 === 'number' ? { r2: o.r2 } : {}),
    ...(typeof o.samples === 'number' ? { samples: o.samples } : {}),
  };
}

export async function loadProfile(path: string): Promise<StepProfile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`cannot read profile ${path}: ${(e as Error).message}`);
  }
  try {
    return parseProfile(JSON.parse(text), `profile ${path}`);
  } catch (e) {
    if (e instanceof SyntaxError) throw new InvalidArgumentError(`profile ${path} is not valid JSON: ${e.message}`);
    throw e;
  }
}

/**
 * The simulator's engine: executes a step plan by predicting its duration from a calibrated
 * profile instead of running a model. Like the real engine it keeps no per-sequence length (an
 * item's offset is its context), charges the plan's swaps at the profile's copy rate, and
 * emits a placeholder token (never a stop token: in simulation a request ends at its trace
 * length).
 */
export class CostModelEngine implements Engine {
  readonly info: EngineInfo;
  private readonly swapMsPerBlock: number;
  static readonly TOKEN = 3;

  constructor(
    readonly profile: StepProfile,
    geometry: { maxSequences?: number; maxContext?: number; blockSize?: number; totalBlocks?: number; hostBlocks?: number } = {},
  ) {
    const maxSequences = geometry.maxSequences ?? profile.maxSequences;
    const maxContext = geometry.maxContext ?? profile.maxContext;
    const blockSize = geometry.blockSize ?? profile.blockSize;
    const totalBlocks = geometry.totalBlocks ?? maxSequences * Math.ceil(maxContext / blockSize);
    const swapMs = profile.swapMsPerToken;
    this.info = {
      flavour: `cost-model(${profile.flavour})`,
      provider: 'cpu',
      maxSequences,
      maxContext,
      blockSize,
      totalBlocks,
      // Without a measured copy rate the simulated engine cannot swap.
      hostBlocks: swapMs === undefined ? 0 : (geometry.hostBlocks ?? totalBlocks),
      blockBytes: 0,
      swapSecondsPerToken: swapMs === undefined ? Infinity : swapMs / 1000,
      vocabSize: 32000,
    };
    this.swapMsPerBlock = (swapMs ?? 0) * blockSize;
  }

  async execute(plan: StepPlan): Promise<StepResult> {
    return this.executeSync(plan);
  }

  /** The same as `execute` without a promise: the simulator's loop runs millions of steps. */
  executeSync(plan: StepPlan): StepResult {
    const items = plan.items;
    const tokens = new Int32Array(items.length).fill(-1);
    for (let i = 0; i < items.length; i++) if ((items[i] as StepItem).sample) tokens[i] = CostModelEngine.TOKEN;
    let swaps = 0;
    for (let i = 0; i < plan.kvOps.length; i += 3) if (plan.kvOps[i] !== KvOp.copy) swaps++;
    const shape = stepShape(items, this.info.blockSize, this.shape);
    if (this.profile.contextTerm !== 'attended') {
      let held = 0;
      for (const it of items) held += it.offset + it.count;
      shape.contextTokens = held;
    }
    const ms = (items.length === 0 ? 0 : predictStepMs(this.profile, shape)) + swaps * this.swapMsPerBlock;
    return { tokens, timing: { totalMs: ms, runMs: ms, sampleMs: 0, glueMs: 0, runs: shape.runs, batchTokens: shape.tokens, kvBytesCopied: 0 } };
  }

  private readonly shape: StepShape = { tokens: 0, contextTokens: 0, sequences: 0, runs: 0 };

  async dispose(): Promise<void> {}
}

/** One measured step: its shape, its time, and the requests that arrived and ended during it (served steps only). */
export interface StepSample {
  shape: StepShape;
  ms: number;
  arrivals?: number;
  finished?: number;
}

type FittedTerms = Pick<StepProfile, 'baseMs' | 'perTokenMs' | 'perContextMs' | 'perSequenceMs' | 'perRunMs' | 'r2'> & Partial<Pick<StepProfile, 'perArrivalMs' | 'perFinishMs'>>;

/**
 * Least-squares fit of a profile's coefficients (clamped at zero) to measured steps. The
 * per-request terms are fitted only when some sample carries arrivals or finishes.
 */
export function fitProfile(samples: readonly StepSample[]): FittedTerms {
  const perRequest = samples.some((x) => (x.arrivals ?? 0) > 0 || (x.finished ?? 0) > 0);
  const feats = (x: StepSample) => {
    const s = x.shape;
    const f = [1, s.tokens, s.contextTokens / 1000, s.sequences, Math.max(0, s.runs - 1)];
    if (perRequest) f.push(x.arrivals ?? 0, x.finished ?? 0);
    return f;
  };
  const k = perRequest ? 7 : 5;
  let active = Array.from({ length: k }, (_, i) => i);
  let coef = new Array<number>(k).fill(0);
  // Active-set non-negative least squares: refit without any coefficient that comes out negative.
  for (let iter = 0; iter < k; iter++) {
    const m = active.length;
    const ata = Array.from({ length: m }, () => new Array<number>(m).fill(0));
    const atb = new Array<number>(m).fill(0);
    for (const x of samples) {
      const f = feats(x);
      for (let i = 0; i < m; i++) {
        const fi = f[active[i] as number] as number;
        atb[i] = (atb[i] as number) + fi * x.ms;
        for (let j = 0; j < m; j++) (ata[i] as number[])[j] = ((ata[i] as number[])[j] as number) + fi * (f[active[j] as number] as number);
      }
    }
    const sol = solve(ata, atb);
    coef = new Array<number>(k).fill(0);
    active.forEach((a, i) => (coef[a] = sol[i] as number));
    const negative = active.filter((a) => (coef[a] as number) < 0);
    if (negative.length === 0) break;
    active = active.filter((a) => (coef[a] as number) >= 0);
  }
  coef = coef.map((c) => Math.max(0, c));
  const mean = samples.reduce((s, x) => s + x.ms, 0) / samples.length;
  let ssRes = 0;
  let ssTot = 0;
  for (const x of samples) {
    const pred = feats(x).reduce((s, v, i) => s + v * (coef[i] as number), 0);
    ssRes += (x.ms - pred) ** 2;
    ssTot += (x.ms - mean) ** 2;
  }
  return {
    baseMs: coef[0] as number,
    perTokenMs: coef[1] as number,
    perContextMs: coef[2] as number,
    perSequenceMs: coef[3] as number,
    perRunMs: coef[4] as number,
    ...(perRequest ? { perArrivalMs: coef[5] as number, perFinishMs: coef[6] as number } : {}),
    r2: ssTot > 0 ? 1 - ssRes / ssTot : 1,
  };
}

/** Gaussian elimination with partial pivoting; singular directions get 0. */
function solve(a: number[][], b: number[]): number[] {
  const n = b.length;
  const m = a.map((row, i) => [...row, b[i] as number]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs((m[r] as number[])[c] as number) > Math.abs((m[p] as number[])[c] as number)) p = r;
    [m[c], m[p]] = [m[p] as number[], m[c] as number[]];
    const pivot = (m[c] as number[])[c] as number;
    if (Math.abs(pivot) < 1e-12) continue;
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = ((m[r] as number[])[c] as number) / pivot;
      for (let j = c; j <= n; j++) (m[r] as number[])[j] = ((m[r] as number[])[j] as number) - f * ((m[c] as number[])[j] as number);
    }
  }
  return m.map((row, i) => {
    const d = row[i] as number;
    return Math.abs(d) < 1e-12 ? 0 : (row[n] as number) / d;
  });
}
