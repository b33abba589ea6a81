import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { hashString, mulberry32 } from '../random.js';
import { parseClient, type ClientBehaviour, type TraceRequest } from './trace.js';

/**
 * Workloads: who sends a trace's requests and what they are worth.
 *
 * Public traces record arrivals and lengths only. The Azure 2023 traces carry no tenant, value,
 * SLO, deadline or priority, and neither do Mooncake's; a pricing scheduler has nothing to
 * price without them. A workload supplies them: each request is given a tenant in proportion
 * to the tenants' shares, chosen by a hash of (workload seed, request id) so that the choice is
 * the same on every run and does not depend on the order or the subset of requests read, and
 * then that tenant's value (drawn from its distribution with a PRNG seeded by the same hash),
 * SLO, deadline and priority, for each of those the request does not already carry. Replaying
 * an Azure trace with `defaultWorkload()` thus gives about 20% interactive requests with
 * a high value and a tight TTFT/TPOT SLO, 50% standard and 30% batch requests with a low
 * per-token bid and only a deadline. Change the seed to reshuffle which requests are which.
 */

export type ValueDist =
  | { dist: 'const'; value: number }
  /** `mean` is the distribution's mean (not μ): μ = ln(mean) − σ²/2. */
  | { dist: 'lognormal'; mean: number; sigma: number }
  | { dist: 'uniform'; min: number; max: number };

export interface TenantSpec {
  name: string;
  /** Relative weight; shares need not sum to 1. */
  share: number;
  /** Absent: the tenant's requests carry no value unless the trace gives one. */
  value?: ValueDist;
  /** The drawn number is a bid per output token rather than the completion's value. */
  valuePerToken: boolean;
  slo?: { ttftMs?: number; tpotMs?: number };
  deadlineMs?: number;
  priority?: number;
  /** The max_tokens its requests send (at least their output length): an upper bound, as real clients set. */
  maxTokens?: number;
  /** It declares more than its requests are worth: × `times`, or a fixed `value` (a liar, for incentive tests). */
  claim?: { times?: number; value?: number };
  /** How its clients answer 429 quotes. */
  client?: ClientBehaviour;
  /** What it may spend in all (the simulator's ledger); absent: no budget. */
  budget?: number;
}

