/**
 * Output-length prediction: the interface the scheduler prices risk with, and the baseline
 * predictor (an online mean per tenant and prompt-length bucket).
 *
 * The scheduler never sees a request's true length: it prices the expected KV footprint, the
 * chance of finishing before a deadline and the waste of a preemption from a predicted
 * distribution of the output length, and learns from each completed request.
 */

export interface LengthFeatures {
  tenant: string;
  promptTokens: number;
  /** The request's max_tokens cap (an upper bound, not the truth). */
  maxTokens: number;
  endpoint: 'completion' | 'chat' | 'trace';
  /** Stop strings or stop token ids beyond EOS. */
  hasStop: boolean;
  temperature: number;
  /** The prompt's first tokens (at most the first 8 are read). */
  leadingTokens: ArrayLike<number>;
}

/** Output length in tokens as quantiles at fixed levels. */
export interface LengthDistribution {
  readonly levels: readonly number[];
  /** Non-decreasing, each in [1, maxTokens]. */
  readonly quantiles: Float64Array;
  /** Expected length (≤ maxTokens). */
  mean(): number;
  /** P(length ≤ tokens): monotone, 1 at maxTokens. */
  cdf(tokens: number): number;
  quantile(p: number): number;
}

export interface LengthPredictor {
  readonly name: string;
  predict(f: LengthFeatures): LengthDistribution;
  observe(f: LengthFeatures, outputTokens: number, finishedByLength: boolean): void;
  /** Does pending training work for at most ~budgetMs; returns true while more is pending. */
  train(budgetMs: number): boolean;
}

const LEVELS = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95] as const;

/**
 * A length known in advance (a trace replayed with `knownOutputTokens`): all the mass at one
 * point.
 */
export class PointLength implements LengthDistribution {
  readonly levels = LEVELS;
  readonly quantiles: Float64Array;
  constructor(private readonly n: number) {
    this.quantiles = new Float64Array(LEVELS.length).fill(n);
  }
  mean(): number {
    return this.n;
  }
  cdf(tokens: number): number {
    return tokens >= this.n ? 1 : 0;
  }
  quantile(): number {
    return this.n;
  }
}

/**
 * An exponential length with the given mean, shifted to start at 1 and truncated at maxTokens
 * (the mass beyond it sits at maxTokens, where the request is cut off): the least committal
 * shape for a predictor that only knows a mean.
 */
export class ExponentialLength implements LengthDistribution {
  readonly levels = LEVELS;
  readonly quantiles: Float64Array;
  private readonly rate: number;
  private readonly truncatedMean: number;

  constructor(
    mean: number,
    private readonly maxTokens: number,
  ) {
    const m = Math.max(1, Math.min(mean, maxTokens));
    this.rate = 1 / Math.max(1e-9, m - 1 + 1e-9);
    this.quantiles = Float64Array.from(LEVELS, (p) => this.quantile(p));
    // E[min(1 + X, max)] for X ~ Exp(rate): 1 + (1 − e^{−rate·(max − 1)}) / rate.
    this.truncatedMean = 1 + (1 - Math.exp(-this.rate * (maxTokens - 1))) / this.rate;
  }
  mean(): number {
    return Math.min(this.maxTokens, this.truncatedMean);
  }
  cdf(tokens: number): number {
    if (tokens >= this.maxTokens) return 1;
    if (tokens < 1) return 0;
    return 1 - Math.exp(-this.rate * (tokens - 1));
  }
  quantile(p: number): number {
    if (p <= 0) return 1;
    if (p >= 1) return this.maxTokens;
    return Math.min(this.maxTokens, 1 - Math.log(1 - p) / this.rate);
  }
}

/**
 * The baseline predictor: the running mean of completed requests' output tokens per tenant and
 * prompt-length bucket (powers of two), shrunk toward a prior while there are few observations.
 */
export class OnlineMeanLength implements LengthPredictor {
  readonly name = 'online-mean';
  private readonly stats = new Map<string, { n: number; sum: number }>();

  constructor(
    private readonly prior = 128,
    private readonly priorWeight = 4,
  ) {}

  private key(tenant: string, promptTokens: number): string {
    return `${tenant}\u0000${Math.floor(Math.log2(Math.max(1, promptTokens)))}`;
  }

  meanFor(tenant: string, promptTokens: number): number {
    const s = this.stats.get(this.key(tenant, promptTokens)) ?? this.stats.get(`${tenant}\u0000*`);
    return s === undefined ? this.prior : (s.sum + this.prior * this.priorWeight) / (s.n + this.priorWeight);
  }

  predict(f: LengthFeatures): LengthDistribution {
    return new ExponentialLength(this.meanFor(f.tenant, f.promptTokens), Math.max(1, f.maxTokens));
  }

  observe(f: LengthFeatures, outputTokens: number): void {
    for (const k of [this.key(f.tenant, f.promptTokens), `${f.tenant}\u0000*`]) {
      const s = this.stats.get(k);
      if (s === undefined) this.stats.set(k, { n: 1, sum: outputTokens });
      else {
        s.n++;
        s.sum += outputTokens;
      }
    }
  }

  train(): boolean {
    return false;
  }
}

/**
 * E[L − g | L > g]: the expected number of tokens still to come after `g` have been generated,
 * from the distribution's quantile function (a midpoint rule over the upper tail).
 */
export function expectedRemaining(d: LengthDistribution, generated: number, maxTokens: number): number {
  const p0 = d.cdf(generated);
  if (p0 >= 1 - 1e-9) return Math.max(1, Math.min(1, maxTokens - generated));
  const n = 16;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const p = p0 + ((i + 0.5) / n) * (1 - p0);
    sum += Math.max(d.quantile(p), generated + 1);
  }
  return Math.max(1, Math.min(maxTokens, sum / n) - generated);
}
