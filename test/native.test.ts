import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../src/sampling/rng.js';
import { Sampler } from '../src/sampling/sampler.js';
import type { SamplingParams } from '../src/sampling/params.js';
import { native, nativeStatus } from '../src/native/index.js';
import { BatchSampler } from '../src/native/sampling.js';
import { BANNED, IN_PROMPT, type LogitAdjust } from '../src/sampling/penalties.js';
import { checkKvCopy, kvCopyNative, kvCopyTs, type KvCopy, type KvDirection, type KvShape } from '../src/native/kv-copy.js';

/**
 * The addon must agree with the TypeScript implementations bit for bit. Under CI=true a missing
 * addon is a failure (the install script builds it, so absence means a broken toolchain);
 * elsewhere the comparisons are skipped with the loader's reason and the TypeScript-only checks
 * still run.
 */
const ci = process.env.CI === 'true';
const nativeSkip: string | false = native !== undefined || ci ? false : `native addon unavailable: ${nativeStatus()}`;

function requireAddon(t: TestContext): boolean {
  if (native !== undefined) return true;
  if (ci) assert.fail(`CI=true requires the native addon, but: ${nativeStatus()}`);
  t.skip(nativeStatus());
  return false;
}

// ---------------------------------------------------------------------------------------------
// Rng state access. The native path needs Rng.saveState/loadState; until Rng has them, tests
// use a subclass that reads the private words, so they exercise the addon either way.
// ---------------------------------------------------------------------------------------------

interface StateAccess {
  saveState(into: Uint32Array, at: number): void;
  loadState(from: Uint32Array, at: number): void;
}
interface RngWords {
  s0: number;
  s1: number;
  s2: number;
  s3: number;
}

class StateRng extends Rng {
  saveState(into: Uint32Array, at: number): void {
    const w = this as unknown as RngWords;
    into[at] = w.s0;
    into[at + 1] = w.s1;
    into[at + 2] = w.s2;
    into[at + 3] = w.s3;
  }

  loadState(from: Uint32Array, at: number): void {
    const w = this as unknown as RngWords;
    w.s0 = from[at]! | 0;
    w.s1 = from[at + 1]! | 0;
    w.s2 = from[at + 2]! | 0;
    w.s3 = from[at + 3]! | 0;
  }
}

const rngHasState = typeof (Rng.prototype as Partial<StateAccess>).saveState === 'function';

function makeRng(seed: number): Rng & StateAccess {
  return (rngHasState ? new Rng(seed) : new StateRng(seed)) as Rng & StateAccess;
}

function stateOf(rng: Rng): number[] {
  const buf = new Uint32Array(4);
  (rng as Rng & StateAccess).saveState(buf, 0);
  return Array.from(buf);
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

function params(temperature: number, topP: number, topK: number): SamplingParams {
  return { temperature, topP, topK, seed: undefined, maxTokens: 16, stop: [] };
}

function pick<T>(g: Rng, xs: readonly T[]): T {
  return xs[Math.floor(g.next() * xs.length)]!;
}

function gaussian(g: Rng): number {
  const u = g.next() || 2 ** -24;
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * g.next());
}

const ROW_KINDS = [
  'uniform', 'ties', 'neginf', 'nan', 'flat', 'nearflat', 'peaked', 'allNegInf', 'allNaN', 'posInf', 'huge', 'single', 'wide', 'mixed', 'zeros',
] as const;
type RowKind = (typeof ROW_KINDS)[number];

/** Fills row with one of the shapes that stress a different branch or tie rule of the sampler. */
function fillRow(row: Float32Array, kind: RowKind, g: Rng): void {
  const V = row.length;
  const scale = pick(g, [0.5, 4, 20]);
  for (let i = 0; i < V; i++) {
    const v = (g.next() * 2 - 1) * scale;
    switch (kind) {
      case 'uniform':
        row[i] = v;
        break;
      case 'ties':
        row[i] = Math.round(v * 2) / 2;
        break;
      case 'neginf':
        row[i] = g.next() < 0.3 ? -Infinity : v;
        break;
      case 'nan':
        row[i] = g.next() < 0.2 ? NaN : v;
        break;
      case 'flat':
        row[i] = scale;
        break;
      case 'nearflat':
        row[i] = 1 + v * 1e-6;
        break;
      case 'peaked':
        row[i] = 2 * gaussian(g);
        break;
      case 'allNegInf':
        row[i] = -Infinity;
        break;
      case 'allNaN':
        row[i] = NaN;
        break;
      case 'posInf':
        row[i] = g.next() < 0.05 ? Infinity : v;
        break;
      case 'huge':
        row[i] = (g.next() * 2 - 1) * 3e38;
        break;
      case 'single':
        row[i] = -Infinity;
        break;
      case 'wide':
        row[i] = v * 100;
        break;
      case 'mixed': {
        const r = g.next();
        row[i] = r < 0.1 ? NaN : r < 0.25 ? -Infinity : Math.round(v);
        break;
      }
      case 'zeros': {
        // -0 and +0 compare equal, so the id must decide between them, as between any tie.
        const r = g.next();
        row[i] = r < 0.3 ? -0 : r < 0.6 ? 0 : r < 0.7 ? -Infinity : Math.round(v * 4) / 8;
        break;
      }
    }
  }
  if (kind === 'peaked') {
    // A few dominant tokens over a Gaussian floor, as a trained model's logits look.
    for (const boost of [14, 11, 10, 8]) row[Math.floor(g.next() * V)] = boost + gaussian(g);
  }
  if (kind === 'single') row[Math.floor(g.next() * V)] = (g.next() * 2 - 1) * scale;
}