export interface Workload {
  seed: number;
  tenants: TenantSpec[];
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness. Small and local so that a trace generated today is the same trace next
// year, whatever Math.random or a library does.

type Rng = () => number;


/** In (0, 1): safe for logarithms. */
function openUniform(rng: Rng): number {
  return rng() + 0.5 / 4294967296;
}

function normal(rng: Rng): number {
  return Math.sqrt(-2 * Math.log(openUniform(rng))) * Math.cos(2 * Math.PI * rng());
}

/** Marsaglia and Tsang (2000), with the u^(1/k) boost for shape k < 1. */
function gamma(rng: Rng, shape: number, scale: number): number {
  if (shape < 1) return gamma(rng, shape + 1, scale) * Math.pow(openUniform(rng), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number;
    let v: number;
    do {
      x = normal(rng);
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = openUniform(rng);
    if (u < 1 - 0.0331 * x * x * x * x) return d * v * scale;
    if (Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v * scale;
  }
}

function lognormal(rng: Rng, mean: number, sigma: number): number {
  return Math.exp(Math.log(mean) - (sigma * sigma) / 2 + sigma * normal(rng));
}

function sampleValue(rng: Rng, d: ValueDist): number {
  switch (d.dist) {
    case 'const':
      return d.value;
    case 'lognormal':
      return lognormal(rng, d.mean, d.sigma);
    case 'uniform':
      return d.min + (d.max - d.min) * rng();
  }
}

// ---------------------------------------------------------------------------------------------
// Workload files.

type Obj = Record<string, unknown>;

class Invalid {
  constructor(readonly source: string) {}
  fail(path: string, msg: string): never {
    throw new InvalidArgumentError(`${this.source}: ${path ? `${path} ` : ''}${msg}`);
  }
}

/** Keys the file may use; snake_case as in the trace contract, camelCase as in TypeScript. */
const TENANT_KEYS = new Set(['name', 'share', 'value', 'value_per_token', 'valuePerToken', 'slo', 'deadline_ms', 'deadlineMs', 'priority', 'max_tokens', 'maxTokens', 'claim', 'client', 'budget']);
const WORKLOAD_KEYS = new Set(['seed', 'tenants']);
/** JSON has no comments, so free-text fields are let through. */
const isNote = (k: string): boolean => k === 'description' || k === 'comment' || k.startsWith('$');

function field(o: Obj, snake: string, camel: string): unknown {
  return o[snake] ?? o[camel];
}

function num(inv: Invalid, path: string, v: unknown, ok: (x: number) => boolean, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) inv.fail(path, `must be ${what} (got ${JSON.stringify(v)})`);
  return v;
}

function optNum(inv: Invalid, path: string, v: unknown, ok: (x: number) => boolean, what: string): number | undefined {
  return v === undefined || v === null ? undefined : num(inv, path, v, ok, what);
}

function parseValueDist(inv: Invalid, path: string, v: unknown): ValueDist {
  if (typeof v === 'number') return { dist: 'const', value: num(inv, path, v, (x) => x >= 0, 'a non-negative number') };
  if (typeof v !== 'object' || v === null || Array.isArray(v)) inv.fail(path, 'must be a number or {"dist": "const" | "lognormal" | "uniform", ...}');
  const o = v as Obj;
  const nonNeg = (x: number): boolean => x >= 0;
  switch (o.dist) {
    case 'const':
      return { dist: 'const', value: num(inv, `${path}.value`, o.value, nonNeg, 'a non-negative number') };
    case 'lognormal':
      return {
        dist: 'lognormal',
        mean: num(inv, `${path}.mean`, o.mean, (x) => x > 0, 'a positive number'),
        sigma: num(inv, `${path}.sigma`, o.sigma, nonNeg, 'a non-negative number'),
      };
    case 'uniform': {
      const min = num(inv, `${path}.min`, o.min, nonNeg, 'a non-negative number');
      const max = num(inv, `${path}.max`, o.max, (x) => x >= min, `a number >= min (${min})`);
      return { dist: 'uniform', min, max };
    }
    default:
      return inv.fail(`${path}.dist`, `must be "const", "lognormal" or "uniform" (got ${JSON.stringify(o.dist)})`);
  }
}

function parseTenant(inv: Invalid, path: string, v: unknown): TenantSpec {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) inv.fail(path, 'must be an object');
  const o = v as Obj;
  for (const k of Object.keys(o)) if (!TENANT_KEYS.has(k) && !isNote(k)) inv.fail(`${path}.${k}`, 'is not a tenant field');
  if (typeof o.name !== 'string' || o.name === '') inv.fail(`${path}.name`, `must be a non-empty string (got ${JSON.stringify(o.name)})`);
  const t: TenantSpec = {
    name: o.name,
    share: num(inv, `${path}.share`, o.share, (x) => x > 0, 'a positive number'),
    valuePerToken: false,
  };
  if (o.value !== undefined && o.value !== null) t.value = parseValueDist(inv, `${path}.value`, o.value);
  const vpt = field(o, 'value_per_token', 'valuePerToken');
  if (vpt !== undefined && vpt !== null) {
    if (typeof vpt !== 'boolean') inv.fail(`${path}.value_per_token`, `must be true or false (got ${JSON.stringify(vpt)})`);
    t.valuePerToken = vpt;
  }
  if (o.slo !== undefined && o.slo !== null) {
    if (typeof o.slo !== 'object' || Array.isArray(o.slo)) inv.fail(`${path}.slo`, 'must be an object with ttft_ms and/or tpot_ms');
    const s = o.slo as Obj;
    for (const k of Object.keys(s)) if (!['ttft_ms', 'tpot_ms', 'ttftMs', 'tpotMs'].includes(k)) inv.fail(`${path}.slo.${k}`, 'is not an SLO field (ttft_ms, tpot_ms)');
    const pos = (x: number): boolean => x > 0;
    const ttft = optNum(inv, `${path}.slo.ttft_ms`, field(s, 'ttft_ms', 'ttftMs'), pos, 'a positive number of milliseconds');
    const tpot = optNum(inv, `${path}.slo.tpot_ms`, field(s, 'tpot_ms', 'tpotMs'), pos, 'a positive number of milliseconds');
    if (ttft !== undefined || tpot !== undefined) {
      t.slo = {};
      if (ttft !== undefined) t.slo.ttftMs = ttft;
      if (tpot !== undefined) t.slo.tpotMs = tpot;
    }
  }
  const deadline = optNum(inv, `${path}.deadline_ms`, field(o, 'deadline_ms', 'deadlineMs'), (x) => x > 0, 'a positive number of milliseconds');
  if (deadline !== undefined) t.deadlineMs = deadline;
  const priority = optNum(inv, `${path}.priority`, o.priority, Number.isInteger, 'an integer');
  if (priority !== undefined) t.priority = priority;
  const maxTokens = optNum(inv, `${path}.max_tokens`, field(o, 'max_tokens', 'maxTokens'), (x) => Number.isInteger(x) && x >= 1, 'a positive integer');
  if (maxTokens !== undefined) t.maxTokens = maxTokens;
  if (o.claim !== undefined && o.claim !== null) {
    if (typeof o.claim !== 'object' || Array.isArray(o.claim)) inv.fail(`${path}.claim`, 'must be {"times": x} or {"value": x}');
    const c = o.claim as Obj;
    for (const k of Object.keys(c)) if (k !== 'times' && k !== 'value') inv.fail(`${path}.claim.${k}`, 'is not a claim field (times, value)');
    const times = optNum(inv, `${path}.claim.times`, c.times, (x) => x >= 0, 'a non-negative number');
    const value = optNum(inv, `${path}.claim.value`, c.value, (x) => x >= 0, 'a non-negative number');
    if ((times === undefined) === (value === undefined)) inv.fail(`${path}.claim`, 'must have exactly one of times and value');
    t.claim = times !== undefined ? { times } : { value: value as number };
  }
  if (o.client !== undefined && o.client !== null) t.client = parseClient(o.client, `${path}.client`, (m) => inv.fail('', m));
  const budget = optNum(inv, `${path}.budget`, o.budget, (x) => x >= 0, 'a non-negative number');
  if (budget !== undefined) t.budget = budget;
  return t;
}

/**
 * Validates a workload: a JSON string or an already parsed object (snake_case keys as in the
 * file, or camelCase). `source` names it in error messages.
 */
export function parseWorkload(json: unknown, source = 'workload'): Workload {
  const inv = new Invalid(source);
  let v = json;
  if (typeof v === 'string') {
    try {
      v = JSON.parse(v);
    } catch (e) {
      inv.fail('', `invalid JSON (${(e as Error).message})`);
    }
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) inv.fail('', 'must be a JSON object with "tenants"');
  const o = v as Obj;
  for (const k of Object.keys(o)) if (!WORKLOAD_KEYS.has(k) && !isNote(k)) inv.fail(k, 'is not a workload field (seed, tenants)');
  const seed = o.seed === undefined || o.seed === null ? 1 : num(inv, 'seed', o.seed, Number.isInteger, 'an integer');
  if (!Array.isArray(o.tenants) || o.tenants.length === 0) inv.fail('tenants', 'must be a non-empty array');
  const tenants = (o.tenants as unknown[]).map((t, i) => parseTenant(inv, `tenants[${i}]`, t));
  const names = new Set<string>();
  tenants.forEach((t, i) => {
    if (names.has(t.name)) inv.fail(`tenants[${i}].name`, `repeats ${JSON.stringify(t.name)}`);
    names.add(t.name);
  });
  return { seed, tenants };
}

export async function loadWorkload(path: string): Promise<Workload> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`${basename(path)}: cannot read workload: ${(e as Error).message}`);
  }
  return parseWorkload(text, basename(path));
}

