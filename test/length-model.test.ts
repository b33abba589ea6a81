import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { QuantileDistribution, ShiftedExponentialDistribution } from '../src/economy/length-distribution.js';
import { createLengthPredictor, LearnedLength, LEVELS, OnlineMeanLength, type LengthDistribution, type LengthFeatures, type LearnedLengthOptions } from '../src/economy/length-model.js';
import { FEATURE_WIDTH, LengthFeatureEncoder } from '../src/economy/length-features.js';
import { loadTf, type Tf } from '../src/economy/tfjs.js';
import { Rng } from '../src/sampling/rng.js';
import { simulate } from '../src/sim/simulator.js';
import { generateWorkload } from '../src/sim/workload.js';
import { testProfile } from './helpers/profile.js';

/** Standard normal quantiles at LEVELS (from tables, not from the code under test). */
const Z: Record<number, number> = {
  0.05: -1.644854, 0.1: -1.281552, 0.2: -0.841621, 0.25: -0.67449, 0.3: -0.524401, 0.4: -0.253347, 0.5: 0,
  0.6: 0.253347, 0.7: 0.524401, 0.75: 0.67449, 0.8: 0.841621, 0.9: 1.281552, 0.95: 1.644854,
};
const MEDIAN = LEVELS.indexOf(0.5);

/**
 * A synthetic workload with a known answer: log output length is normal with a mean set by the
 * tenant, plus 0.4 × (log prompt − 5), plus ln 2 for prompts that open with the second template
 * (their outputs are twice as long), and a spread set by the tenant.
 */
const TENANTS = [
  { name: 'terse', mu: 2.0, sigma: 0.3 },
  { name: 'chatty', mu: 4.0, sigma: 0.5 },
  { name: 'essayist', mu: 5.0, sigma: 0.8 },
] as const;

interface Draw {
  f: LengthFeatures;
  tokens: number;
  byLength: boolean;
  /** The true quantiles of the served length (log-normal capped at max_tokens), at LEVELS. */
  truth: number[];
}

const TEMPLATES = [
  [1, 15043, 29892],
  [1, 887, 526, 263, 8444, 20255, 29889, 13, 1576],
];

function features(tenant: string, promptTokens: number, maxTokens = 2048, template = 0): LengthFeatures {
  return { tenant, promptTokens, maxTokens, endpoint: 'completion', hasStop: false, temperature: 0.7, leadingTokens: TEMPLATES[template]! };
}

function location(t: (typeof TENANTS)[number], promptTokens: number, template: number): number {
  return t.mu + 0.4 * (Math.log(promptTokens) - 5) + template * Math.LN2;
}

function truthFor(t: (typeof TENANTS)[number], promptTokens: number, maxTokens: number, template = 0): number[] {
  return LEVELS.map((l) => Math.min(maxTokens, Math.exp(location(t, promptTokens, template) + t.sigma * Z[l]!)));
}

function workload(seed: number): () => Draw {
  const rng = new Rng(seed);
  return () => {
    const t = TENANTS[rng.nextUint32() % TENANTS.length]!;
    const promptTokens = Math.round(Math.exp(3 + 4 * rng.next()));
    const template = rng.nextUint32() % 2;
    const maxTokens = 2048;
    const normal = Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
    const raw = Math.exp(location(t, promptTokens, template) + t.sigma * normal);
    const tokens = Math.max(1, Math.min(maxTokens, Math.round(raw)));
    return { f: features(t.name, promptTokens, maxTokens, template), tokens, byLength: tokens >= maxTokens, truth: truthFor(t, promptTokens, maxTokens, template) };
  };
}

/** Pinball loss of the distribution's quantiles on log length, averaged over levels. */
function pinball(d: LengthDistribution, tokens: number): number {
  let s = 0;
  for (let j = 0; j < d.levels.length; j++) {
    const diff = Math.log(tokens) - Math.log(d.quantiles[j]!);
    s += Math.max(d.levels[j]! * diff, (d.levels[j]! - 1) * diff);
  }
  return s / d.levels.length;
}

