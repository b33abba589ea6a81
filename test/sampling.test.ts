import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../src/sampling/rng.js';
import { Sampler } from '../src/sampling/sampler.js';
import { StopMatcher } from '../src/sampling/stop.js';
import { validateSamplingParams, type SamplingParams } from '../src/sampling/params.js';
import { applyLogitAdjust, LogitAdjuster, type LogitAdjust } from '../src/sampling/penalties.js';
import { InvalidSamplingError } from '../src/errors.js';

function params(over: Partial<SamplingParams> = {}): SamplingParams {
  return { temperature: 1, topP: 1, topK: 0, seed: undefined, maxTokens: 16, stop: [], ...over };
}

/** Deterministic logits; `levels` > 0 quantizes them so many logits tie exactly. */
function randomLogits(rng: Rng, n: number, scale = 4, levels = 0): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const v = (rng.next() * 2 - 1) * scale;
    out[i] = levels > 0 ? Math.round(v * levels) / levels : v;
  }
  return out;
}

/**
 * The straightforward definition from src/sampling/sampler.ts, written with a full sort, to check that the
 * heap/threshold shortcuts give bit-identical picks.
 */
function referenceSample(row: Float32Array, p: SamplingParams, u: number): number {
  const V = row.length;
  const ids: number[] = [];
  for (let i = 0; i < V; i++) if (!Number.isNaN(row[i]!)) ids.push(i);
  ids.sort((a, b) => row[b]! - row[a]! || a - b);
  const invT = 1 / p.temperature;
  const weight = (id: number, max: number): number => {
    const z = (row[id]! - max) * invT;
    const e = z > -Infinity ? Math.exp(z) : 0;
    return e < (p.minP ?? 0) ? 0 : e;
  };
  const topK = p.topK > 0 && p.topK < V;
  if (!topK && p.topP >= 1) {
    const max = row[ids[0]!]!;
    const w = Array.from(row, (_, i) => weight(i, max));
    const total = w.reduce((a, b) => a + b, 0);
    const x = u * total;
    let cum = 0;
    for (let i = 0; i < V; i++) {
      cum += w[i]!;
      if (cum > x) return i;
    }
    throw new Error('unreachable');
  }
  let cands = topK ? ids.slice(0, p.topK) : ids;
  const max = row[cands[0]!]!;
  let total = 0;
  if (topK) for (const id of cands) total += weight(id, max);
  else for (let i = 0; i < V; i++) total += weight(i, max);
  if (p.topP < 1) {
    const target = p.topP * total;
    let cum = 0;
    let n = 0;
    while (n < cands.length) {
      cum += weight(cands[n]!, max);
      n++;
      if (cum >= target) break;
    }
    cands = cands.slice(0, n);
  }
  const kept = cands.reduce((a, id) => a + weight(id, max), 0);
  const x = u * kept;
  let cum = 0;
  for (const id of cands) {
    cum += weight(id, max);
    if (cum > x) return id;
  }
  throw new Error('unreachable');
}

