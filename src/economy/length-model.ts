/**
 * Output-length predictors for the scheduler's risk and rent terms: each turns what is known of
 * a request at arrival into a distribution of its output length, and learns from completed
 * requests. Two behind one interface: `online-mean` (a running mean per tenant and prompt-length
 * bucket, the baseline) and `learned` (a small quantile-regression network trained online with
 * TensorFlow.js, evaluated in plain TypeScript).
 */
import type * as tfjs from '@tensorflow/tfjs';
import { Rng } from '../sampling/rng.js';
import { LEVELS, QuantileDistribution, ShiftedExponentialDistribution, type LengthDistribution } from './length-distribution.js';
import { FEATURE_WIDTH, LengthFeatureEncoder, type LengthFeatures } from './length-features.js';
import { DenseStack } from './mlp.js';
import { loadedTf, loadTf, type Tf } from './tfjs.js';

export { LEVELS, type LengthDistribution } from './length-distribution.js';
export { LEADING_TOKENS, type LengthFeatures } from './length-features.js';

export interface LengthPredictor {
  /** 'learned' | 'online-mean' */
  readonly name: string;
  predict(f: LengthFeatures): LengthDistribution;
  /** A completed request: `outputTokens` generated; `finishedByLength` when max_tokens cut it off. */
  observe(f: LengthFeatures, outputTokens: number, finishedByLength: boolean): void;
  /** Does pending training work for at most ~budgetMs; returns true while more is pending. */
  train(budgetMs: number): boolean;
}

// ---------------------------------------------------------------------------------------------
// The baseline.

export interface OnlineMeanOptions {
  /** The guess before a tenant has any history, in tokens. Default 128. */
  prior?: number;
  /** How many observations the prior counts as. Default 4. */
  priorWeight?: number;
}

interface MeanStat {
  n: number;
  sum: number;
}

/** floor(log2(promptTokens)) has at most this many values for any safe integer. */
const PROMPT_BUCKETS = 54;

/**
 * The running mean of output tokens per tenant and prompt-length bucket (powers of two), shrunk
 * toward a prior while there are few observations, and the tenant's mean for a bucket it has
 * not seen yet; its distribution is 1 + an exponential with that mean, capped at max_tokens.
 * This is the estimator the scheduler used before the learned model, kept as the baseline.
 */
export class OnlineMeanLength implements LengthPredictor {
  readonly name = 'online-mean';
  private readonly prior: number;
  private readonly priorWeight: number;
  /** Per tenant: the tenant-wide stat, then one per prompt bucket (created on first use). */
  private readonly tenants = new Map<string, { all: MeanStat; buckets: (MeanStat | undefined)[] }>();

  constructor(o: OnlineMeanOptions = {}) {
    this.prior = o.prior ?? 128;
    this.priorWeight = o.priorWeight ?? 4;
    if (!(this.prior >= 1) || !Number.isFinite(this.prior)) throw new RangeError(`online-mean prior must be a number >= 1 (got ${this.prior})`);
    if (!(this.priorWeight >= 0) || !Number.isFinite(this.priorWeight)) throw new RangeError(`online-mean priorWeight must be >= 0 (got ${this.priorWeight})`);
  }

  private static bucket(promptTokens: number): number {
    return Math.min(PROMPT_BUCKETS - 1, Math.floor(Math.log2(Math.max(1, promptTokens))));
  }

  /** The shrunk mean for these features, in tokens, before the cap. */
  meanFor(f: LengthFeatures): number {
    const t = this.tenants.get(f.tenant);
    const s = t === undefined ? undefined : (t.buckets[OnlineMeanLength.bucket(f.promptTokens)] ?? t.all);
    return s === undefined ? this.prior : (s.sum + this.prior * this.priorWeight) / (s.n + this.priorWeight);
  }

  predict(f: LengthFeatures): LengthDistribution {
    return new ShiftedExponentialDistribution(LEVELS, this.meanFor(f), Math.max(1, f.maxTokens));
  }