/** Feeds n draws, training to completion after each as the simulator would. */
function feed(p: { observe: LearnedLength['observe']; train: LearnedLength['train'] }, next: () => Draw, n: number): void {
  for (let i = 0; i < n; i++) {
    const d = next();
    p.observe(d.f, d.tokens, d.byLength);
    p.train(Infinity);
  }
}

function checkDistribution(d: LengthDistribution, maxTokens: number, what: string): void {
  assert.equal(d.quantiles.length, d.levels.length, what);
  for (let j = 0; j < d.quantiles.length; j++) {
    const q = d.quantiles[j]!;
    assert.ok(q >= 1 && q <= maxTokens, `${what}: quantile ${j} = ${q} outside [1, ${maxTokens}]`);
    if (j > 0) assert.ok(q >= d.quantiles[j - 1]!, `${what}: quantiles decrease at ${j}: ${Array.from(d.quantiles).join(', ')}`);
    assert.equal(d.quantile(d.levels[j]!), q, `${what}: quantile(level) is the stored quantile`);
  }
  assert.equal(d.cdf(0.5), 0, `${what}: no mass below 1 token`);
  assert.equal(d.cdf(maxTokens), 1, `${what}: all mass at or below max_tokens`);
  let prev = 0;
  for (let t = 1; t <= maxTokens; t *= 1.07) {
    const c = d.cdf(t);
    assert.ok(c >= prev - 1e-12 && c <= 1, `${what}: cdf not monotone at ${t}`);
    prev = c;
    // The quantile function is the CDF's generalized inverse.
    if (c > 0 && c < 1 - 1e-9) assert.ok(d.quantile(c) <= t * (1 + 1e-6), `${what}: quantile(cdf(${t})) = ${d.quantile(c)} > ${t}`);
  }
  for (let p = 0.01; p < 1; p += 0.01) assert.ok(d.cdf(d.quantile(p)) >= p - 1e-6, `${what}: cdf(quantile(${p})) < ${p}`);
  // E[X] = ∫ P(X > t) dt, integrated numerically from the CDF alone.
  let integral = 0;
  const steps = 20000;
  for (let i = 0; i < steps; i++) {
    const t = ((i + 0.5) / steps) * maxTokens;
    integral += (1 - d.cdf(t)) * (maxTokens / steps);
  }
  const m = d.mean();
  assert.ok(m >= 1 && m <= maxTokens, `${what}: mean ${m} outside [1, ${maxTokens}]`);
  assert.ok(Math.abs(m - integral) <= 0.01 * integral + 0.05, `${what}: mean ${m} but ∫(1 − cdf) = ${integral}`);
}

let tf: Tf;
/** What loadTf logged: it runs once per process, and this file's first call is the one below. */
const tfLog: string[] = [];
before(async () => {
  tf = (await loadTf((l) => tfLog.push(l))).tf;
});

async function learned(o: LearnedLengthOptions = {}): Promise<LearnedLength> {
  const p = await createLengthPredictor('learned', { log: () => {}, ...o });
  assert.ok(p instanceof LearnedLength);
  return p;
}