function randomParams(g: Rng, V: number): SamplingParams {
  const temperature = pick(g, [0, 0, 0.05, 0.3, 0.7, 1, 1, 1.3, 2, 5e-324, 1e-3, Infinity, NaN]);
  const topP = pick(g, [1, 1, 1, 0.9, 0.95, 0.5, 0.1, 1e-6, 0.999999, 0]);
  const topK = pick(g, [0, 0, 0, 1, 2, 5, 50, V - 1, V, V + 7, 3.5, -1]);
  const p = params(temperature, topP, topK);
  const minP = pick(g, [0, 0, 0, 0.01, 0.1, 0.5, 1]);
  if (minP > 0) p.minP = minP;
  return p;
}

function randomSeed(g: Rng): number {
  return pick(g, [
    () => Math.floor(g.next() * 2 ** 24) * 2 ** 29 + Math.floor(g.next() * 2 ** 29),
    () => -Math.floor(g.next() * 2 ** 40),
    () => Number.MAX_SAFE_INTEGER,
    () => 0,
  ])();
}

interface Batch {
  logits: Float32Array;
  V: number;
  rows: Int32Array;
  params: SamplingParams[];
  seeds: number[];
}

function randomBatch(g: Rng, V: number, count: number, kinds: readonly RowKind[] = ROW_KINDS): Batch {
  const bufferRows = Math.max(1, Math.min(count + 2, 1 + Math.floor(g.next() * (count + 2))));
  const logits = new Float32Array(bufferRows * V);
  for (let r = 0; r < bufferRows; r++) fillRow(logits.subarray(r * V, (r + 1) * V), pick(g, kinds), g);
  const rows = new Int32Array(count);
  for (let i = 0; i < count; i++) rows[i] = Math.floor(g.next() * bufferRows);
  return {
    logits,
    V,
    rows,
    params: Array.from({ length: count }, () => randomParams(g, V)),
    seeds: Array.from({ length: count }, () => randomSeed(g)),
  };
}

/** Runs a batch on `sampler` with fresh Rngs from the batch's seeds, `steps` times in a row. */
function run(sampler: BatchSampler, b: Batch, steps = 1): { tokens: number[][]; states: number[][] } {
  const rngs = b.seeds.map(makeRng);
  const tokens: number[][] = [];
  const out = new Int32Array(b.rows.length);
  for (let s = 0; s < steps; s++) {
    sampler.sample(b.logits, b.rows, b.params, rngs, out);
    tokens.push(Array.from(out));
  }
  return { tokens, states: rngs.map(stateOf) };
}

function assertSameRun(b: Batch, a: BatchSampler, c: BatchSampler, steps: number, label: string): void {
  const x = run(a, b, steps);
  const y = run(c, b, steps);
  const where = (): string => `${label}: V=${b.V}, rows ${JSON.stringify(Array.from(b.rows))}, params ${JSON.stringify(b.params.map((p) => [p.temperature, p.topP, p.topK, p.minP ?? 0]))}`;
  assert.deepEqual(x.tokens, y.tokens, `tokens differ (${where()})`);
  assert.deepEqual(x.states, y.states, `Rng states differ (${where()})`);
}

// ---------------------------------------------------------------------------------------------