function softmax(logits: number[], T = 1): number[] {
  const max = Math.max(...logits);
  const e = logits.map((l) => Math.exp((l - max) / T));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

describe('Rng', () => {
  it('matches the xoshiro128** + splitmix64 reference stream (C known answers)', () => {
    const expected: Array<[number, number[]]> = [
      [0, [3737715805, 2584255861, 2876756834, 3286328325, 1553311962, 1625202774]],
      [42, [1776835114, 4165204688, 17111135, 2317295270, 2792088233, 2554630222]],
      [-1, [477689756, 2493998634, 555695776, 607808419, 61340979, 301466976]],
      [Number.MAX_SAFE_INTEGER, [1233166643, 1287031142, 661813442, 2960669951, 2601079046, 1036114921]],
    ];
    for (const [seed, outs] of expected) {
      const rng = new Rng(seed);
      assert.deepEqual(outs.map(() => rng.nextUint32()), outs, `seed ${seed}`);
    }
    const rng = new Rng(42);
    assert.deepEqual([rng.next(), rng.next(), rng.next()].map((v) => Math.fround(v)), [0.413701653, 0.96978724, 0.00398397446].map(Math.fround));
  });

  it('next() is float32-exact and in [0, 1)', () => {
    const rng = new Rng(7);
    for (let i = 0; i < 10000; i++) {
      const v = rng.next();
      assert.ok(v >= 0 && v < 1);
      assert.equal(Math.fround(v), v);
    }
  });

  it('unseeded Rngs get distinct safe-integer seeds', () => {
    const a = Rng.create(undefined);
    const b = Rng.create(undefined);
    assert.ok(Number.isSafeInteger(a.seed) && a.seed >= 0);
    assert.notEqual(a.seed, b.seed);
    assert.equal(Rng.create(5).seed, 5);
    assert.throws(() => new Rng(1.5), RangeError);
  });
});

describe('Sampler', () => {
  it('greedy picks the argmax, lowest id on ties, and consumes no randomness', () => {
    const s = new Sampler(5);
    const rng = new Rng(1);
    const probe = new Rng(1);
    assert.equal(s.sample(new Float32Array([0.1, 3, -2, 3, 1]), 0, params({ temperature: 0 }), rng), 1);
    assert.equal(s.sample(new Float32Array([-Infinity, -1, -5, -0.5, -0.5]), 0, params({ temperature: 0 }), rng), 3);
    assert.equal(rng.nextUint32(), probe.nextUint32());
  });

  it('consumes exactly one random number per non-greedy sample', () => {
    const V = 50;
    const s = new Sampler(V);
    const logits = randomLogits(new Rng(3), V);
    for (const p of [params(), params({ topK: 5 }), params({ topP: 0.5 }), params({ topK: 10, topP: 0.3 }), params({ topK: 1 })]) {
      const rng = new Rng(9);
      const probe = new Rng(9);
      for (let i = 0; i < 5; i++) s.sample(logits, 0, p, rng);
      for (let i = 0; i < 5; i++) probe.next();
      assert.equal(rng.nextUint32(), probe.nextUint32(), JSON.stringify(p));
    }
  });

  it('same seed gives the same token sequence', () => {
    const V = 1000;
    const s = new Sampler(V);
    const rows = Array.from({ length: 50 }, (_, i) => randomLogits(new Rng(100 + i), V));
    const run = (seed: number): number[] => {
      const rng = new Rng(seed);
      return rows.map((row) => s.sample(row, 0, params({ topP: 0.9 }), rng));
    };
    assert.deepEqual(run(1234), run(1234));
    assert.notDeepEqual(run(1234), run(4321));
  });

  it('rows of a batched buffer sample exactly like the same rows alone', () => {
    const V = 3000;
    const B = 6;
    const batch = randomLogits(new Rng(11), V * B, 6);
    const ps = [params(), params({ topK: 40 }), params({ topP: 0.9 }), params({ topK: 50, topP: 0.8, temperature: 0.7 }), params({ temperature: 0 }), params({ temperature: 1.8, topP: 0.95 })];
    const batched = new Sampler(V);
    const alone = new Sampler(V);
    const rngsA = ps.map((_, i) => new Rng(1000 + i));
    const rngsB = ps.map((_, i) => new Rng(1000 + i));
    for (let step = 0; step < 20; step++) {
      for (let r = 0; r < B; r++) {
        const a = batched.sample(batch, r * V, ps[r]!, rngsA[r]!);
        const b = alone.sample(batch.slice(r * V, (r + 1) * V), 0, ps[r]!, rngsB[r]!);
        assert.equal(a, b, `row ${r} step ${step}`);
        assert.ok(a >= 0 && a < V);
      }
    }
  });

  it('rejects a row that does not fit in the buffer', () => {
    const s = new Sampler(4);
    assert.throws(() => s.sample(new Float32Array(7), 4, params(), new Rng(1)), RangeError);
  });

  it('top-k = 1 and a tiny top-p both equal greedy', () => {
    const V = 2000;
    const s = new Sampler(V);
    for (let i = 0; i < 30; i++) {
      // Coarse quantization forces ties at the top, exercising the lowest-id tie-break.
      const logits = randomLogits(new Rng(500 + i), V, 3, i % 2 === 0 ? 2 : 0);
      const greedy = s.sample(logits, 0, params({ temperature: 0 }), new Rng(0));
      const rng = new Rng(i);
      assert.equal(s.sample(logits, 0, params({ topK: 1 }), rng), greedy);
      assert.equal(s.sample(logits, 0, params({ topP: 1e-9 }), rng), greedy);
      assert.equal(s.sample(logits, 0, params({ topP: 1e-9, temperature: 2 }), rng), greedy);
    }
  });

  it('picks exactly what the sort-based definition picks', () => {
    const V = 500;
    const s = new Sampler(V);
    const gen = new Rng(77);
    const settings = [
      params(),
      params({ temperature: 0.3 }),
      params({ topK: 1 }),
      params({ topK: 7 }),
      params({ topK: 499 }),
      params({ topK: 500 }),
      params({ topK: 100000 }),
      params({ topP: 0.5 }),
      params({ topP: 0.9, temperature: 1.5 }),
      params({ topP: 0.999999 }),
      params({ topK: 20, topP: 0.6 }),
      params({ topK: 300, topP: 0.95, temperature: 2 }),
      params({ minP: 0.05 }),
      params({ minP: 0.5, temperature: 2 }),
      params({ minP: 1 }),
      params({ minP: 0.1, topK: 50 }),
      params({ minP: 0.02, topP: 0.9 }),
      params({ minP: 0.3, topK: 20, topP: 0.6, temperature: 1.5 }),
    ];
    for (let trial = 0; trial < 40; trial++) {
      const levels = trial % 3 === 0 ? 1 : trial % 3 === 1 ? 8 : 0;
      const logits = randomLogits(gen, V, trial % 4 === 0 ? 0.01 : 8, levels);
      if (trial % 5 === 0) {
        logits[3] = -Infinity;
        logits[17] = Number.NaN;
      }
      for (const p of settings) {
        const seed = trial * 100 + settings.indexOf(p);
        const got = s.sample(logits, 0, p, new Rng(seed));
        const want = referenceSample(logits, p, new Rng(seed).next());
        assert.equal(got, want, `trial ${trial} ${JSON.stringify(p)}`);
        assert.ok(!Number.isNaN(logits[got]!) && logits[got] !== -Infinity);
      }
    }
  });

  it('temperature-1 draws over a 4-token vocab match softmax', () => {
    const logits = [1, 2, 0.5, -1];
    const probs = softmax(logits);
    const s = new Sampler(4);
    const row = new Float32Array(logits);
    const rng = new Rng(2024);
    const N = 20000;
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < N; i++) counts[s.sample(row, 0, params(), rng)]!++;
    for (let t = 0; t < 4; t++) {
      // Std of a frequency is <= 0.0036 at N = 20000, so 0.015 is > 4 sigma (and the seed is fixed).
      assert.ok(Math.abs(counts[t]! / N - probs[t]!) < 0.015, `token ${t}: ${counts[t]! / N} vs ${probs[t]}`);
    }
  });

  it('temperature scales the distribution', () => {
    const logits = [1, 2, 0.5, -1];
    const probs = softmax(logits, 0.5);
    const s = new Sampler(4);
    const row = new Float32Array(logits);
    const rng = new Rng(99);
    const N = 20000;
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < N; i++) counts[s.sample(row, 0, params({ temperature: 0.5 }), rng)]!++;
    for (let t = 0; t < 4; t++) assert.ok(Math.abs(counts[t]! / N - probs[t]!) < 0.015, `token ${t}`);
  });

  it('top-p never samples outside the nucleus, and renormalizes inside it', () => {
    // probs ≈ [0.5, 0.3, 0.15, 0.05]: top_p 0.7 keeps {0, 1} (0.5 < 0.7 <= 0.8).
    const logits = new Float32Array([Math.log(0.5), Math.log(0.3), Math.log(0.15), Math.log(0.05)]);
    const s = new Sampler(4);
    const rng = new Rng(5);
    const N = 20000;
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < N; i++) counts[s.sample(logits, 0, params({ topP: 0.7 }), rng)]!++;
    assert.equal(counts[2], 0);
    assert.equal(counts[3], 0);
    assert.ok(Math.abs(counts[0]! / N - 0.625) < 0.015);
    assert.ok(Math.abs(counts[1]! / N - 0.375) < 0.015);
  });

  it('top-k never samples outside the k best', () => {
    const V = 1000;
    const s = new Sampler(V);
    const logits = randomLogits(new Rng(8), V, 2);
    const top = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]! || a - b).slice(0, 10);
    const rng = new Rng(6);
    const seen = new Set<number>();
    for (let i = 0; i < 5000; i++) seen.add(s.sample(logits, 0, params({ topK: 10, temperature: 2 }), rng));
    assert.deepEqual([...seen].sort((a, b) => a - b), top.sort((a, b) => a - b));
  });

  it('a large nucleus over a flat 32000 vocab matches the reference', () => {
    const V = 32000;
    const s = new Sampler(V);
    const logits = randomLogits(new Rng(31), V, 0.5);
    for (const p of [params({ topP: 0.95 }), params({ topP: 0.5, temperature: 0.2 }), params({ topK: 5000, topP: 0.9 })]) {
      for (let seed = 0; seed < 5; seed++) {
        assert.equal(s.sample(logits, 0, p, new Rng(seed)), referenceSample(logits, p, new Rng(seed).next()));
      }
    }
  });
});

