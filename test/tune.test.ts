import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadCurveFile } from '../src/economy/curves.js';
import type { StepProfile } from '../src/engine/cost-model.js';
import { runTune } from '../src/cli/tune.js';
import { simulate } from '../src/sim/simulator.js';
import { writeTrace, type TraceRequest } from '../src/sim/trace.js';
import { defaultGrid, gridCandidates, parseGrid, tune, writeTuneOutputs, type Grid, type TuneResult } from '../src/sim/tune.js';
import { generateWorkload } from '../src/sim/workload.js';
import { cleanup, tempDir } from './helpers/models.js';
import { testProfile } from './helpers/profile.js';

const profile: StepProfile = testProfile;

const trace: TraceRequest[] = generateWorkload({ seed: 3, requests: 200, rate: 20, maxPromptTokens: 384, maxOutputTokens: 96 });
const sim = { profile, geometry: { maxNumSeqs: 16, kvBlocks: 192 } };
const loads = [1, 2];

/** 3 token curves (two kinds, one adaptive) × 2 kv curves. */
const smallGrid = (): Grid =>
  parseGrid({
    seed: 5,
    tokens: [
      { kind: 'power', p0: 0, scale: [1e-4, 1e-2], exponent: 4 },
      { kind: 'dual', p0: 0, step: 1e-4, target: 0.8, max: 0.01 },
    ],
    kv: [{ kind: 'mm1', p0: 0, scale: [1e-5, 1e-3] }],
  });

/** tune.json as written, without the wall-clock fields. */
function tuneJson(dir: string): unknown {
  const j = JSON.parse(readFileSync(join(dir, 'tune.json'), 'utf8')) as Record<string, unknown>;
  delete j.timing;
  return j;
}

const dirs: string[] = [];
after(() => dirs.forEach(cleanup));

function outDir(): string {
  const d = tempDir('tune');
  dirs.push(d);
  return d;
}

function assertInvalid(json: unknown, field: RegExp): void {
  assert.throws(
    () => parseGrid(json),
    (e: Error & { code?: string }) => {
      assert.equal(e.code, 'MARGINAL_INVALID_ARGUMENT', e.message);
      assert.match(e.message, field);
      return true;
    },
  );
}

describe('grid files', () => {
  test('entries expand to the Cartesian product of their lists; candidates are tokens × kv, tokens-major', () => {
    const g = smallGrid();
    assert.equal(g.policy, 'shadow');
    assert.equal(g.tokens.length, 3);
    assert.equal(g.kv.length, 2);
    const cs = gridCandidates(g);
    assert.equal(cs.length, 6);
    assert.deepEqual(cs.map((c) => c.index), [0, 1, 2, 3, 4, 5]);
    assert.deepEqual(cs[1]?.tokens, cs[0]?.tokens);
    assert.notDeepEqual(cs[1]?.kv, cs[0]?.kv);
    // Normalized by describe(): mm1's default max_utilization is filled in.
    assert.equal(cs[0]?.kv.max_utilization, 0.99);
    assert.equal(cs[5]?.tokens.kind, 'dual');
  });

  test('a table expands over lists of point lists, and one point list is a single curve', () => {
    const one = parseGrid({ tokens: [{ kind: 'table', points: [[0, 0], [1, 1e-3]] }] });
    assert.equal(one.tokens.length, 1);
    const two = parseGrid({ tokens: [{ kind: 'table', points: [[[0, 0], [1, 1e-3]], [[0, 0], [0.5, 0], [1, 1e-2]]] }] });
    assert.equal(two.tokens.length, 2);
  });

  test('duplicates are kept once; absent lists mean the default curve', () => {
    const g = parseGrid({ tokens: [{ kind: 'linear', p0: [0, 0], slope: 1e-3 }, { kind: 'linear', p0: 0, slope: 1e-3 }] });
    assert.equal(g.tokens.length, 1);
    assert.equal(g.kv.length, 1);
    assert.equal(g.kv[0]?.kind, 'mm1');
  });

  test('the default grid covers all five kinds with a few dozen candidates', () => {
    const g = defaultGrid();
    assert.deepEqual([...new Set(g.tokens.map((t) => t.kind))].sort(), ['dual', 'linear', 'mm1', 'power', 'table']);
    const n = gridCandidates(g).length;
    assert.ok(n >= 20 && n <= 60, `${n} candidates`);
  });

  test('sample keeps a seeded subset, the same every time, in grid order', () => {
    const json = { seed: 9, sample: 7, tokens: [{ kind: 'power', p0: 0, scale: [1e-4, 1e-3, 1e-2], exponent: [1, 2, 4, 8] }], kv: [{ kind: 'mm1', p0: 0, scale: [1e-5, 1e-4] }] };
    const a = gridCandidates(parseGrid(json));
    const b = gridCandidates(parseGrid(json));
    assert.equal(a.length, 7);
    assert.deepEqual(a, b);
    const other = gridCandidates(parseGrid({ ...json, seed: 10 }));
    assert.notDeepEqual(other.map((c) => [c.tokens, c.kv]), a.map((c) => [c.tokens, c.kv]));
  });

  test('invalid grids name the field at fault', () => {
    assertInvalid([], /grid must be a JSON object/);
    assertInvalid({ tokens: [{ kind: 'power', p0: 0, scale: 1e-3, exponent: [2, -1] }] }, /grid tokens\[0\]\.exponent must be a positive number/);
    assertInvalid({ kv: [{ kind: 'mm1', p0: 0, scale: [] }] }, /grid kv\[0\]\.scale must not be an empty list/);
    assertInvalid({ tokens: [{ kind: 'cubic', p0: 0 }] }, /grid tokens\[0\]\.kind must be one of/);
    assertInvalid({ tokens: [{ kind: 'linear', p0: 0, slop: 1 }] }, /grid tokens\[0\]\.slop is not a field of a linear curve/);
    assertInvalid({ tokens: [{ kind: 'power', p0: 0, scale: 1e-3, exponent: 2 }, { kind: 'dual', p0: 0, step: 1e-4, target: [0.5, 1.5] }] }, /grid tokens\[1\]\.target must be a number in \[0, 1\]/);
    assertInvalid({ tokens: [{ kind: 'table', points: [[[0, 0], [1, 1]], [[0.5, 1], [0.2, 2]]] }] }, /grid tokens\[0\]\.points\[1\]\[0\]/);
    assertInvalid({ tokens: [] }, /grid tokens must be a non-empty array/);
    assertInvalid({ kv: {} }, /grid kv must be a non-empty array/);
    assertInvalid({ loads: [1, 0] }, /grid loads must be a non-empty array of positive numbers/);
    assertInvalid({ policy: 'lifo' }, /grid policy: unknown policy "lifo"/);
    assertInvalid({ seed: 1.5 }, /grid seed must be an integer/);
    assertInvalid({ sample: 0 }, /grid sample must be a positive integer/);
    assertInvalid({ token: [] }, /grid: unknown field "token"/);
  });
});