describe('native addon', () => {
  it('is loaded (required under CI=true)', (t) => {
    if (!requireAddon(t)) return;
    assert.match(nativeStatus(), /^native addon loaded from /);
  });

  it('Rng state round-trips through saveState/loadState', () => {
    const a = makeRng(42);
    const buf = new Uint32Array(8);
    for (let i = 0; i < 5; i++) a.nextUint32();
    a.saveState(buf, 4);
    const b = makeRng(0);
    b.loadState(buf, 4);
    assert.deepEqual([a.nextUint32(), a.nextUint32(), a.nextUint32()], [b.nextUint32(), b.nextUint32(), b.nextUint32()]);
    assert.deepEqual(Array.from(buf.subarray(0, 4)), [0, 0, 0, 0]);
  });

  it("its exp and log are V8's Math.exp and Math.log, bit for bit", (t) => {
    if (!requireAddon(t)) return;
    const g = new Rng(11);
    const N = 200_000;
    const input = new Float64Array(N);
    const bits = new Uint32Array(input.buffer);
    const out = new Float64Array(N);
    const fill: Array<[string, () => void]> = [
      // The sampler's exponents: (logit - max) / T, with float32 logits.
      ['sampler exponents', () => {
        for (let i = 0; i < N; i++) input[i] = (Math.fround((g.next() * 2 - 1) * 30) - Math.fround(30)) * (1 / pick(g, [0.1, 0.7, 1, 1.3, 2]));
      }],
      ['[-760, 720]', () => {
        for (let i = 0; i < N; i++) input[i] = g.next() * 1480 - 760;
      }],
      ['random bit patterns', () => {
        for (let i = 0; i < bits.length; i++) bits[i] = g.nextUint32();
      }],
    ];
    const specials = [0, -0, 1, -1, Infinity, -Infinity, NaN, 5e-324, -5e-324, 709.782712893384, -745.1332191019411, 2 ** -28, -(2 ** -28)];
    for (const [name, f] of fill) {
      f();
      input.set(specials);
      native!.fdlibmExp(input, out);
      for (let i = 0; i < N; i++) {
        if (!Object.is(out[i], Math.exp(input[i]!))) assert.fail(`${name}: exp(${input[i]}) = ${out[i]}, Math.exp gives ${Math.exp(input[i]!)}`);
      }
      for (let i = 0; i < N; i++) input[i] = Math.abs(input[i]!);
      native!.fdlibmLog(input, out);
      for (let i = 0; i < N; i++) {
        if (!Object.is(out[i], Math.log(input[i]!))) assert.fail(`${name}: log(${input[i]}) = ${out[i]}, Math.log gives ${Math.log(input[i]!)}`);
      }
    }
  });
});

describe('native kernels (every SIMD set this machine has)', { skip: nativeSkip }, () => {
  const sets = (): string[] => ['avx2', 'vector', 'scalar'].filter((k) => native!.argmax(new Float32Array(1), k) !== undefined);

  function rows(g: Rng): Float32Array[] {
    const out: Float32Array[] = [];
    for (const kind of ROW_KINDS) {
      for (const V of [1, 3, 4, 7, 8, 9, 31, 1000, 4099]) {
        const row = new Float32Array(V);
        fillRow(row, kind, g);
        out.push(row);
      }
    }
    const bits = new Float32Array(5000);
    const u = new Uint32Array(bits.buffer);
    for (let i = 0; i < u.length; i++) u[i] = g.nextUint32();
    out.push(bits);
    return out;
  }

  it('softmax weights and their sum equal the TypeScript loop bit for bit', (t) => {
    if (!requireAddon(t)) return;
    const g = new Rng(21);
    for (const k of sets()) {
      for (const row of rows(g)) {
        let max = -Infinity;
        for (const l of row) if (l > max) max = l;
        if (!(max > -Infinity && max < Infinity)) max = 0.5;
        for (const T of [0.01, 0.05, 0.3, 0.7, 1, 1.3, 2, 1e-5, 50]) {
          const invT = 1 / T;
          const want = new Float64Array(row.length);
          let total = 0;
          for (let i = 0; i < row.length; i++) {
            const z = (row[i]! - max) * invT;
            want[i] = z > -Infinity ? Math.exp(z) : 0;
            total += want[i]!;
          }
          const got = new Float64Array(row.length);
          assert.ok(Object.is(native!.softmaxWeights(row, max, invT, got, false, k), total), `${k}: sum, V=${row.length}, T=${T}`);
          for (let i = 0; i < row.length; i++) {
            if (!Object.is(got[i], want[i])) assert.fail(`${k}: weight of ${row[i]} (max ${max}, T ${T}) is ${got[i]}, TypeScript gives ${want[i]}`);
          }
          native!.softmaxWeights(row, max, invT, got, true, k);
          let cum = 0;
          for (let i = 0; i < row.length; i++) {
            cum += want[i]!;
            if (!Object.is(got[i], cum)) assert.fail(`${k}: running sum ${i} is ${got[i]}, TypeScript gives ${cum}`);
          }
        }
      }
    }
  });

  it('argmax and firstAbove keep the first index, skip NaN, and treat -0 as +0', (t) => {
    if (!requireAddon(t)) return;
    const g = new Rng(22);
    for (const k of sets()) {
      for (const row of rows(g)) {
        let best = -Infinity;
        let bi = 0;
        for (let i = 0; i < row.length; i++) {
          if (row[i]! > best) {
            best = row[i]!;
            bi = i;
          }
        }
        assert.equal(native!.argmax(row, k), bi, `${k}: argmax, V=${row.length}`);
        for (const threshold of [row[bi]!, row[Math.floor(g.next() * row.length)]!, 0, -0, -Infinity, Infinity, 1.5]) {
          const from = Math.floor(g.next() * (row.length + 1));
          let want = row.length;
          for (let i = from; i < row.length; i++) {
            if (row[i]! > Math.fround(threshold)) {
              want = i;
              break;
            }
          }
          assert.equal(native!.firstAbove(row, from, threshold, k), want, `${k}: firstAbove(${from}, ${threshold}), V=${row.length}`);
        }
      }
    }
  });
});