  observe(f: LengthFeatures, outputTokens: number): void {
    let t = this.tenants.get(f.tenant);
    if (t === undefined) {
      t = { all: { n: 0, sum: 0 }, buckets: [] };
      this.tenants.set(f.tenant, t);
    }
    const b = OnlineMeanLength.bucket(f.promptTokens);
    const s = (t.buckets[b] ??= { n: 0, sum: 0 });
    s.n++;
    s.sum += outputTokens;
    t.all.n++;
    t.all.sum += outputTokens;
  }

  train(): boolean {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// The learned model.

export interface LearnedLengthOptions {
  /** Seeds the weight initializers and the minibatch draws. Default 1. */
  seed?: number;
  /** Width of each of the two hidden layers. Default 32. */
  hidden?: number;
  /** Recent completions kept for training (a ring). Default 4096. */
  bufferSize?: number;
  /** Completions seen before the model's own predictions replace the online mean's. Default 128. */
  minObservations?: number;
  /** New completions that make a training round pending. Default 32. */
  trainEvery?: number;
  /** Gradient steps in a round. Default 8. */
  stepsPerRound?: number;
  /** Minibatch size. Default 64. */
  batchSize?: number;
  /** Adam's step size. Default 0.01. */
  learningRate?: number;
  /**
   * Weight of the previous weights when a round's are copied out for prediction (an exponential
   * moving average over rounds; 0 = the latest round's weights alone). Default 0.9.
   */
  averaging?: number;
  /** The baseline it falls back on (and keeps learning alongside). */
  onlineMean?: OnlineMeanOptions;
  /** Clock for train()'s budget, in ms. Default performance.now. */
  now?: () => number;
  /** Where the one line naming the TensorFlow.js backend goes. Default stderr. */
  log?: (line: string) => void;
}

/** Rounds that may queue up unserved before older ones are dropped: bounds a server that never trains. */
const MAX_PENDING_ROUNDS = 4;

interface Settings {
  seed: number;
  hidden: number;
  bufferSize: number;
  minObservations: number;
  trainEvery: number;
  stepsPerRound: number;
  batchSize: number;
  learningRate: number;
  averaging: number;
  now: () => number;
}

function settings(o: LearnedLengthOptions): Settings {
  const s: Settings = {
    seed: o.seed ?? 1,
    hidden: o.hidden ?? 32,
    bufferSize: o.bufferSize ?? 4096,
    minObservations: o.minObservations ?? 128,
    trainEvery: o.trainEvery ?? 32,
    stepsPerRound: o.stepsPerRound ?? 8,
    batchSize: o.batchSize ?? 64,
    learningRate: o.learningRate ?? 0.01,
    averaging: o.averaging ?? 0.9,
    now: o.now ?? (() => performance.now()),
  };
  const posInt = (k: keyof Settings): void => {
    const v = s[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new RangeError(`learned length model: ${k} must be a positive integer (got ${String(v)})`);
  };
  for (const k of ['hidden', 'bufferSize', 'minObservations', 'trainEvery', 'stepsPerRound', 'batchSize'] as const) posInt(k);
  if (!Number.isSafeInteger(s.seed)) throw new RangeError(`learned length model: seed must be an integer (got ${s.seed})`);
  if (!(s.learningRate > 0) || !Number.isFinite(s.learningRate)) throw new RangeError(`learned length model: learningRate must be a positive number (got ${s.learningRate})`);
  if (!(s.averaging >= 0 && s.averaging < 1)) throw new RangeError(`learned length model: averaging must be in [0, 1) (got ${s.averaging})`);
  return s;
}

/**
 * A small MLP (features → 2 × ReLU hidden → one output per level) that predicts quantiles of
 * log output length, trained with pinball loss on a ring of recent completions.
 *
 * - Monotone by construction: output 0 is the lowest quantile, each next one adds a softplus.
 * - Censoring: a request cut off by max_tokens says only that its length is ≥ max_tokens, so it
 *   pulls up the quantiles below it and never pulls any down (the upper half of the pinball
 *   loss only). Predictions are capped at max_tokens anyway.
 * - Training is online and bounded: every `trainEvery` completions queue a round of
 *   `stepsPerRound` Adam steps on minibatches drawn (seeded) from the ring; train(budgetMs) runs
 *   queued steps one at a time until the budget is spent, and after each round the weights are
 *   copied out into plain Float32Arrays, from which predict() computes in TypeScript without
 *   touching tfjs. The result depends only on the order of observe and train calls, never on
 *   how a round is sliced.
 * - Before `minObservations` completions and a first round, it answers with the online mean's
 *   prediction (which it keeps learning alongside).
 */
export class LearnedLength implements LengthPredictor {
  readonly name = 'learned';
  private readonly s: Settings;
  private readonly fallback: OnlineMeanLength;
  private readonly net: DenseStack;
  private readonly encoder = new LengthFeatureEncoder();
  private readonly input = new Float32Array(FEATURE_WIDTH);
  private readonly output: Float64Array;

  // The ring of recent completions.
  private readonly features: Float32Array;
  private readonly target: Float32Array;
  private readonly censored: Float32Array;
  private count = 0;
  private head = 0;
  private seen = 0;
  private sinceRound = 0;

  // Training state.
  private pendingSteps = 0;
  private stepsSinceCopy = 0;
  private fitted = false;
  private readonly rng: Rng;
  private readonly batchX: Float32Array;
  private readonly batchY: Float32Array;
  /** 1 for a completion that ended on its own, 0 for one max_tokens cut off. */
  private readonly batchExact: Float32Array;
  private readonly variables: tfjs.Variable[];
  private readonly optimizer: tfjs.Optimizer;
  private readonly levelsRow: tfjs.Tensor;
  private readonly oneMinusLevelsRow: tfjs.Tensor;
  private readonly cumulative: tfjs.Tensor;
  private outputBiasSet = false;

  /** Gradient steps taken since construction (for tests and benchmarks). */
  steps = 0;
  /** Milliseconds spent inside train() (for benchmarks). */
  trainMs = 0;

  /** Use createLengthPredictor('learned'), which loads TensorFlow.js first. */
  constructor(
    private readonly tf: Tf,
    o: LearnedLengthOptions = {},
  ) {
    this.s = settings(o);
    this.fallback = new OnlineMeanLength(o.onlineMean);
    const Q = LEVELS.length;
    const H = this.s.hidden;
    this.net = new DenseStack([FEATURE_WIDTH, H, H, Q]);
    this.output = new Float64Array(Q);
    this.features = new Float32Array(this.s.bufferSize * FEATURE_WIDTH);
    this.target = new Float32Array(this.s.bufferSize);
    this.censored = new Float32Array(this.s.bufferSize);
    this.rng = new Rng(this.s.seed);
    this.batchX = new Float32Array(this.s.batchSize * FEATURE_WIDTH);
    this.batchY = new Float32Array(this.s.batchSize);
    this.batchExact = new Float32Array(this.s.batchSize);

    // Seeded initializers, one seed per layer, so that the same seed gives the same network.
    const widths = this.net.widths;
    this.variables = [];
    for (let l = 0; l + 1 < widths.length; l++) {
      const init = tf.initializers.heNormal({ seed: this.s.seed * 7919 + l });
      const kernel = tf.tidy(() => {
        const k = init.apply([widths[l]!, widths[l + 1]!]);
        // A small last layer starts every input near the data's overall quantiles (the bias).
        return l + 2 === widths.length ? k.mul(0.1) : k;
      });
      this.variables.push(tf.variable(kernel, true), tf.variable(tf.zeros([widths[l + 1]!]), true));
      kernel.dispose();
    }
    this.optimizer = tf.train.adam(this.s.learningRate);
    this.levelsRow = tf.tensor2d([LEVELS as number[]], [1, Q]);
    this.oneMinusLevelsRow = tf.tensor2d([LEVELS.map((l) => 1 - l)], [1, Q]);
    // increments × C gives the running sums: column j adds increments 1..j (increment i is row i − 1).
    const c = new Float32Array((Q - 1) * Q);
    for (let i = 0; i < Q - 1; i++) for (let j = i + 1; j < Q; j++) c[i * Q + j] = 1;
    this.cumulative = tf.tensor2d(c, [Q - 1, Q]);
  }

  /** True once predictions come from the network rather than the online mean. */
  get ready(): boolean {
    return this.fitted;
  }

  /** Completions observed so far. */
  get observed(): number {
    return this.seen;
  }

  predict(f: LengthFeatures): LengthDistribution {
    if (!this.fitted) return this.fallback.predict(f);
    this.encoder.encode(f, this.input, 0);
    const z = this.output;
    this.net.forward(this.input, z);
    const cap = Math.max(1, f.maxTokens);
    const q = new Float64Array(z.length);
    let u = z[0]!;
    for (let j = 0; j < z.length; j++) {
      if (j > 0) u += softplus(z[j]!);
      // Capping each running sum keeps the quantiles non-decreasing and inside [1, cap].
      q[j] = Math.min(cap, Math.max(1, Math.exp(u)));
    }
    if (!Number.isFinite(u)) return this.fallback.predict(f);
    return new QuantileDistribution(LEVELS, q, cap);
  }

  observe(f: LengthFeatures, outputTokens: number, finishedByLength: boolean): void {
    this.fallback.observe(f, outputTokens);
    const slot = this.head;
    this.encoder.encode(f, this.features, slot * FEATURE_WIDTH);
    this.encoder.record(f);
    this.target[slot] = Math.log(Math.max(1, outputTokens));
    this.censored[slot] = finishedByLength ? 1 : 0;
    this.head = (slot + 1) % this.s.bufferSize;
    if (this.count < this.s.bufferSize) this.count++;
    this.seen++;
    this.sinceRound++;
    if (this.seen >= this.s.minObservations && this.sinceRound >= this.s.trainEvery) {
      this.sinceRound = 0;
      this.pendingSteps = Math.min(this.pendingSteps + this.s.stepsPerRound, MAX_PENDING_ROUNDS * this.s.stepsPerRound);
    }
  }

  train(budgetMs: number): boolean {
    if (this.pendingSteps === 0) return false;
    const start = this.s.now();
    do {
      this.step();
      this.pendingSteps--;
      if (++this.stepsSinceCopy >= this.s.stepsPerRound || this.pendingSteps === 0) this.copyWeights();
    } while (this.pendingSteps > 0 && this.s.now() - start < budgetMs);
    this.trainMs += this.s.now() - start;
    return this.pendingSteps > 0;
  }

  /** Frees the tfjs tensors. predict() keeps answering from the copied-out weights; observe() and train() must not be called again. */
  dispose(): void {
    for (const v of this.variables) v.dispose();
    this.optimizer.dispose();
    this.levelsRow.dispose();
    this.oneMinusLevelsRow.dispose();
    this.cumulative.dispose();
  }

  /**
   * Before the first step, the output bias is set to the ring's empirical log quantiles (as
   * first value and softplus⁻¹ increments), so the network starts from the unconditional
   * distribution and learns only how features move it.
   */
  private initOutputBias(): void {
    const n = this.count;
    const sorted = Float64Array.from(this.target.subarray(0, n)).sort();
    const bias = new Float32Array(LEVELS.length);
    let prev = 0;
    for (let j = 0; j < LEVELS.length; j++) {
      const v = sorted[Math.min(n - 1, Math.floor(LEVELS[j]! * n))]!;
      bias[j] = j === 0 ? v : inverseSoftplus(Math.max(0.01, v - prev));
      prev = j === 0 ? v : prev + Math.max(0.01, v - prev);
    }
    const t = this.tf.tensor1d(bias);
    this.variables[this.variables.length - 1]!.assign(t);
    t.dispose();
    this.outputBiasSet = true;
  }

  private step(): void {
    const tf = this.tf;
    if (!this.outputBiasSet) this.initOutputBias();
    const B = Math.min(this.s.batchSize, this.count);
    for (let i = 0; i < B; i++) {
      const k = this.rng.nextUint32() % this.count;
      this.batchX.set(this.features.subarray(k * FEATURE_WIDTH, (k + 1) * FEATURE_WIDTH), i * FEATURE_WIDTH);
      this.batchY[i] = this.target[k]!;
      this.batchExact[i] = 1 - this.censored[k]!;
    }
    const Q = LEVELS.length;
    const vars = this.variables;
    tf.tidy(() => {
      const x = tf.tensor2d(this.batchX.slice(0, B * FEATURE_WIDTH), [B, FEATURE_WIDTH]);
      const y = tf.tensor2d(this.batchY.slice(0, B), [B, 1]);
      const exact = tf.tensor2d(this.batchExact.slice(0, B), [B, 1]);
      this.optimizer.minimize(
        () => {
          let h: tfjs.Tensor2D = x;
          for (let l = 0; l < vars.length; l += 2) {
            h = tf.add(tf.matMul(h, vars[l] as tfjs.Tensor2D), vars[l + 1]!);
            if (l + 2 < vars.length) h = tf.relu(h);
          }
          const increments = tf.matMul(tf.softplus(tf.slice(h, [0, 1], [B, Q - 1])), this.cumulative as tfjs.Tensor2D);
          const quantiles = tf.add(tf.slice(h, [0, 0], [B, 1]), increments);
          const diff = tf.sub(y, quantiles); // > 0: the quantile is below the observation
          // Pinball τ·(d)⁺ + (1 − τ)·(−d)⁺; a censored observation keeps only the first half.
          const under = tf.mul(tf.relu(diff), this.levelsRow);
          const over = tf.mul(tf.mul(tf.relu(tf.neg(diff)), this.oneMinusLevelsRow), exact);
          return tf.mean(tf.add(under, over)) as tfjs.Scalar;
        },
        false,
        vars,
      );
    });
    this.steps++;
  }

  /**
   * Copies the trained weights into the network predict() evaluates, as an exponential moving
   * average over rounds: single small-batch rounds jitter the quantiles by several percent, and
   * averaging the iterates (Polyak–Ruppert) removes most of that at no training cost.
   */
  private copyWeights(): void {
    const keep = this.fitted ? this.s.averaging : 0;
    for (let v = 0; v < this.variables.length; v++) {
      const target = (v % 2 === 0 ? this.net.kernels : this.net.biases)[v >> 1]!;
      const w = this.variables[v]!.dataSync() as Float32Array;
      for (let i = 0; i < target.length; i++) target[i] = keep * target[i]! + (1 - keep) * w[i]!;
    }
    this.stepsSinceCopy = 0;
    this.fitted = true;
  }
}

function softplus(v: number): number {
  return v > 30 ? v : Math.log1p(Math.exp(v));
}

function inverseSoftplus(v: number): number {
  return v > 30 ? v : Math.log(Math.expm1(v));
}

// ---------------------------------------------------------------------------------------------

/**
 * The scheduler's output-length predictor. 'learned' loads TensorFlow.js first (one log line
 * saying which backend), so it is asynchronous; 'online-mean' is not.
 */
/** Settings of either kind: `onlineMean` for the baseline (alone or as the learned model's fallback), the rest for the learned model. */
export type LengthPredictorOptions = LearnedLengthOptions;

export function createLengthPredictor(kind: 'online-mean', opts?: LengthPredictorOptions): LengthPredictor;
export function createLengthPredictor(kind: 'learned', opts?: LengthPredictorOptions): Promise<LengthPredictor>;
export function createLengthPredictor(kind: 'learned' | 'online-mean', opts?: LengthPredictorOptions): Promise<LengthPredictor> | LengthPredictor;
export function createLengthPredictor(kind: 'learned' | 'online-mean', opts: LengthPredictorOptions = {}): Promise<LengthPredictor> | LengthPredictor {
  if (kind === 'online-mean') return new OnlineMeanLength(opts.onlineMean);
  if (kind !== 'learned') throw new RangeError(`unknown length predictor ${JSON.stringify(kind)} (expected learned or online-mean)`);
  return loadTf(opts.log).then(({ tf }) => new LearnedLength(tf, opts));
}

export type LengthModelKind = 'learned' | 'online-mean';
export const LENGTH_MODELS: readonly LengthModelKind[] = ['learned', 'online-mean'];

/**
 * A fresh predictor, synchronously: for 'learned', TensorFlow.js must already be loaded (await
 * loadTf() first). The simulator builds one per run, so that a run's predictions depend on
 * that run alone.
 */
export function newLengthPredictor(kind: LengthModelKind, opts: LengthPredictorOptions = {}): LengthPredictor {
  if (kind === 'online-mean') return new OnlineMeanLength(opts.onlineMean);
  const loaded = loadedTf();
  if (loaded === undefined) throw new Error("the learned length model needs TensorFlow.js loaded first (await loadTf())");
  return new LearnedLength(loaded.tf, opts);
}
