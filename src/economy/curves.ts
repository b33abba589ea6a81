import { readFile } from 'node:fs/promises';
import { InvalidArgumentError } from '../errors.js';

/**
 * Congestion price curves: utilization of a constrained resource → its shadow price.
 *
 * Curve file (`marginal sim|serve --curve FILE`, written by `marginal tune`):
 *
 *     { "tokens": { "kind": "power", "p0": 0, "scale": 0.001, "exponent": 4 },
 *       "kv":     { "kind": "mm1", "p0": 0, "scale": 0.00001, "max_utilization": 0.99 } }
 *
 * `tokens` prices one batched token (p_tok, value per token); `kv` prices KV memory (p_kv,
 * value per block per second). Either may be omitted to keep its default. Curve kinds:
 *
 *   linear {p0, slope}                       p0 + slope·u
 *   power  {p0, scale, exponent}             p0 + scale·u^exponent
 *   mm1    {p0, scale, max_utilization=.99}  p0 + scale·u/(1−u), u capped at max_utilization
 *   table  {points: [[u, p], ...]}           piecewise linear, flat beyond the ends
 *   dual   {p0, step, target, min=0, max}    adaptive: each step p ← clamp(p + step·(u − target))
 *
 * Unknown fields are errors, so a typo ("slop") is reported instead of silently ignored.
 *
 * Utilization is the used fraction of a hard capacity, so it is clamped to [0, 1] (NaN, e.g.
 * 0/0 on an empty pool, reads as idle). Every curve is non-decreasing in u and never negative:
 * the scheduler's greedy admission and eviction orderings rely on a busier resource never
 * being cheaper.
 */
export interface PriceCurve {
  readonly kind: string;
  price(u: number): number;
  /** Called once per scheduler step with that step's utilization; only adaptive curves change. */
  observe(u: number): void;
  /** Returns an adaptive curve to its initial state (so one parsed file can drive many runs). */
  reset(): void;
  /** The spec parseCurve accepts to rebuild this curve (its initial state, for adaptive ones). */
  describe(): object;
}

export interface PriceCurves {
  /** p_tok: marginal compute cost of one batched token. */
  tokens: PriceCurve;
  /** p_kv: rent of one KV block for one second. */
  kv: PriceCurve;
}

function clampU(u: number): number {
  return u > 0 ? (u < 1 ? u : 1) : 0;
}

class LinearCurve implements PriceCurve {
  readonly kind = 'linear';
  constructor(readonly p0: number, readonly slope: number) {}
  price(u: number): number {
    return this.p0 + this.slope * clampU(u);
  }
  observe(): void {}
  reset(): void {}
  describe(): object {
    return { kind: this.kind, p0: this.p0, slope: this.slope };
  }
}

class PowerCurve implements PriceCurve {
  readonly kind = 'power';
  constructor(readonly p0: number, readonly scale: number, readonly exponent: number) {}
  price(u: number): number {
    return this.p0 + this.scale * Math.pow(clampU(u), this.exponent);
  }
  observe(): void {}
  reset(): void {}
  describe(): object {
    return { kind: this.kind, p0: this.p0, scale: this.scale, exponent: this.exponent };
  }
}

/** The M/M/1 delay factor u/(1−u): the queueing cost a marginal unit of load imposes. */
class Mm1Curve implements PriceCurve {
  readonly kind = 'mm1';
  constructor(readonly p0: number, readonly scale: number, readonly maxUtilization: number) {}
  price(u: number): number {
    const x = Math.min(clampU(u), this.maxUtilization);
    return this.p0 + (this.scale * x) / (1 - x);
  }
  observe(): void {}
  reset(): void {}
  describe(): object {
    return { kind: this.kind, p0: this.p0, scale: this.scale, max_utilization: this.maxUtilization };
  }
}

class TableCurve implements PriceCurve {
  readonly kind = 'table';
  private readonly us: Float64Array;
  private readonly ps: Float64Array;
  constructor(points: ReadonlyArray<readonly [number, number]>) {
    this.us = Float64Array.from(points, (p) => p[0]);
    this.ps = Float64Array.from(points, (p) => p[1]);
  }
  price(u: number): number {
    const us = this.us;
    const ps = this.ps;
    const n = us.length;
    const x = clampU(u);
    if (x <= us[0]!) return ps[0]!;
    if (x >= us[n - 1]!) return ps[n - 1]!;
    // Largest i with us[i] <= x; then x lies in [us[i], us[i+1]).
    let lo = 0;
    let hi = n - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (us[mid]! <= x) lo = mid;
      else hi = mid;
    }
    const u0 = us[lo]!;
    const p0 = ps[lo]!;
    const p1 = ps[hi]!;
    // The min guards monotonicity across the knot against one ulp of rounding.
    return Math.min(p0 + ((p1 - p0) * (x - u0)) / (us[hi]! - u0), p1);
  }
  observe(): void {}
  reset(): void {}
  describe(): object {
    return { kind: this.kind, points: Array.from(this.us, (u, i) => [u, this.ps[i]!]) };
  }
}