describe('BatchSampler (TypeScript path)', () => {
  it('equals a loop of Sampler.sample, Rng by Rng', () => {
    const g = new Rng(5);
    for (let iter = 0; iter < 200; iter++) {
      const V = pick(g, [1, 2, 7, 50, 300]);
      const b = randomBatch(g, V, Math.floor(g.next() * 9));
      const bs = new BatchSampler(V, { native: false });
      assert.equal(bs.backend, 'typescript');
      const got = run(bs, b, 2);
      const s = new Sampler(V);
      const rngs = b.seeds.map(makeRng);
      const want: number[][] = [];
      for (let step = 0; step < 2; step++) want.push(Array.from(b.rows, (r, i) => s.sample(b.logits, r * V, b.params[i]!, rngs[i]!)));
      assert.deepEqual(got.tokens, want);
      assert.deepEqual(got.states, rngs.map(stateOf));
    }
  });

  it('rejects a bad batch before sampling anything', () => {
    const V = 10;
    const logits = new Float32Array(3 * V);
    const bs = new BatchSampler(V, { native: false });
    const rngs = [makeRng(1), makeRng(2)];
    const before = rngs.map(stateOf);
    const p = params(1, 1, 0);
    const out = new Int32Array(2);
    for (const rows of [[0, 3], [0, -1], [0, 1.5], [0, NaN]]) {
      assert.throws(() => bs.sample(logits, rows, [p, p], rngs, out), RangeError, `rows ${rows}`);
    }
    assert.throws(() => bs.sample(logits, [0, 1], [p], rngs, out), RangeError);
    assert.throws(() => bs.sample(logits, [0, 1], [p, p], rngs, new Int32Array(1)), RangeError);
    assert.deepEqual(rngs.map(stateOf), before);
  });

  it('native: true throws when the addon is unavailable, with the reason', (t) => {
    if (native !== undefined) {
      assert.equal(new BatchSampler(4, { native: true }).backend, 'native');
      return;
    }
    assert.throws(() => new BatchSampler(4, { native: true }), /native addon is required but unavailable: TypeScript fallback/);
    t.diagnostic(nativeStatus());
  });
});