describe('length distributions', () => {
  it('shifted exponential: hand-worked median, mean and cap', () => {
    const d = new ShiftedExponentialDistribution(LEVELS, 101, 1_000_000);
    assert.ok(Math.abs(d.quantile(0.5) - (1 + 100 * Math.LN2)) < 1e-9);
    assert.ok(Math.abs(d.mean() - 101) < 1e-6);
    const capped = new ShiftedExponentialDistribution(LEVELS, 101, 50);
    // 1 + 100 × (1 − e^(−49/100)): the cap takes the tail's mass.
    assert.ok(Math.abs(capped.mean() - (1 + 100 * (1 - Math.exp(-0.49)))) < 1e-9);
    assert.equal(capped.quantile(0.95), 50);
    checkDistribution(d, 1_000_000, 'exponential');
    checkDistribution(capped, 50, 'capped exponential');
    checkDistribution(new ShiftedExponentialDistribution(LEVELS, 1, 16), 16, 'point mass at 1');
  });

  it('quantile distribution: interpolates log-linearly, keeps atoms, extends tails within [1, max_tokens]', () => {
    const levels = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95];
    const q = Float64Array.from([10, 20, 40, 80, 160, 320, 640]);
    const d = new QuantileDistribution(levels, q.slice(), 1024);
    // Halfway between the 0.25 and 0.5 knots in p is the geometric mean of 40 and 80.
    assert.ok(Math.abs(d.quantile(0.375) - Math.sqrt(40 * 80)) < 1e-9);
    assert.ok(Math.abs(d.cdf(Math.sqrt(40 * 80)) - 0.375) < 1e-12);
    checkDistribution(d, 1024, 'geometric knots');
    // Quantiles stuck at the cap: an atom of mass 1 − 0.75 at max_tokens.
    const atom = new QuantileDistribution(levels, Float64Array.from([5, 6, 9, 30, 100, 100, 100]), 100);
    assert.equal(atom.cdf(99.9) <= 0.75 + 1e-12, true);
    assert.equal(atom.cdf(100), 1);
    checkDistribution(atom, 100, 'atom at the cap');
    checkDistribution(new QuantileDistribution(LEVELS, new Float64Array(LEVELS.length).fill(7), 64), 64, 'point mass');
    checkDistribution(new QuantileDistribution(levels, Float64Array.from([1, 1, 1, 2, 3, 900, 1000]), 1000), 1000, 'ragged');
    checkDistribution(new QuantileDistribution(LEVELS, Float64Array.from(LEVELS, (l) => 3 + 200 * l * l), 4096), 4096, 'LEVELS');
  });
});

describe('length features', () => {
  it('count a leading-token prefix only once it recurs, and forget it when it stops', () => {
    const enc = new LengthFeatureEncoder(2, 64);
    const a = new Float32Array(FEATURE_WIDTH);
    const b = new Float32Array(FEATURE_WIDTH);
    const f = features('t', 100, 256, 1);
    const bare = { ...f, leadingTokens: [] };
    enc.encode(bare, b, 0);
    const prefixBits = (): number => a.reduce((n, v, i) => n + (v !== b[i] ? 1 : 0), 0);
    enc.encode(f, a, 0);
    assert.equal(prefixBits(), 0, 'an unseen prefix sets nothing');
    enc.record(f);
    enc.encode(f, a, 0);
    assert.equal(prefixBits(), 0, 'seen once: still nothing (one request is not a template)');
    enc.record(f);
    enc.encode(f, a, 0);
    assert.equal(prefixBits(), 1, 'seen twice: one bucket set');
    // Only the first 8 tokens count.
    const longer = new Float32Array(FEATURE_WIDTH);
    enc.encode({ ...f, leadingTokens: [...TEMPLATES[1]!, 42, 43] }, longer, 0);
    assert.deepEqual(longer, a);
    // Two halvings later, with no more of it, the prefix no longer counts.
    for (let i = 0; i < 128; i++) enc.record(features('t', 100, 256, 0));
    enc.encode(f, a, 0);
    assert.equal(prefixBits(), 0, 'forgotten after it stopped recurring');
  });
});