describe('tune', () => {
  let a: TuneResult;
  let dirA: string;
  let dirB: string;
  let dirC: string;

  before(async () => {
    [dirA, dirB, dirC] = [outDir(), outDir(), outDir()];
    a = await tune({ trace, sim, grid: smallGrid(), loads, threads: 2 });
    await writeTuneOutputs(a, dirA);
    const b = await tune({ trace, sim, grid: smallGrid(), loads, threads: 2 });
    await writeTuneOutputs(b, dirB);
    let calls = 0;
    let last: [number, number] = [0, 0];
    const c = await tune({ trace, sim, grid: smallGrid(), loads, threads: 1, onProgress: (done, total) => ((last = [done, total]), calls++) });
    await writeTuneOutputs(c, dirC);
    assert.deepEqual(last, [12, 12]);
    assert.equal(calls, 13);
  });

  test('every candidate ran at every load, and the loads are told apart', () => {
    assert.equal(a.candidates.length, 6);
    for (const c of a.candidates) {
      assert.equal(c.error, undefined);
      assert.deepEqual(c.runs.map((r) => r.load), loads);
      for (const r of c.runs) assert.equal(r.summary.lost, 0);
    }
    assert.ok(a.capacity_rps > 0);
    assert.ok((a.loads[1]?.rate_scale ?? 0) > (a.loads[0]?.rate_scale ?? 0));
    assert.equal(a.seed, 5);
    // The grid spans prices from negligible to prohibitive, so the curves must matter.
    assert.ok(new Set(a.candidates.map((c) => c.welfare)).size > 1);
  });

  test('deterministic: two runs, and 1 vs 2 threads, write the same tune.json apart from timing', () => {
    const ja = tuneJson(dirA);
    assert.deepEqual(tuneJson(dirB), ja);
    assert.deepEqual(tuneJson(dirC), ja);
    assert.equal(readFileSync(join(dirC, 'best-curve.json'), 'utf8'), readFileSync(join(dirA, 'best-curve.json'), 'utf8'));
  });

  test('the frontier is exactly the non-dominated candidates and holds the best', () => {
    const cs = a.candidates;
    const p99 = (i: number) => cs[i]?.ttft_p99_ms ?? Infinity;
    const dominated = (i: number) =>
      cs.some((o) => {
        const c = cs[i]!;
        const ge = o.welfare >= c.welfare && o.goodput_rps >= c.goodput_rps && p99(o.index) <= p99(i);
        return ge && (o.welfare > c.welfare || o.goodput_rps > c.goodput_rps || p99(o.index) < p99(i));
      });
    const expected = cs.map((c) => c.index).filter((i) => !dominated(i));
    assert.deepEqual(a.frontier, expected);
    assert.ok(a.frontier.includes(a.best));
    const maxWelfare = Math.max(...cs.map((c) => c.welfare));
    assert.equal(cs[a.best]?.welfare, maxWelfare);
    assert.equal(a.ranking[0], a.best);
    assert.equal(a.ranking.length, cs.length);
  });

  test('best-curve.json loads and, simulated alone, gives the same welfare', async () => {
    const curves = await loadCurveFile(join(dirA, 'best-curve.json'));
    const best = a.candidates[a.best]!;
    assert.deepEqual(curves.tokens.describe(), best.curves.tokens);
    assert.deepEqual(curves.kv.describe(), best.curves.kv);
    const welfare = a.loads.map(({ rate_scale }) => simulate(trace.map((r) => ({ ...r, t: r.t / rate_scale })), { ...sim, policy: a.policy, curves }).summary.welfare);
    assert.deepEqual(welfare, best.runs.map((r) => r.summary.welfare));
    assert.equal((welfare[0]! + welfare[1]!) / 2, best.welfare);
  });

  test('the plots are SVG and mark every frontier candidate', () => {
    const frontier = readFileSync(join(dirA, 'frontier.svg'), 'utf8');
    assert.match(frontier, /^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    assert.equal((frontier.match(/<circle [^>]*fill="#1b6ca8"[^>]*><title>/g) ?? []).length, a.frontier.length - 1);
    assert.match(frontier, new RegExp(`best #${a.best}`));
    const prices = readFileSync(join(dirA, 'prices.svg'), 'utf8');
    assert.match(prices, /^<svg/);
    assert.equal((prices.match(/<polyline/g) ?? []).length, 3);
    assert.match(prices, /dual\*/);
  });

  test('a bad load list or thread count is refused', async () => {
    await assert.rejects(tune({ trace, sim, grid: smallGrid(), loads: [], threads: 1 }), /loads must be a non-empty array/);
    await assert.rejects(tune({ trace, sim, grid: smallGrid(), loads, threads: 0 }), /threads must be a positive integer/);
    await assert.rejects(tune({ trace: trace.slice(0, 1), sim, grid: smallGrid(), loads, threads: 1 }), /two or more distinct times/);
  });
});

describe('runTune (the CLI command)', () => {
  test('writes the four files, with the grid seed and loads, from a trace file', async () => {
    const dir = outDir();
    const tracePath = join(dir, 'trace.jsonl');
    await writeTrace(tracePath, trace.slice(0, 120));
    const gridPath = join(dir, 'grid.json');
    await writeFile(gridPath, JSON.stringify({ seed: 4, loads: [1.5], tokens: [{ kind: 'linear', p0: 0, slope: [1e-4, 1e-3] }] }));
    const out = join(dir, 'out');
    let printed = '';
    await runTune({ trace: tracePath, grid: gridPath, out, threads: 1, quiet: true, json: true, maxRunning: 8, blocks: 128, write: (t) => (printed += t) });
    const summary = JSON.parse(printed) as { best: { index: number }; frontier: number[]; files: string[] };
    assert.ok(summary.frontier.includes(summary.best.index));
    assert.equal(summary.files.length, 4);
    const j = JSON.parse(readFileSync(join(out, 'tune.json'), 'utf8')) as TuneResult & { replay: string[] };
    assert.equal(j.seed, 4);
    assert.deepEqual(j.loads.map((l) => l.load), [1.5]);
    assert.equal(j.candidates.length, 2);
    assert.match(j.replay[0] ?? '', /^marginal sim --trace \S+ --seed 4 --rate-scale [\d.]+ --policy shadow --curve \S+best-curve\.json --max-num-seqs 8 --kv-blocks 128 --json$/);
    await loadCurveFile(join(out, 'best-curve.json'));
    for (const f of ['frontier.svg', 'prices.svg']) assert.match(readFileSync(join(out, f), 'utf8'), /^<svg/);
  });

  test('an invalid grid file fails before anything runs, naming the field', async () => {
    const dir = outDir();
    const gridPath = join(dir, 'grid.json');
    await writeFile(gridPath, JSON.stringify({ kv: [{ kind: 'mm1', p0: 0, scale: [1e-5, -1] }] }));
    await assert.rejects(runTune({ trace: join(dir, 'missing.jsonl'), grid: gridPath, quiet: true }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'MARGINAL_INVALID_ARGUMENT');
      assert.match(e.message, /kv\[0\]\.scale must be a non-negative number/);
      return true;
    });
  });
});