describe('BatchSampler: native agrees with TypeScript', { skip: nativeSkip }, () => {
  const ts = (V: number): BatchSampler => new BatchSampler(V, { native: false });
  const nat = (V: number, threads = 1): BatchSampler => new BatchSampler(V, { native: true, threads });

  it('on random small batches of every row shape and parameter mix', () => {
    const g = new Rng(2024);
    for (let iter = 0; iter < 3000; iter++) {
      const V = pick(g, [1, 2, 3, 7, 50, 257, 1000]);
      const b = randomBatch(g, V, Math.floor(g.next() * 13));
      assertSameRun(b, nat(V), ts(V), 3, `iteration ${iter}`);
    }
  });

  it('on top-p candidate sets large enough for the radix sort (>= 1024 tokens)', () => {
    const g = new Rng(1024);
    for (let iter = 0; iter < 150; iter++) {
      const V = pick(g, [1024, 1031, 2048, 4099]);
      const b = randomBatch(g, V, 1 + Math.floor(g.next() * 6));
      // Broad nuclei: high temperature, high top-p, no top-k, so most of the row is a candidate.
      b.params = b.params.map((p) => (g.next() < 0.8 ? params(pick(g, [1, 2, 5, 50]), pick(g, [0.9, 0.99, 0.999999, 0.5]), 0) : p));
      assertSameRun(b, nat(V), ts(V), 2, `iteration ${iter}`);
    }
  });

  it('adjustLogits (penalties, biases, bans) rounds every entry as applyLogitAdjust does', () => {
    const g = new Rng(31);
    for (let iter = 0; iter < 400; iter++) {
      const V = pick(g, [5, 50, 1000, 32000]);
      const rows = 1 + Math.floor(g.next() * 3);
      const a = new Float32Array(rows * V);
      for (let r = 0; r < rows; r++) fillRow(a.subarray(r * V, (r + 1) * V), pick(g, ROW_KINDS), g);
      const b = a.slice();
      const n = Math.min(V, Math.floor(g.next() * 40));
      const ids = new Set<number>();
      while (ids.size < n) ids.add(Math.floor(g.next() * V));
      const adj: LogitAdjust = {
        n,
        tokens: Int32Array.from(ids),
        counts: Int32Array.from({ length: n }, () => pick(g, [0, 0, 1, 2, 7, 300])),
        flags: Uint8Array.from({ length: n }, () => pick(g, [0, 0, IN_PROMPT, BANNED, IN_PROMPT | BANNED])),
        bias: Float64Array.from({ length: n }, () => pick(g, [0, 0, -100, 100, 0.3, -1e-7, 3.25])),
        presence: pick(g, [0, 0.5, -2, 2, 1e-3]),
        frequency: pick(g, [0, 0.25, -1.7, 2]),
        repetition: pick(g, [1, 1.1, 1.3, 0.7, 10]),
        onlyLowers: false,
      };
      const row = Math.floor(g.next() * rows);
      nat(V).adjust(a, row, adj);
      ts(V).adjust(b, row, adj);
      assert.deepEqual(new Uint32Array(a.buffer), new Uint32Array(b.buffer), `iteration ${iter}`);
    }
  });

  it('on each row shape with each filter, exhaustively over the parameter grid', () => {
    const g = new Rng(77);
    const V = 97;
    const temps = [0, 0.05, 0.7, 1, 2, 5e-324, Infinity, NaN];
    const topPs = [1, 0.9, 0.5, 1e-6, 0];
    const topKs = [0, 1, 5, V - 1, V, 2.5];
    for (const kind of ROW_KINDS) {
      const logits = new Float32Array(V);
      fillRow(logits, kind, g);
      const ps: SamplingParams[] = [];
      for (const T of temps) for (const p of topPs) for (const k of topKs) ps.push(params(T, p, k));
      const b: Batch = { logits, V, rows: new Int32Array(ps.length), params: ps, seeds: ps.map((_, i) => 1000 + i) };
      assertSameRun(b, nat(V), ts(V), 4, kind);
    }
  });

  it('at vocab 32000 × batch 64 over realistic, flat and pathological rows', () => {
    const g = new Rng(32000);
    const V = 32000;
    for (const kinds of [['peaked'], ['flat', 'nearflat'], ['ties', 'nan', 'neginf', 'mixed'], ROW_KINDS] as const) {
      const b = randomBatch(g, V, 64, kinds);
      // Every row non-greedy and filtered the expensive ways too, not only what the mix draws.
      b.params = b.params.map((p, i) => (i % 4 === 0 ? params(1, 0.9, 0) : i % 4 === 1 ? params(0.8, 1, 50) : i % 4 === 2 ? params(1, 1, 0) : p));
      assertSameRun(b, nat(V), ts(V), 2, kinds.join('+'));
    }
  });

  it('at the extreme draws u = 0 and u = 1 - 2^-24, where strict and non-strict comparisons part', () => {
    // xoshiro128** outputs rotl(s1 * 5, 7) * 9, so s1 alone picks the first draw: s1 = 0 gives
    // 0, and s1 = 0x831c71c7 gives 0xffffffff (the inverses of 5 and 9 mod 2^32 undo it).
    const edgeStates = [
      [1, 0, 1, 1],
      [1, 0x831c71c7, 1, 1],
    ];
    const g = new Rng(12);
    const V = 41;
    for (const kind of ROW_KINDS) {
      const logits = new Float32Array(V);
      fillRow(logits, kind, g);
      if (kind === 'uniform') logits.fill(-Infinity, 0, 5); // zero-weight tokens first, for u = 0
      for (const words of edgeStates) {
        const ps: SamplingParams[] = [];
        for (const T of [0.5, 1, 2]) for (const p of [1, 0.9, 1e-6]) for (const k of [0, 1, 5, V - 1]) ps.push(params(T, p, k));
        const runOn = (bs: BatchSampler): { out: number[]; states: number[][] } => {
          const rngs = ps.map(() => makeRng(0));
          for (const r of rngs) r.loadState(new Uint32Array(words), 0);
          const out = new Int32Array(ps.length);
          bs.sample(logits, new Int32Array(ps.length), ps, rngs, out);
          return { out: Array.from(out), states: rngs.map(stateOf) };
        };
        assert.deepEqual(runOn(nat(V)), runOn(ts(V)), `${kind}, state ${words.join(',')}`);
      }
    }
  });

  it('gives the same results whatever the thread count', () => {
    const g = new Rng(8);
    for (let iter = 0; iter < 40; iter++) {
      const V = pick(g, [50, 1000, 4000]);
      const b = randomBatch(g, V, 1 + Math.floor(g.next() * 40));
      const want = run(ts(V), b, 2);
      for (const threads of [2, 3, 8]) assert.deepEqual(run(nat(V, threads), b, 2), want, `threads ${threads}, iteration ${iter}`);
    }
  });

  it('treats an Rng that appears twice in a batch as the sequential loop does', () => {
    const V = 20;
    const g = new Rng(3);
    const logits = new Float32Array(2 * V);
    fillRow(logits, 'uniform', g);
    const shared = [makeRng(9), makeRng(9)];
    const p = params(1, 1, 0);
    const rowsIn = [0, 1, 0];
    const a = new Int32Array(3);
    const c = new Int32Array(3);
    nat(V).sample(logits, rowsIn, [p, p, p], [shared[0]!, shared[0]!, shared[0]!], a);
    ts(V).sample(logits, rowsIn, [p, p, p], [shared[1]!, shared[1]!, shared[1]!], c);
    assert.deepEqual(Array.from(a), Array.from(c));
    assert.deepEqual(stateOf(shared[0]!), stateOf(shared[1]!));
  });

  it('rejects the same bad batches, leaving every Rng untouched', () => {
    const V = 10;
    const logits = new Float32Array(3 * V);
    const rngs = [makeRng(1), makeRng(2)];
    const before = rngs.map(stateOf);
    const p = params(1, 1, 0);
    for (const rows of [[0, 3], [0, -1], [0, 1.5]]) {
      assert.throws(() => nat(V).sample(logits, rows, [p, p], rngs, new Int32Array(2)), RangeError);
    }
    assert.deepEqual(rngs.map(stateOf), before);
    // The addon's own checks, reached only by calling it directly.
    assert.throws(() => native!.sampleBatch(logits, V, new Int32Array([0, 3]), new Float64Array(6), new Uint32Array(8), new Int32Array(2)), RangeError);
    assert.throws(() => native!.sampleBatch(logits, V, new Int32Array([0]), new Float64Array(2), new Uint32Array(4), new Int32Array(1)), RangeError);
    assert.throws(() => native!.sampleBatch(logits, V, new Int32Array([0]), new Float64Array(3), new Uint32Array(3), new Int32Array(1)), RangeError);
    assert.throws(() => native!.sampleBatch(new Float64Array(30) as unknown as Float32Array, V, new Int32Array([0]), new Float64Array(3), new Uint32Array(4), new Int32Array(1)), TypeError);
  });
});