describe('validateSamplingParams', () => {
  it('applies OpenAI defaults', () => {
    assert.deepEqual(validateSamplingParams({}), { temperature: 1, topP: 1, topK: 0, seed: undefined, maxTokens: 16, stop: [] });
    assert.deepEqual(validateSamplingParams({ temperature: null, top_p: null, stop: null, seed: null }), {
      temperature: 1,
      topP: 1,
      topK: 0,
      seed: undefined,
      maxTokens: 16,
      stop: [],
    });
  });

  it('accepts valid values and both spellings', () => {
    assert.deepEqual(validateSamplingParams({ temperature: 0, top_p: 0.9, top_k: 40, seed: -3, max_tokens: 100, stop: 'END' }), {
      temperature: 0,
      topP: 0.9,
      topK: 40,
      seed: -3,
      maxTokens: 100,
      stop: ['END'],
    });
    const v = validateSamplingParams({ temperature: 2, topP: 1, topK: -1, maxTokens: 8, stop: ['a', 'b', 'c', 'd'] });
    assert.equal(v.topK, 0);
    assert.equal(v.maxTokens, 8);
    assert.deepEqual(v.stop, ['a', 'b', 'c', 'd']);
    assert.equal(validateSamplingParams({ max_tokens: 64 }, { maxTokensCap: 64 }).maxTokens, 64);
  });

  it('rejects invalid values with InvalidSamplingError naming the param', () => {
    const bad: Array<[Record<string, unknown>, string]> = [
      [{ temperature: -1 }, 'temperature'],
      [{ temperature: 3 }, 'temperature'],
      [{ temperature: 'hot' }, 'temperature'],
      [{ temperature: Number.NaN }, 'temperature'],
      [{ temperature: Infinity }, 'temperature'],
      [{ top_p: 0 }, 'top_p'],
      [{ top_p: 1.5 }, 'top_p'],
      [{ top_p: Number.NaN }, 'top_p'],
      [{ topP: 0 }, 'topP'],
      [{ top_k: 1.5 }, 'top_k'],
      [{ top_k: -2 }, 'top_k'],
      [{ top_k: '5' }, 'top_k'],
      [{ max_tokens: 0 }, 'max_tokens'],
      [{ max_tokens: 1.5 }, 'max_tokens'],
      [{ max_tokens: '10' }, 'max_tokens'],
      [{ maxTokens: -1 }, 'maxTokens'],
      [{ stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop'],
      [{ stop: [''] }, 'stop'],
      [{ stop: '' }, 'stop'],
      [{ stop: ['a', 3] }, 'stop'],
      [{ stop: 42 }, 'stop'],
      [{ seed: 1.5 }, 'seed'],
      [{ seed: '7' }, 'seed'],
      [{ seed: 2 ** 60 }, 'seed'],
    ];
    for (const [input, param] of bad) {
      assert.throws(
        () => validateSamplingParams(input),
        (err: unknown) => {
          assert.ok(err instanceof InvalidSamplingError, `${JSON.stringify(input)} threw ${String(err)}`);
          assert.equal((err as { param?: unknown }).param, param, JSON.stringify(input));
          assert.equal((err as { code?: unknown }).code, 'MARGINAL_INVALID_SAMPLING');
          assert.equal((err as { statusCode?: unknown }).statusCode, 400);
          return true;
        },
      );
    }
  });

  it('enforces the max_tokens cap', () => {
    assert.throws(
      () => validateSamplingParams({ max_tokens: 65 }, { maxTokensCap: 64 }),
      (err: unknown) => err instanceof InvalidSamplingError && (err as { param?: unknown }).param === 'max_tokens',
    );
  });
});

describe('StopMatcher', () => {
  function feed(m: StopMatcher, pieces: string[]): { out: string; stopped: boolean } {
    let out = '';
    let stopped = false;
    for (const p of pieces) {
      const r = m.push(p);
      out += r.emit;
      if (r.stopped) {
        stopped = true;
        break;
      }
    }
    return { out: out + m.flush(), stopped };
  }

  it('passes text straight through without stop strings', () => {
    const m = new StopMatcher([]);
    assert.deepEqual(m.push('hello'), { emit: 'hello', stopped: false });
    assert.equal(m.flush(), '');
  });

  it('never emits a stop string split across pushes, but emits the text before it', () => {
    const m = new StopMatcher(['<|end|>']);
    assert.deepEqual(m.push('Hello wor'), { emit: 'Hello wor', stopped: false });
    assert.deepEqual(m.push('ld<|e'), { emit: 'ld', stopped: false });
    assert.deepEqual(m.push('nd'), { emit: '', stopped: false });
    assert.deepEqual(m.push('|>trailing'), { emit: '', stopped: true });
    assert.equal(m.stopped, true);
    assert.deepEqual(m.push('more'), { emit: '', stopped: true });
    assert.equal(m.flush(), '');
  });

  it('releases a held-back prefix that turns out not to match', () => {
    const m = new StopMatcher(['STOP']);
    assert.deepEqual(m.push('go ST'), { emit: 'go ', stopped: false });
    assert.deepEqual(m.push('ILL'), { emit: 'STILL', stopped: false });
    assert.deepEqual(m.push(' S'), { emit: ' ', stopped: false });
    assert.equal(m.flush(), 'S');
  });

  it('flush releases the tail when generation ends without a match', () => {
    const m = new StopMatcher(['\n\n', 'User:']);
    assert.deepEqual(m.push('answer\n'), { emit: 'answer', stopped: false });
    assert.deepEqual(m.push(' Us'), { emit: '\n ', stopped: false });
    assert.equal(m.flush(), 'Us');
    assert.equal(m.flush(), '');
  });

  it('stops at the earliest match within one push, and at overlapping prefixes', () => {
    assert.deepEqual(new StopMatcher(['b', 'abc']).push('xxabcd'), { emit: 'xx', stopped: true });
    assert.deepEqual(feed(new StopMatcher(['aab']), ['a', 'a', 'a', 'b', 'z']), { out: 'a', stopped: true });
    assert.deepEqual(feed(new StopMatcher(['###']), ['#', '#', ' ', '#']), { out: '## #', stopped: false });
  });

  it('matches what a whole-text search would give, for every way of splitting the text', () => {
    const text = 'The answer is 42.\nObservation: done';
    const stops = ['\nObservation:', 'xyz'];
    const want = 'The answer is 42.';
    for (let a = 0; a <= text.length; a++) {
      for (let b = a; b <= text.length; b += 3) {
        const got = feed(new StopMatcher(stops), [text.slice(0, a), text.slice(a, b), text.slice(b)]);
        assert.deepEqual(got, { out: want, stopped: true }, `split ${a},${b}`);
      }
    }
    const noStop = feed(new StopMatcher(['zzz']), ['abc z', 'z', ' done z']);
    assert.deepEqual(noStop, { out: 'abc zz done z', stopped: false });
  });
});

it('sampleRanked over in-graph top-k candidates equals sample over the full row (greedy and top-k)', () => {
  const [S, R, v] = [Sampler, Rng, validateSamplingParams];
  const V = 1000;
  const sampler = new S(V);
  const gen = new R(99);
  const logits = new Float32Array(V);
  for (let trial = 0; trial < 300; trial++) {
    for (let i = 0; i < V; i++) logits[i] = Math.round((gen.next() * 8 - 4) * (trial % 3 === 0 ? 4 : 100)) / 8;
    const ranked = Array.from(logits, (x, i) => [x, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, 64);
    const values = Float32Array.from(ranked.map((r) => r[0]));
    const ids = BigInt64Array.from(ranked.map((r) => BigInt(r[1])));
    for (const p of [v({ temperature: 0 }), v({ temperature: 0.8, top_k: 40, seed: trial }), v({ temperature: 1.5, top_k: 64, top_p: 0.7, seed: trial }), v({ temperature: 0.3, top_k: 1, seed: trial })]) {
      const a = new R(trial);
      const b = new R(trial);
      assert.equal(sampler.sampleRanked(values, ids, 0, 64, p, a), sampler.sample(logits, 0, p, b), JSON.stringify(p));
      assert.equal(a.next(), b.next(), 'the same random stream consumed');
    }
  }
});

describe('logit adjustments (penalties, logit_bias, min_tokens)', () => {
  it('follow vLLM: bias, then repetition over prompt and output, then frequency and presence over output', () => {
    // Worked by hand: prompt [0, 4], generated [1, 1, 2].
    const p = validateSamplingParams({ presence_penalty: 0.5, frequency_penalty: 0.25, repetition_penalty: 2, logit_bias: { 3: -1, 1: 0.5 } });
    const adj = new LogitAdjuster(p, [5]);
    const a = adj.sync([0, 4, 1, 1, 2], 2, 5) as LogitAdjust;
    const row = Float32Array.from([1, 2, -1, 0.5, 3, 7]);
    applyLogitAdjust(row, 0, a);
    const want = [
      1 / 2, // prompt: repetition only
      (2 + 0.5) / 2 - 0.25 * 2 - 0.5, // biased, generated twice
      -1 * 2 - 0.25 - 0.5, // negative: multiplied by the repetition penalty
      0.5 - 1, // bias only
      3 / 2, // prompt
      7, // untouched
    ];
    assert.deepEqual(Array.from(row), want.map(Math.fround));
  });

  it('min_tokens bans the stop tokens until enough tokens are generated, then lifts the ban', () => {
    const p = validateSamplingParams({ min_tokens: 2, max_tokens: 5 });
    const adj = new LogitAdjuster(p, [2, 7]);
    const row = new Float32Array(8).fill(1);
    applyLogitAdjust(row, 0, adj.sync([1, 3], 1, 2) as LogitAdjust);
    assert.equal(row[2], -Infinity);
    assert.equal(row[7], -Infinity);
    row.fill(1);
    const after = adj.sync([1, 3, 4], 1, 3);
    if (after) applyLogitAdjust(row, 0, after);
    assert.deepEqual(Array.from(row), new Array(8).fill(1));
  });

  it('sampleRanked over adjusted in-graph candidates equals sample over the adjusted full row', () => {
    const V = 1000;
    const sampler = new Sampler(V);
    const gen = new Rng(5);
    const raw = new Float32Array(V);
    for (let trial = 0; trial < 200; trial++) {
      for (let i = 0; i < V; i++) raw[i] = Math.round((gen.next() * 8 - 4) * (trial % 3 === 0 ? 4 : 100)) / 8;
      const generated = Array.from({ length: 1 + (trial % 20) }, () => Math.floor(gen.next() * (trial % 2 === 0 ? 30 : V)));
      // Favour the best tokens so the penalties really reorder the head of the row.
      const best = Array.from(raw, (x, i) => [x, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
      for (let j = 0; j < 4; j++) generated.push(best[j]![1]);
      const p = validateSamplingParams({
        temperature: trial % 4 === 0 ? 0 : 0.9,
        top_k: 5 + (trial % 10),
        seed: trial,
        presence_penalty: 0.7,
        frequency_penalty: 0.3,
        repetition_penalty: 1.2,
        logit_bias: { [String(best[0]![1])]: -3 },
      });
      const a = new LogitAdjuster(p, []).sync([7, ...generated], 1, 1 + generated.length) as LogitAdjust;
      const K = Sampler.rankedNeeds(p, a);
      assert.ok(Sampler.rankedSuffices(p, K, a) && a.onlyLowers);
      const top = best.slice(0, K);
      const values = Float32Array.from(top.map((r) => r[0]));
      const ids = BigInt64Array.from(top.map((r) => BigInt(r[1])));
      const full = raw.slice();
      applyLogitAdjust(full, 0, a);
      const r1 = new Rng(trial);
      const r2 = new Rng(trial);
      assert.equal(sampler.sampleRanked(values, ids, 0, K, p, r1, a), sampler.sample(full, 0, p, r2), `trial ${trial}`);
      assert.equal(r1.next(), r2.next());
    }
  });

  it('a positive bias or a negative penalty can raise a token, so such rows need the full logits', () => {
    const up = new LogitAdjuster(validateSamplingParams({ logit_bias: { 9: 5 } }), []).sync([1], 1, 1) as LogitAdjust;
    assert.equal(up.onlyLowers, false);
    assert.equal(Sampler.rankedSuffices(validateSamplingParams({ temperature: 0 }), 64, up), false);
    const neg = new LogitAdjuster(validateSamplingParams({ presence_penalty: -1 }), []).sync([1, 2], 1, 2) as LogitAdjust;
    assert.equal(neg.onlyLowers, false);
  });
});