/**
 * Three tenants whose values differ by an order of magnitude, so that as the server congests
 * and prices rise there is a clear order in which work should wait: first batch, then
 * standard, interactive last.
 *
 * - interactive (20%): a completion worth 2.0 on average (lognormal, σ 0.5), TTFT ≤ 1 s and
 *   TPOT ≤ 100 ms, priority 0. Scarce and valuable: under load it should keep its latency.
 * - standard (50%): worth 0.5 (σ 0.5), TTFT ≤ 5 s, TPOT ≤ 250 ms, priority 1. The bulk of
 *   the load, so at saturation it is the marginal tenant that sets the price.
 * - batch (30%): a bid of 0.001 per output token (uniform 0.0005–0.0015), no latency SLO,
 *   only a 10-minute deadline, priority 2. Cheap per token but long-running, it fills idle
 *   capacity and should be deferred, not rejected, when prices rise.
 *
 * Every tenant sends max_tokens 256: a generous cap, as real clients set (an answer longer than
 * that is cut off), so the scheduler must predict lengths rather than read them off max_tokens.
 *
 * Values are in the same unit as the economy's prices (the unit the bill is in).
 */
export function defaultWorkload(): Workload {
  return {
    seed: 1,
    tenants: [
      {
        name: 'interactive',
        share: 0.2,
        value: { dist: 'lognormal', mean: 2.0, sigma: 0.5 },
        valuePerToken: false,
        slo: { ttftMs: 1000, tpotMs: 100 },
        priority: 0,
        maxTokens: 256,
      },
      {
        name: 'standard',
        share: 0.5,
        value: { dist: 'lognormal', mean: 0.5, sigma: 0.5 },
        valuePerToken: false,
        slo: { ttftMs: 5000, tpotMs: 250 },
        priority: 1,
        maxTokens: 256,
      },
      {
        name: 'batch',
        share: 0.3,
        value: { dist: 'uniform', min: 0.0005, max: 0.0015 },
        valuePerToken: true,
        deadlineMs: 600_000,
        priority: 2,
        maxTokens: 256,
      },
    ],
  };
}