// ---------------------------------------------------------------------------------------------
// KV copies
// ---------------------------------------------------------------------------------------------

interface Caches {
  keys: Float32Array[];
  values: Float32Array[];
}

/** Random bit patterns (NaN payloads included), so any float conversion on the way would show. */
function randomFloats(n: number, g: Rng): Float32Array {
  const a = new Float32Array(n);
  const u = new Uint32Array(a.buffer);
  for (let i = 0; i < n; i++) u[i] = g.nextUint32();
  return a;
}

function bitsOf(arrays: readonly Float32Array[]): Uint32Array[] {
  return arrays.map((a) => new Uint32Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength)));
}

function cloneCaches(c: Caches): Caches {
  return { keys: c.keys.map((a) => a.slice()), values: c.values.map((a) => a.slice()) };
}

/** onnx-engine.ts's storeBlock / loadBlocks / swapOut / swapIn loops, as written there. */
const engineLoops = {
  storeBlock(c: Caches, s: KvShape, slot: number, index: number, bs: number, copy: Float32Array): void {
    const span = bs * s.headDim;
    const perLayer = 2 * s.kvHeads * span;
    const slotStride = s.kvHeads * s.capacity * s.headDim;
    for (let l = 0; l < c.keys.length; l++) {
      for (let h = 0; h < s.kvHeads; h++) {
        const src = slot * slotStride + (h * s.capacity + index * bs) * s.headDim;
        const dst = l * perLayer + h * span;
        copy.set(c.keys[l]!.subarray(src, src + span), dst);
        copy.set(c.values[l]!.subarray(src, src + span), dst + s.kvHeads * span);
      }
    }
  },
  loadBlocks(c: Caches, s: KvShape, slot: number, bs: number, copies: Float32Array[]): void {
    const span = bs * s.headDim;
    const perLayer = 2 * s.kvHeads * span;
    const slotStride = s.kvHeads * s.capacity * s.headDim;
    for (let b = 0; b < copies.length; b++) {
      const copy = copies[b]!;
      for (let l = 0; l < c.keys.length; l++) {
        for (let h = 0; h < s.kvHeads; h++) {
          const dst = slot * slotStride + (h * s.capacity + b * bs) * s.headDim;
          const src = l * perLayer + h * span;
          c.keys[l]!.set(copy.subarray(src, src + span), dst);
          c.values[l]!.set(copy.subarray(src + s.kvHeads * span, src + s.kvHeads * span + span), dst);
        }
      }
    }
  },
  swapOut(c: Caches, s: KvShape, slot: number, len: number): Float32Array {
    const span = len * s.headDim;
    const slotStride = s.kvHeads * s.capacity * s.headDim;
    const data = new Float32Array(c.keys.length * 2 * s.kvHeads * span);
    for (let l = 0; l < c.keys.length; l++) {
      for (let h = 0; h < s.kvHeads; h++) {
        const src = slot * slotStride + h * s.capacity * s.headDim;
        const dst = ((l * 2) * s.kvHeads + h) * span;
        data.set(c.keys[l]!.subarray(src, src + span), dst);
        data.set(c.values[l]!.subarray(src, src + span), dst + s.kvHeads * span);
      }
    }
    return data;
  },
  swapIn(c: Caches, s: KvShape, slot: number, len: number, data: Float32Array): void {
    const span = len * s.headDim;
    const slotStride = s.kvHeads * s.capacity * s.headDim;
    for (let l = 0; l < c.keys.length; l++) {
      for (let h = 0; h < s.kvHeads; h++) {
        const dst = slot * slotStride + h * s.capacity * s.headDim;
        const src = ((l * 2) * s.kvHeads + h) * span;
        c.keys[l]!.set(data.subarray(src, src + span), dst);
        c.values[l]!.set(data.subarray(src + s.kvHeads * span, src + s.kvHeads * span + span), dst);
      }
    }
  },
};