describe('online-mean length predictor', () => {
  it('is the running mean per tenant and prompt bucket, shrunk toward the prior', () => {
    const p = createLengthPredictor('online-mean');
    assert.equal(p.name, 'online-mean');
    const f = features('a', 100);
    // No history: the prior (128).
    assert.ok(Math.abs(p.predict(f).mean() - 128) < 0.5);
    for (let i = 0; i < 16; i++) p.observe(f, 48, false);
    // (16 × 48 + 4 × 128) / 20 = 64, for the same bucket (64–127 prompt tokens).
    assert.ok(Math.abs((p as OnlineMeanLength).meanFor(features('a', 120)) - 64) < 1e-9);
    // A bucket the tenant has not used falls back to its overall mean; another tenant to the prior.
    assert.ok(Math.abs((p as OnlineMeanLength).meanFor(features('a', 5000)) - 64) < 1e-9);
    assert.equal((p as OnlineMeanLength).meanFor(features('b', 100)), 128);
    assert.equal(p.train(Infinity), false);
    checkDistribution(p.predict(f), f.maxTokens, 'online mean');
  });
});

describe('learned length predictor', () => {
  it('converges to the true quantiles of a known workload and beats the online mean', async () => {
    const p = await learned();
    const baseline = new OnlineMeanLength();
    const next = workload(7);
    for (let i = 0; i < 4000; i++) {
      const d = next();
      p.observe(d.f, d.tokens, d.byLength);
      baseline.observe(d.f, d.tokens);
      p.train(Infinity);
    }
    // Held-out draws: pinball loss on log length, and distance to the true quantiles.
    const test = workload(99);
    let lossLearned = 0;
    let lossMean = 0;
    let lossTruth = 0;
    const err = new Float64Array(LEVELS.length);
    const n = 1500;
    for (let i = 0; i < n; i++) {
      const d = test();
      const pred = p.predict(d.f);
      lossLearned += pinball(pred, d.tokens) / n;
      lossMean += pinball(baseline.predict(d.f), d.tokens) / n;
      lossTruth += pinball(new QuantileDistribution(LEVELS, Float64Array.from(d.truth), d.f.maxTokens), d.tokens) / n;
      for (let j = 0; j < LEVELS.length; j++) err[j]! += Math.abs(Math.log(pred.quantiles[j]! / d.truth[j]!)) / n;
    }
    assert.ok(p.ready);
    // Within 20% (in length) of the true quantile on average at every level; 12% at the median.
    for (let j = 0; j < LEVELS.length; j++) assert.ok(err[j]! < 0.2, `level ${LEVELS[j]}: mean |log error| ${err[j]!.toFixed(3)}`);
    assert.ok(err[MEDIAN]! < 0.12, `median: mean |log error| ${err[MEDIAN]!.toFixed(3)}`);
    assert.ok(lossLearned < 0.9 * lossMean, `pinball learned ${lossLearned.toFixed(4)} vs online mean ${lossMean.toFixed(4)}`);
    assert.ok(lossLearned < 1.05 * lossTruth, `pinball learned ${lossLearned.toFixed(4)} vs the true quantiles' ${lossTruth.toFixed(4)}`);
    for (const t of TENANTS) for (const prompt of [20, 150, 1000]) checkDistribution(p.predict(features(t.name, prompt)), 2048, `${t.name}/${prompt}`);
    for (const cap of [1, 2, 17, 300]) checkDistribution(p.predict(features('essayist', 500, cap)), cap, `capped at ${cap}`);
    p.dispose();
  });

  it('answers with the online mean until it has seen enough completions', async () => {
    const p = await learned({ minObservations: 64, trainEvery: 16 });
    const mirror = new OnlineMeanLength();
    const next = workload(3);
    const probe = features('chatty', 300);
    for (let i = 0; i < 63; i++) {
      const d = next();
      p.observe(d.f, d.tokens, d.byLength);
      mirror.observe(d.f, d.tokens);
      assert.equal(p.train(Infinity), false, 'no training before minObservations');
      assert.deepEqual(p.predict(probe).quantiles, mirror.predict(probe).quantiles);
    }
    assert.equal(p.ready, false);
    assert.equal(p.steps, 0);
    const d = next();
    p.observe(d.f, d.tokens, d.byLength);
    p.train(Infinity);
    assert.ok(p.ready);
    assert.ok(p.steps > 0);
    assert.notDeepEqual(p.predict(probe).quantiles, mirror.predict(probe).quantiles);
    p.dispose();
  });

  it('is deterministic: same seed and observations give the same predictions, however training is sliced', async () => {
    const whole = await learned({ seed: 5 });
    const sliced = await learned({ seed: 5 });
    const other = await learned({ seed: 6 });
    const a = workload(11);
    const b = workload(11);
    const c = workload(11);
    for (let i = 0; i < 600; i++) {
      const da = a();
      const db = b();
      const dc = c();
      whole.observe(da.f, da.tokens, da.byLength);
      whole.train(Infinity);
      sliced.observe(db.f, db.tokens, db.byLength);
      // Zero-budget slices: one gradient step per call.
      while (sliced.train(0));
      other.observe(dc.f, dc.tokens, dc.byLength);
      other.train(Infinity);
    }
    assert.equal(whole.steps, sliced.steps);
    for (const t of TENANTS) {
      const f = features(t.name, 200);
      assert.deepEqual(whole.predict(f).quantiles, sliced.predict(f).quantiles);
      assert.notDeepEqual(whole.predict(f).quantiles, other.predict(f).quantiles, 'the seed matters');
    }
    for (const p of [whole, sliced, other]) p.dispose();
  });

  it('train(budgetMs) works in bounded slices and keeps tfjs memory bounded', async () => {
    let clock = 0;
    // A clock that advances 1 ms each time it is read: the budget counts steps, not wall time.
    const p = await learned({ now: () => clock++, minObservations: 32, trainEvery: 32, stepsPerRound: 8 });
    const next = workload(4);
    for (let i = 0; i < 32; i++) {
      const d = next();
      p.observe(d.f, d.tokens, d.byLength);
    }
    assert.equal(p.train(3), true, 'a 3 ms budget leaves work of an 8-step round pending');
    assert.equal(p.steps, 3);
    assert.equal(p.train(0), true);
    assert.equal(p.steps, 4, 'a zero budget still makes one step of progress');
    assert.equal(p.train(1000), false);
    assert.equal(p.steps, 8);
    assert.equal(p.train(1000), false, 'nothing pending');
    assert.equal(p.steps, 8);
    // A server that never calls train() queues a bounded backlog.
    for (let i = 0; i < 32 * 20; i++) {
      const d = next();
      p.observe(d.f, d.tokens, d.byLength);
    }
    let calls = 0;
    while (p.train(Infinity)) calls++;
    assert.equal(calls, 0);
    assert.ok(p.steps - 8 <= 4 * 8, `backlog of ${p.steps - 8} steps`);
    const tensors = tf.memory().numTensors;
    feed(p, next, 320);
    assert.equal(tf.memory().numTensors, tensors, 'training rounds leak no tensors');
    p.dispose();
  });

  it('predicts from copied weights without tfjs', async () => {
    const p = await learned({ minObservations: 32 });
    feed(p, workload(8), 200);
    const f = features('terse', 64);
    const before = p.predict(f).quantiles;
    p.dispose();
    assert.deepEqual(p.predict(f).quantiles, before);
  });

  it('treats a completion cut off early as a lower bound on its length', async () => {
    // Two identical learners see the same history of 'chatty' requests (median ~e^4 ≈ 55 tokens
    // at this prompt length); then 800 more of the same requests end after 8 tokens by a length
    // limit. Censored, those say only "≥ 8" and must not pull the prediction down; taken as
    // exact lengths they would.
    const censored = await learned({ seed: 2 });
    const exact = await learned({ seed: 2 });
    const f = features('chatty', 148);
    const t = TENANTS[1];
    const truth = truthFor(t, 148, 2048);
    const rng = new Rng(21);
    const draw = (): number => Math.max(1, Math.round(Math.exp(t.mu + 0.4 * (Math.log(148) - 5) + t.sigma * Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next()))));
    for (let i = 0; i < 800; i++) {
      const n = draw();
      for (const p of [censored, exact]) {
        p.observe(f, n, false);
        p.train(Infinity);
      }
    }
    const medianBefore = censored.predict(f).quantile(0.5);
    assert.ok(Math.abs(Math.log(medianBefore / truth[MEDIAN]!)) < 0.2, `median ${medianBefore} vs true ${truth[MEDIAN]}`);
    for (let i = 0; i < 800; i++) {
      censored.observe(f, 8, true);
      censored.train(Infinity);
      exact.observe(f, 8, false);
      exact.train(Infinity);
    }
    const kept = censored.predict(f);
    const pulled = exact.predict(f);
    assert.ok(Math.abs(Math.log(kept.quantile(0.5) / truth[MEDIAN]!)) < 0.25, `censored: median ${kept.quantile(0.5)} vs true ${truth[MEDIAN]}`);
    assert.ok(kept.quantile(0.05) >= 8, `censored: 5% quantile ${kept.quantile(0.05)} below the censoring point`);
    assert.ok(pulled.quantile(0.25) < 0.5 * kept.quantile(0.25), `as exact lengths the lower quantiles fall (${pulled.quantile(0.25)} vs ${kept.quantile(0.25)})`);
    assert.ok(pulled.quantile(0.5) < 0.75 * kept.quantile(0.5), `as exact lengths the median falls (${pulled.quantile(0.5)} vs ${kept.quantile(0.5)})`);
    // A cap below every quantile: all the mass sits at max_tokens.
    const capped = censored.predict({ ...f, maxTokens: 8 });
    assert.deepEqual(Array.from(capped.quantiles), LEVELS.map(() => 8));
    assert.equal(capped.mean(), 8);
    censored.dispose();
    exact.dispose();
  });

  it('drives the simulator deterministically: same trace, same seed, same run', async () => {
    const trace = generateWorkload({ seed: 9, requests: 400, rate: 80, promptTokens: { mean: 100, sigma: 0.5 }, outputTokens: { mean: 40, sigma: 0.8 }, maxPromptTokens: 300, maxOutputTokens: 150 });
    const runs = [];
    for (let i = 0; i < 2; i++) {
      const lengthModel = await learned({ minObservations: 64, trainEvery: 16 });
      const r = simulate(trace, { policy: 'shadow', profile: testProfile, lengthModel });
      assert.ok(lengthModel.ready && lengthModel.steps > 0, 'the simulator trained it');
      runs.push({ r, probe: Array.from(lengthModel.predict(features('standard', 100, 150)).quantiles) });
      lengthModel.dispose();
    }
    const [a, b] = runs as [(typeof runs)[number], (typeof runs)[number]];
    assert.equal(a.r.summary.lost, 0);
    assert.deepEqual(a.r.summary, b.r.summary);
    assert.deepEqual(a.r.outcomes, b.r.outcomes);
    assert.deepEqual(a.probe, b.probe);
  });

  it('logs which TensorFlow.js backend it runs on', async () => {
    const later: string[] = [];
    const { package: pkg, backend } = await loadTf((l) => later.push(l));
    assert.equal(tfLog.length, 1, tfLog.join('\n'));
    assert.match(tfLog[0]!, /^marginal: length model on @tensorflow\/tfjs(-node-gpu)? \d+\.\d+\.\d+, backend (cpu|tensorflow)/);
    assert.ok(tfLog[0]!.includes(pkg) && tfLog[0]!.includes(`backend ${backend}`));
    // Without the native package (CI), the fallback says why in the same line.
    if (pkg === '@tensorflow/tfjs') assert.match(tfLog[0]!, /tfjs-node-gpu did not load/);
    assert.deepEqual(later, [], 'one line per process, not per caller');
  });
});