/**
 * Dual (sub)gradient ascent on the capacity constraint u ≤ target: the price is state, raised
 * while the resource runs above target and lowered while below, so it settles at the price
 * that clears demand. price(u) is the current state: constant within a step (so trivially
 * non-decreasing in u), and observe's update is itself increasing in u, so a busier history
 * never yields a lower price.
 */
class DualCurve implements PriceCurve {
  readonly kind = 'dual';
  private state: number;
  constructor(
    readonly p0: number,
    readonly step: number,
    readonly target: number,
    readonly min: number,
    readonly max: number,
  ) {
    this.state = p0;
  }
  price(): number {
    return this.state;
  }
  observe(u: number): void {
    const p = this.state + this.step * (clampU(u) - this.target);
    this.state = p < this.min ? this.min : p > this.max ? this.max : p;
  }
  reset(): void {
    this.state = this.p0;
  }
  describe(): object {
    const spec: Record<string, unknown> = { kind: this.kind, p0: this.p0, step: this.step, target: this.target, min: this.min };
    // JSON has no Infinity: an unbounded max is written by omission, which parses back to it.
    if (this.max !== Infinity) spec.max = this.max;
    return spec;
  }
}

const KINDS: Readonly<Record<string, readonly string[]>> = {
  linear: ['p0', 'slope'],
  power: ['p0', 'scale', 'exponent'],
  mm1: ['p0', 'scale', 'max_utilization'],
  table: ['points'],
  dual: ['p0', 'step', 'target', 'min', 'max'],
};

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

type Check = 'non-negative' | 'positive' | 'unit' | 'open-unit';
const CHECK_TEXT: Record<Check, string> = {
  'non-negative': 'a non-negative number',
  positive: 'a positive number',
  unit: 'a number in [0, 1]',
  'open-unit': 'a number in (0, 1)',
};

function num(spec: Record<string, unknown>, field: string, where: string, check: Check, fallback?: number): number {
  const v = spec[field];
  if (v === undefined && fallback !== undefined) return fallback;
  const ok =
    typeof v === 'number' &&
    Number.isFinite(v) &&
    (check === 'non-negative' ? v >= 0 : check === 'positive' ? v > 0 : check === 'unit' ? v >= 0 && v <= 1 : v > 0 && v < 1);
  if (!ok) throw new InvalidArgumentError(`${where}.${field} must be ${CHECK_TEXT[check]}${v === undefined ? ' (missing)' : ''}`);
  return v;
}

function parseTable(spec: Record<string, unknown>, where: string): TableCurve {
  const pts = spec.points;
  if (!Array.isArray(pts) || pts.length === 0) {
    throw new InvalidArgumentError(`${where}.points must be a non-empty array of [u, price] pairs`);
  }
  const out: Array<[number, number]> = [];
  for (let i = 0; i < pts.length; i++) {
    const at = `${where}.points[${i}]`;
    const pt: unknown = pts[i];
    if (!Array.isArray(pt) || pt.length !== 2) throw new InvalidArgumentError(`${at} must be a [u, price] pair`);
    const [u, p] = pt as unknown[];
    if (typeof u !== 'number' || !(u >= 0 && u <= 1)) throw new InvalidArgumentError(`${at}[0] (u) must be a number in [0, 1]`);
    if (typeof p !== 'number' || !Number.isFinite(p) || p < 0) throw new InvalidArgumentError(`${at}[1] (price) must be a non-negative number`);
    const prev = out[i - 1];
    if (prev && u <= prev[0]) throw new InvalidArgumentError(`${at}[0] (u) must be greater than the previous point's: u must strictly increase`);
    if (prev && p < prev[1]) throw new InvalidArgumentError(`${at}[1] (price) must be at least the previous point's: prices must not decrease`);
    out.push([u, p]);
  }
  return new TableCurve(out);
}

/**
 * Builds a curve from its JSON spec. `where` prefixes every error so the user can find the
 * field, e.g. `curve file tokens` gives "curve file tokens.exponent must be a positive number".
 */