interface KvCase {
  shape: KvShape;
  layers: number;
  slots: number;
  caches: Caches;
}

function randomKvCase(g: Rng): KvCase {
  const shape = { kvHeads: 1 + Math.floor(g.next() * 4), capacity: 1 + Math.floor(g.next() * 24), headDim: 1 + Math.floor(g.next() * 9) };
  const layers = 1 + Math.floor(g.next() * 4);
  const slots = 1 + Math.floor(g.next() * 3);
  const floats = slots * shape.kvHeads * shape.capacity * shape.headDim;
  return {
    shape,
    layers,
    slots,
    caches: { keys: Array.from({ length: layers }, () => randomFloats(floats, g)), values: Array.from({ length: layers }, () => randomFloats(floats, g)) },
  };
}

/** The engine's four operations written with a KvCopy, as the engine will call it. */
function viaKvCopy(copy: KvCopy) {
  return {
    storeBlock: (c: Caches, s: KvShape, slot: number, index: number, bs: number, out: Float32Array) => copy('gather', c.keys, c.values, s, slot, index * bs, bs, [out]),
    loadBlocks: (c: Caches, s: KvShape, slot: number, bs: number, copies: Float32Array[]) => copy('scatter', c.keys, c.values, s, slot, 0, bs, copies),
    swapOut: (c: Caches, s: KvShape, slot: number, len: number) => {
      const data = new Float32Array(c.keys.length * 2 * s.kvHeads * len * s.headDim);
      copy('gather', c.keys, c.values, s, slot, 0, len, [data]);
      return data;
    },
    swapIn: (c: Caches, s: KvShape, slot: number, len: number, data: Float32Array) => copy('scatter', c.keys, c.values, s, slot, 0, len, [data]),
  };
}

function checkAgainstEngine(copy: KvCopy, seed: number, iterations: number): void {
  const g = new Rng(seed);
  const ops = viaKvCopy(copy);
  for (let iter = 0; iter < iterations; iter++) {
    const k = randomKvCase(g);
    const { shape: s } = k;
    const slot = Math.floor(g.next() * k.slots);
    const bs = 1 + Math.floor(g.next() * s.capacity);
    const blockFloats = k.layers * 2 * s.kvHeads * bs * s.headDim;
    const label = `iteration ${iter}: ${JSON.stringify({ ...s, layers: k.layers, slot, bs })}`;

    const index = Math.floor(g.next() * Math.floor(s.capacity / bs));
    const want = new Float32Array(blockFloats);
    const got = new Float32Array(blockFloats);
    engineLoops.storeBlock(k.caches, s, slot, index, bs, want);
    ops.storeBlock(k.caches, s, slot, index, bs, got);
    assert.deepEqual(bitsOf([got]), bitsOf([want]), `storeBlock ${label}`);

    const nBlocks = Math.floor(g.next() * (Math.floor(s.capacity / bs) + 1));
    const copies = Array.from({ length: nBlocks }, () => randomFloats(blockFloats, g));
    const a = cloneCaches(k.caches);
    const b = cloneCaches(k.caches);
    engineLoops.loadBlocks(a, s, slot, bs, copies);
    ops.loadBlocks(b, s, slot, bs, copies);
    assert.deepEqual(bitsOf(b.keys), bitsOf(a.keys), `loadBlocks keys ${label}`);
    assert.deepEqual(bitsOf(b.values), bitsOf(a.values), `loadBlocks values ${label}`);

    const len = Math.floor(g.next() * (s.capacity + 1));
    const out = ops.swapOut(k.caches, s, slot, len);
    assert.deepEqual(bitsOf([out]), bitsOf([engineLoops.swapOut(k.caches, s, slot, len)]), `swapOut ${label}`);
    const data = randomFloats(out.length, g);
    const c = cloneCaches(k.caches);
    const d = cloneCaches(k.caches);
    engineLoops.swapIn(c, s, slot, len, data);
    ops.swapIn(d, s, slot, len, data);
    assert.deepEqual(bitsOf(d.keys), bitsOf(c.keys), `swapIn keys ${label}`);
    assert.deepEqual(bitsOf(d.values), bitsOf(c.values), `swapIn values ${label}`);
  }
}

