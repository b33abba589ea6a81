import { readFile } from 'node:fs/promises';
import { InvalidArgumentError } from '../errors.js';
import { KvOp, type Engine, type EngineInfo, type StepItem, type StepPlan, type StepResult } from './types.js';

/**
 * Step time of the real engine as a linear function of what a step does, fitted by
 * `marginal calibrate` from measurements:
 *
 *   ms = base + perToken·tokens + perContext·(Σ over decoded sequences of context / 1000)
 *        + perSequence·sequences + perRun·(session runs − 1)
 *
 * `tokens` prices the weight GEMMs, `perContext` the attention over each sequence's cache,
 * `perSequence` sampling and per-row glue, `perRun` each extra session.run (prefill chunks run
 * on their own).
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
  /** Engine geometry the profile was measured with. */
  maxSequences: number;
  maxContext: number;
  blockSize: number;
  /** Time to move one token's keys and values between the pool and host memory, one way. */
  swapMsPerToken?: number;
  /** Bytes one token's keys and values take: turns --kv-memory into blocks in the simulator. */
  kvBytesPerToken?: number;
  /** Fit quality on the calibration samples. */
  r2?: number;
  samples?: number;
}

export interface StepShape {
  tokens: number;
  contextTokens: number;
  sequences: number;
  runs: number;
}

export function predictStepMs(p: StepProfile, s: StepShape): number {
  return p.baseMs + p.perTokenMs * s.tokens + p.perContextMs * (s.contextTokens / 1000) + p.perSequenceMs * s.sequences + p.perRunMs * Math.max(0, s.runs - 1);
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
    ...(typeof o.swapMsPerToken === 'number' ? { swapMsPerToken: o.swapMsPerToken } : {}),
    ...(typeof o.kvBytesPerToken === 'number' ? { kvBytesPerToken: o.kvBytesPerToken } : {}),
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
    let batch = 0;
    let ctx = 0;
    let decodes = 0;
    let prefills = 0;
    for (let i = 0; i < items.length; i++) {
      const it = items[i] as StepItem;
      batch += it.count;
      ctx += it.offset + it.count;
      if (it.count === 1) decodes++;
      else prefills++;
      if (it.sample) tokens[i] = CostModelEngine.TOKEN;
    }
    let swaps = 0;
    for (let i = 0; i < plan.kvOps.length; i += 3) if (plan.kvOps[i] !== KvOp.copy) swaps++;
    const runs = (decodes > 0 ? 1 : 0) + prefills;
    const ms = (items.length === 0 ? 0 : predictStepMs(this.profile, { tokens: batch, contextTokens: ctx, sequences: items.length, runs })) + swaps * this.swapMsPerBlock;
    return { tokens, timing: { totalMs: ms, runMs: ms, sampleMs: 0, glueMs: 0, runs, batchTokens: batch, kvBytesCopied: 0 } };
  }

  async dispose(): Promise<void> {}
}

/** Least-squares fit of a profile's coefficients (clamped at zero) to measured steps. */
export function fitProfile(samples: { shape: StepShape; ms: number }[]): Pick<StepProfile, 'baseMs' | 'perTokenMs' | 'perContextMs' | 'perSequenceMs' | 'perRunMs' | 'r2'> {
  const feats = (s: StepShape) => [1, s.tokens, s.contextTokens / 1000, s.sequences, Math.max(0, s.runs - 1)];
  const k = 5;
  let active = [0, 1, 2, 3, 4];
  let coef = new Array<number>(k).fill(0);
  // Active-set non-negative least squares: refit without any coefficient that comes out negative.
  for (let iter = 0; iter < k; iter++) {
    const m = active.length;
    const ata = Array.from({ length: m }, () => new Array<number>(m).fill(0));
    const atb = new Array<number>(m).fill(0);
    for (const { shape, ms } of samples) {
      const f = feats(shape);
      for (let i = 0; i < m; i++) {
        const fi = f[active[i] as number] as number;
        atb[i] = (atb[i] as number) + fi * ms;
        for (let j = 0; j < m; j++) (ata[i] as number[])[j] = ((ata[i] as number[])[j] as number) + fi * (f[active[j] as number] as number);
      }
    }
    const x = solve(ata, atb);
    coef = new Array<number>(k).fill(0);
    active.forEach((a, i) => (coef[a] = x[i] as number));
    const negative = active.filter((a) => (coef[a] as number) < 0);
    if (negative.length === 0) break;
    active = active.filter((a) => (coef[a] as number) >= 0);
  }
  coef = coef.map((c) => Math.max(0, c));
  const mean = samples.reduce((s, x) => s + x.ms, 0) / samples.length;
  let ssRes = 0;
  let ssTot = 0;
  for (const { shape, ms } of samples) {
    const f = feats(shape);
    const pred = f.reduce((s, v, i) => s + v * (coef[i] as number), 0);
    ssRes += (ms - pred) ** 2;
    ssTot += (ms - mean) ** 2;
  }
  return {
    baseMs: coef[0] as number,
    perTokenMs: coef[1] as number,
    perContextMs: coef[2] as number,
    perSequenceMs: coef[3] as number,
    perRunMs: coef[4] as number,
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