function checkWorkload(w: Workload): void {
  if (!Number.isInteger(w.seed)) throw new InvalidArgumentError(`workload: seed must be an integer (got ${String(w.seed)})`);
  if (w.tenants.length === 0) throw new InvalidArgumentError('workload: tenants must be a non-empty array');
  w.tenants.forEach((t, i) => {
    if (!(Number.isFinite(t.share) && t.share > 0)) throw new InvalidArgumentError(`workload: tenants[${i}].share must be a positive number (got ${String(t.share)})`);
  });
}

function tenantPicker(w: Workload): (u: number) => TenantSpec {
  const total = w.tenants.reduce((s, t) => s + t.share, 0);
  const cumulative: number[] = [];
  let acc = 0;
  for (const t of w.tenants) {
    acc += t.share / total;
    cumulative.push(acc);
  }
  return (u) => {
    for (let i = 0; i < cumulative.length; i++) if (u < cumulative[i]!) return w.tenants[i]!;
    return w.tenants[w.tenants.length - 1]!;
  };
}

/**
 * Returns copies of the requests with tenants and economics from the workload (see the note at
 * the top of this file). A request whose tenant names one of the workload's tenants keeps it;
 * any other is assigned one by share. Fields a request already has (value or bid, slo,
 * deadlineMs, priority) are kept.
 */
export function applyWorkload(reqs: readonly TraceRequest[], w: Workload): TraceRequest[] {
  checkWorkload(w);
  const byName = new Map(w.tenants.map((t) => [t.name, t]));
  const pick = tenantPicker(w);
  return reqs.map((r) => {
    const rng = mulberry32(hashString(`${w.seed}\u0000${r.id}`));
    // Drawn whether or not it is used, so that a request's value does not depend on whether
    // its tenant came from the trace.
    const u = rng();
    const tenant = byName.get(r.tenant) ?? pick(u);
    const out: TraceRequest = { ...r, tenant: tenant.name };
    if (r.value === undefined && r.bid === undefined && tenant.value !== undefined) {
      const x = sampleValue(rng, tenant.value);
      if (tenant.valuePerToken) out.bid = x;
      else out.value = x;
    }
    if (r.slo === undefined && tenant.slo !== undefined) out.slo = { ...tenant.slo };
    if (r.deadlineMs === undefined && tenant.deadlineMs !== undefined) out.deadlineMs = tenant.deadlineMs;
    if (r.priority === undefined && tenant.priority !== undefined) out.priority = tenant.priority;
    // A cap, as clients set it: an answer longer than it is cut off there (never the true length leaked as max_tokens).
    if (r.maxTokens === undefined && tenant.maxTokens !== undefined) out.maxTokens = tenant.maxTokens;
    if (r.claim === undefined && tenant.claim !== undefined) {
      const c = tenant.claim;
      if (out.value !== undefined) out.claim = { value: c.value ?? out.value * (c.times as number) };
      else if (out.bid !== undefined) out.claim = c.value !== undefined ? { value: c.value } : { bid: out.bid * (c.times as number) };
    }
    if (r.client === undefined && tenant.client !== undefined) out.client = { ...tenant.client };
    return out;
  });
}

/** The budgets a workload gives its tenants (the simulator's ledger). */
export function tenantBudgets(w: Workload): Map<string, number> {
  const m = new Map<string, number>();
  for (const t of w.tenants) if (t.budget !== undefined) m.set(t.name, t.budget);
  return m;
}