describe('KV copies', () => {
  it('kvCopyTs does what the engine\'s storeBlock/loadBlocks/swapOut/swapIn loops do', () => {
    checkAgainstEngine(kvCopyTs, 1, 300);
  });

  it('kvCopyNative does the same, bit for bit', (t) => {
    if (!requireAddon(t)) return;
    assert.ok(kvCopyNative, 'the addon is loaded but kvCopyNative is undefined');
    checkAgainstEngine(kvCopyNative, 1, 300);
  });

  it('native and TypeScript agree on arbitrary gathers and scatters, including several packed runs', (t) => {
    if (!requireAddon(t)) return;
    const g = new Rng(99);
    for (let iter = 0; iter < 300; iter++) {
      const k = randomKvCase(g);
      const s = k.shape;
      const slot = Math.floor(g.next() * k.slots);
      const n = Math.floor(g.next() * (s.capacity + 1));
      const runs = n === 0 ? Math.floor(g.next() * 3) : Math.floor(g.next() * (Math.floor(s.capacity / n) + 1));
      const from = Math.floor(g.next() * (s.capacity - runs * n + 1));
      const direction: KvDirection = g.next() < 0.5 ? 'gather' : 'scatter';
      const packedFloats = k.layers * 2 * s.kvHeads * n * s.headDim + Math.floor(g.next() * 3);
      const packed = Array.from({ length: runs }, () => randomFloats(packedFloats, g));
      const a = { caches: cloneCaches(k.caches), packed: packed.map((p) => p.slice()) };
      const b = { caches: cloneCaches(k.caches), packed: packed.map((p) => p.slice()) };
      kvCopyTs(direction, a.caches.keys, a.caches.values, s, slot, from, n, a.packed);
      kvCopyNative!(direction, b.caches.keys, b.caches.values, s, slot, from, n, b.packed);
      const label = `iteration ${iter}: ${direction} ${JSON.stringify({ ...s, layers: k.layers, slot, from, n, runs })}`;
      assert.deepEqual(bitsOf(b.packed), bitsOf(a.packed), label);
      assert.deepEqual(bitsOf(b.caches.keys), bitsOf(a.caches.keys), label);
      assert.deepEqual(bitsOf(b.caches.values), bitsOf(a.caches.values), label);
    }
  });

  it('reject out-of-range copies before copying anything', (t) => {
    const g = new Rng(4);
    const s: KvShape = { kvHeads: 2, capacity: 8, headDim: 4 };
    const slots = 2;
    const layers = 2;
    const floats = slots * s.kvHeads * s.capacity * s.headDim;
    const fresh = (): Caches => {
      const h = new Rng(5);
      return { keys: [randomFloats(floats, h), randomFloats(floats, h)], values: [randomFloats(floats, h), randomFloats(floats, h)] };
    };
    const block = (n: number): Float32Array => randomFloats(layers * 2 * s.kvHeads * n * s.headDim, g);
    const bad: Array<[string, (c: Caches) => Parameters<KvCopy>]> = [
      ['slot past the cache', (c) => ['scatter', c.keys, c.values, s, 2, 0, 4, [block(4)]]],
      ['positions past capacity', (c) => ['scatter', c.keys, c.values, s, 0, 6, 4, [block(4)]]],
      ['runs past capacity', (c) => ['scatter', c.keys, c.values, s, 1, 0, 4, [block(4), block(4), block(4)]]],
      ['short packed run', (c) => ['scatter', c.keys, c.values, s, 0, 0, 4, [block(4), block(3)]]],
      ['layer count mismatch', (c) => ['scatter', c.keys, c.values.slice(1), s, 0, 0, 4, [block(4)]]],
      ['short layer', (c) => ['scatter', [c.keys[0]!, c.keys[1]!.subarray(0, floats - 20)], c.values, s, 1, 0, 4, [block(4)]]],
      ['fractional position', (c) => ['scatter', c.keys, c.values, s, 0, 0.5, 4, [block(4)]]],
      ['negative slot', (c) => ['gather', c.keys, c.values, s, -1, 0, 4, [block(4)]]],
    ];
    const impls: Array<[string, KvCopy]> = [['typescript', kvCopyTs]];
    if (native !== undefined && kvCopyNative) impls.push(['native', kvCopyNative]);
    else if (ci) assert.fail(`CI=true requires the native addon, but: ${nativeStatus()}`);
    else t.diagnostic(`native half skipped: ${nativeStatus()}`);
    for (const [name, copy] of impls) {
      for (const [what, args] of bad) {
        const c = fresh();
        const a = args(c);
        const before = bitsOf([...c.keys, ...c.values]);
        assert.throws(() => copy(...a), RangeError, `${name}: ${what}`);
        assert.throws(() => checkKvCopy(a[1], a[2], a[3], a[4], a[5], a[6], a[7]), RangeError, `check: ${what}`);
        assert.deepEqual(bitsOf([...c.keys, ...c.values]), before, `${name}: ${what} changed the cache`);
      }
    }
    if (native !== undefined) {
      // The addon's own bounds checks, without the TypeScript ones in front of them.
      const c = fresh();
      assert.throws(() => native!.kvCopy(true, c.keys, c.values, [block(4)], 2, 8, 4, 2, 0, 4), RangeError);
      assert.throws(() => native!.kvCopy(true, c.keys, c.values, [block(3)], 2, 8, 4, 0, 0, 4), RangeError);
      assert.throws(() => native!.kvCopy(true, c.keys, c.values, [block(4)], 2, 8, 4, 0, 5, 4), RangeError);
      assert.throws(() => native!.kvCopy(true, c.keys, c.values, [new Float64Array(64) as unknown as Float32Array], 2, 8, 4, 0, 0, 1), TypeError);
    }
  });
});