export function parseCurve(spec: unknown, where: string): PriceCurve {
  if (!isObject(spec)) throw new InvalidArgumentError(`${where} must be an object with a "kind" field`);
  const kind = spec.kind;
  const fields = typeof kind === 'string' && Object.hasOwn(KINDS, kind) ? KINDS[kind] : undefined;
  if (kind === undefined || fields === undefined) {
    const got = kind === undefined ? 'missing' : `got ${JSON.stringify(kind)}`;
    throw new InvalidArgumentError(`${where}.kind must be one of ${Object.keys(KINDS).join(', ')} (${got})`);
  }
  for (const key of Object.keys(spec)) {
    if (key !== 'kind' && !fields.includes(key)) {
      throw new InvalidArgumentError(`${where}.${key} is not a field of a ${kind} curve (fields: ${fields.join(', ')})`);
    }
  }
  switch (kind) {
    case 'linear':
      return new LinearCurve(num(spec, 'p0', where, 'non-negative'), num(spec, 'slope', where, 'non-negative'));
    case 'power':
      return new PowerCurve(num(spec, 'p0', where, 'non-negative'), num(spec, 'scale', where, 'non-negative'), num(spec, 'exponent', where, 'positive'));
    case 'mm1':
      return new Mm1Curve(num(spec, 'p0', where, 'non-negative'), num(spec, 'scale', where, 'non-negative'), num(spec, 'max_utilization', where, 'open-unit', 0.99));
    case 'table':
      return parseTable(spec, where);
    default: {
      const p0 = num(spec, 'p0', where, 'non-negative');
      const step = num(spec, 'step', where, 'positive');
      const target = num(spec, 'target', where, 'unit');
      const min = num(spec, 'min', where, 'non-negative', 0);
      const max = spec.max === undefined ? Infinity : num(spec, 'max', where, 'non-negative');
      if (max < min) throw new InvalidArgumentError(`${where}.max must be at least ${where}.min (${min})`);
      if (p0 < min || p0 > max) throw new InvalidArgumentError(`${where}.p0 must lie in [min, max] = [${min}, ${max}]`);
      return new DualCurve(p0, step, target, min, max);
    }
  }
}

/**
 * Defaults, ~0 when idle and steep near full. Scale: a request is worth O(1) value and a
 * completion is O(100) tokens, so value is ~1e-2 per output token; compute should cost an
 * order or two less, ~1e-4..1e-3 per token.
 *
 * tokens: power(scale 1e-3, exponent 4). Free at idle (plain continuous batching), 6e-5 at
 *   half load, 6.6e-4 at 90%, 1e-3 when the batch is full. A 300-token request (prompt plus
 *   completion) then costs at most 0.3, so only requests worth less than that wait at full load.
 * kv: mm1(scale 1e-5). A request holds ~20 blocks (300 tokens / 16 per block) for a few seconds,
 *   ~100 block-seconds: rent is 1e-3 at half full (negligible), 9e-3 at 90% and 0.1 at the 99%
 *   cap (99·scale ≈ 1e-3 per block-second, the same order as a full batch's token price), so
 *   KV pressure only decides admission and eviction when memory is nearly exhausted.
 */
export function defaultCurves(): PriceCurves {
  return {
    tokens: new PowerCurve(0, 1e-3, 4),
    kv: new Mm1Curve(0, 1e-5, 0.99),
  };
}

/** Parses a curve file's JSON; `source` names it in errors. */
export function parseCurveFile(json: unknown, source = 'curve file'): PriceCurves {
  if (!isObject(json)) throw new InvalidArgumentError(`${source} must be a JSON object with "tokens" and/or "kv" curves`);
  for (const key of Object.keys(json)) {
    if (key !== 'tokens' && key !== 'kv') throw new InvalidArgumentError(`${source}: unknown field "${key}" (expected "tokens" and/or "kv")`);
  }
  const d = defaultCurves();
  return {
    tokens: json.tokens === undefined ? d.tokens : parseCurve(json.tokens, `${source} tokens`),
    kv: json.kv === undefined ? d.kv : parseCurve(json.kv, `${source} kv`),
  };
}

export async function loadCurveFile(path: string): Promise<PriceCurves> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`cannot read curve file ${path}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new InvalidArgumentError(`curve file ${path} is not valid JSON: ${(e as Error).message}`);
  }
  return parseCurveFile(json, `curve file ${path}`);
}

/** The JSON object parseCurveFile reads back to the same curves. */
export function curveFileJson(c: PriceCurves): object {
  return { tokens: c.tokens.describe(), kv: c.kv.describe() };
}