// ---------------------------------------------------------------------------------------------
// Synthetic workloads.

/** Lognormal lengths; `mean` is the distribution's mean in tokens. */
export interface LengthDist {
  mean: number;
  sigma: number;
}

export interface AgenticOptions {
  /** Conversations (agent loops); each is one tenant's. */
  sessions: number;
  /** Requests per session. */
  turns: number;
  /** A system prompt common to every session: its full blocks are the only content shared across sessions. */
  systemPromptTokens: number;
  /** Tokens each turn appends before the model answers (user message or tool result). */
  turnTokens: number;
  /**
   * Mean gap (exponential) between a session's consecutive turns. The trace is open-loop, so
   * this stands for the reply's latency plus the user's or the tool's time.
   */
  thinkSeconds: number;
}

export interface GenerateOptions {
  seed: number;
  /** Requests in the trace, session turns included. */
  requests: number;
  /** New work per second: standalone requests and session starts. */
  rate: number;
  /** Gamma shape of the gaps between arrivals: 1 = Poisson, < 1 burstier (gap CV = 1/√shape), > 1 smoother. */
  burstiness?: number;
  /** Default: defaultWorkload(). */
  tenants?: Workload;
  /** Default { mean: 256, sigma: 0.8 }. */
  promptTokens?: LengthDist;
  /** Default { mean: 128, sigma: 0.8 }. */
  outputTokens?: LengthDist;
  agentic?: AgenticOptions;
  /** Tokens per prefix entry; default 16. */
  prefixBlockTokens?: number;
  maxPromptTokens?: number;
  maxOutputTokens?: number;
}

function checkGenerate(o: GenerateOptions): void {
  const need = (ok: boolean, msg: string): void => {
    if (!ok) throw new InvalidArgumentError(`workload generator: ${msg}`);
  };
  const nat = (v: number): boolean => Number.isInteger(v) && v >= 0;
  const pos = (v: number | undefined): boolean => v === undefined || (Number.isFinite(v) && v > 0);
  const posInt = (v: number | undefined): boolean => v === undefined || (Number.isInteger(v) && v >= 1);
  const dist = (d: LengthDist | undefined): boolean => d === undefined || (Number.isFinite(d.mean) && d.mean > 0 && Number.isFinite(d.sigma) && d.sigma >= 0);
  need(Number.isInteger(o.seed), `seed must be an integer (got ${String(o.seed)})`);
  need(nat(o.requests), `requests must be a non-negative integer (got ${String(o.requests)})`);
  need(pos(o.rate) && o.rate !== undefined, `rate must be a positive number of requests per second (got ${String(o.rate)})`);
  need(pos(o.burstiness), `burstiness (gamma shape) must be a positive number (got ${String(o.burstiness)})`);
  need(dist(o.promptTokens), 'promptTokens must be {mean > 0, sigma >= 0}');
  need(dist(o.outputTokens), 'outputTokens must be {mean > 0, sigma >= 0}');
  need(posInt(o.prefixBlockTokens), `prefixBlockTokens must be a positive integer (got ${String(o.prefixBlockTokens)})`);
  need(posInt(o.maxPromptTokens), `maxPromptTokens must be a positive integer (got ${String(o.maxPromptTokens)})`);
  need(posInt(o.maxOutputTokens), `maxOutputTokens must be a positive integer (got ${String(o.maxOutputTokens)})`);
  const a = o.agentic;
  if (a) {
    need(nat(a.sessions), `agentic.sessions must be a non-negative integer (got ${String(a.sessions)})`);
    need(posInt(a.turns), `agentic.turns must be a positive integer (got ${String(a.turns)})`);
    need(nat(a.systemPromptTokens), `agentic.systemPromptTokens must be a non-negative integer (got ${String(a.systemPromptTokens)})`);
    need(posInt(a.turnTokens), `agentic.turnTokens must be a positive integer (got ${String(a.turnTokens)})`);
    need(Number.isFinite(a.thinkSeconds) && a.thinkSeconds >= 0, `agentic.thinkSeconds must be a non-negative number (got ${String(a.thinkSeconds)})`);
    need(a.sessions * a.turns <= o.requests, `agentic sessions × turns (${a.sessions * a.turns}) exceed requests (${o.requests})`);
  }
}

interface Draft {
  t: number;
  promptTokens: number;
  outputTokens: number;
  prefix: number[];
  tenant: string;
}

/**
 * A synthetic trace, deterministic given the options. Arrivals of new work (standalone
 * requests and session starts) form a gamma renewal process at `rate`; with `agentic`,
 * `sessions` of them start a session whose later turns follow at `thinkSeconds` gaps, and the
 * rest (requests − sessions × turns) are standalone requests with no prefix information.
 *
 * Turn k of a session sends the whole conversation so far: system prompt, then for each
 * earlier turn its `turnTokens` and the reply, then its own `turnTokens`. Its prefix lists the
 * full blocks of that prompt (a partial last block cannot be shared), so turn k+1's prefix
 * starts with turn k's and the two differ only in the new turn. Block hashes name content:
 * the system prompt's full blocks are the same numbers in every session; every other block is
 * a number no other session uses. Requests are sorted by arrival and given ids "0", "1", ….
 */
export function generateWorkload(opts: GenerateOptions): TraceRequest[] {
  checkGenerate(opts);
  const rng = mulberry32(hashString(`generate\u0000${opts.seed}`));
  const shape = opts.burstiness ?? 1;
  const plen = opts.promptTokens ?? { mean: 256, sigma: 0.8 };
  const olen = opts.outputTokens ?? { mean: 128, sigma: 0.8 };
  const B = opts.prefixBlockTokens ?? 16;
  const w = opts.tenants ?? defaultWorkload();
  checkWorkload(w);
  const pick = tenantPicker(w);
  const length = (d: LengthDist): number => Math.max(1, Math.round(lognormal(rng, d.mean, d.sigma)));
  const clampPrompt = (n: number): number => (opts.maxPromptTokens === undefined ? n : Math.min(n, opts.maxPromptTokens));
  const clampOutput = (n: number): number => (opts.maxOutputTokens === undefined ? n : Math.min(n, opts.maxOutputTokens));

  const a = opts.agentic;
  const sessions = a?.sessions ?? 0;
  const turns = a?.turns ?? 1;
  const starts = opts.requests - sessions * (turns - 1);

  // Which starts open a session: a seeded partial Fisher–Yates over the start indices.
  const order = Array.from({ length: starts }, (_, i) => i);
  for (let i = 0; i < sessions; i++) {
    const j = i + Math.floor(rng() * (starts - i));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const sessionAt = new Set(order.slice(0, sessions));

  const systemBlocks = a ? Math.floor(a.systemPromptTokens / B) : 0;
  let nextHash = systemBlocks;
  const drafts: Draft[] = [];
  let t = 0;
  for (let i = 0; i < starts; i++) {
    if (i > 0) t += gamma(rng, shape, 1 / (opts.rate * shape));
    if (!a || !sessionAt.has(i)) {
      drafts.push({ t, promptTokens: clampPrompt(length(plen)), outputTokens: clampOutput(length(olen)), prefix: [], tenant: pick(rng()).name });
      continue;
    }
    const tenant = pick(rng()).name;
    const blocks: number[] = [];
    const blockHash = (b: number): number => {
      if (b < systemBlocks) return b;
      while (blocks.length <= b) blocks.push(blocks.length < systemBlocks ? blocks.length : nextHash++);
      return blocks[b]!;
    };
    let context = a.systemPromptTokens;
    let at = t;
    for (let k = 0; k < turns; k++) {
      if (k > 0) at += a.thinkSeconds * -Math.log(openUniform(rng));
      context += a.turnTokens;
      const promptTokens = clampPrompt(context);
      const outputTokens = clampOutput(length(olen));
      const prefix = Array.from({ length: Math.floor(promptTokens / B) }, (_, b) => blockHash(b));
      drafts.push({ t: at, promptTokens, outputTokens, prefix, tenant });
      context += outputTokens;
    }
  }

  drafts.sort((x, y) => x.t - y.t);
  const reqs: TraceRequest[] = drafts.map((d, i) => ({
    id: String(i),
    t: d.t,
    promptTokens: d.promptTokens,
    outputTokens: d.outputTokens,
    tenant: d.tenant,
    prefix: d.prefix,
    prefixBlockTokens: B,
  }));
  // Mixed with the generator's seed so that two generated traces differ in their economics too.
  return applyWorkload(reqs, { ...w, seed: hashString(`${opts.seed}\u0000${w.seed}`) | 0 });
}
