/**
 * Output-length distributions as the scheduler reads them: quantiles at fixed levels plus the
 * mean, the CDF and the quantile function they imply, all capped at the request's max_tokens
 * (a completion cannot run past it, so the cap carries whatever mass lies beyond).
 */

/** The probability levels every predictor reports quantiles at. */
export const LEVELS: readonly number[] = Object.freeze([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]);

/** Output length in tokens, as quantiles at fixed levels (LEVELS, e.g. 0.05 … 0.95). */
export interface LengthDistribution {
  readonly levels: readonly number[];
  /** Non-decreasing, each in [1, maxTokens]. */
  readonly quantiles: Float64Array;
  /** Expected length (≤ maxTokens). */
  mean(): number;
  /** P(length ≤ tokens): monotone, 0 below 1 token, 1 at maxTokens. */
  cdf(tokens: number): number;
  quantile(p: number): number;
}

/** (b − a) / ln(b / a): the mean of a quantity that moves geometrically from a to b. */
function logMean(a: number, b: number): number {
  if (Math.abs(b - a) <= 1e-12 * a) return a;
  return (b - a) / Math.log(b / a);
}

/**
 * The distribution whose quantile function passes through the given quantiles and is
 * log-linear between them (lengths spread over orders of magnitude, so their log is the scale
 * on which interpolation is fair). Beyond the outer levels it extends the slope of the nearest
 * segment, down to at least 1 token at p = 0 and up to at most maxTokens at p = 1; quantiles
 * that reach maxTokens make an atom there, the requests the cap cuts off.
 */
export class QuantileDistribution implements LengthDistribution {
  /** Length at p = 0 and p = 1: the ends of the extrapolated tails. */
  private readonly lo: number;
  private readonly hi: number;

  /**
   * `quantiles` (owned from here on) must be non-decreasing, in [1, maxTokens], one per level;
   * levels strictly increasing inside (0, 1), at least two of them.
   */
  constructor(
    readonly levels: readonly number[],
    readonly quantiles: Float64Array,
    readonly maxTokens: number,
  ) {
    const n = levels.length;
    const q0 = quantiles[0]!;
    const q1 = quantiles[1]!;
    const qn = quantiles[n - 1]!;
    const qm = quantiles[n - 2]!;
    const l0 = levels[0]!;
    const l1 = levels[1]!;
    const ln = levels[n - 1]!;
    const lm = levels[n - 2]!;
    const slopeLo = Math.log(q1 / q0) / (l1 - l0);
    const slopeHi = Math.log(qn / qm) / (ln - lm);
    this.lo = Math.max(1, q0 * Math.exp(-slopeLo * l0));
    this.hi = Math.min(maxTokens, qn * Math.exp(slopeHi * (1 - ln)));
  }

  /** Knot k of the quantile function: (0, lo), (levels[i], quantiles[i]) …, (1, hi). */
  private p(k: number): number {
    return k === 0 ? 0 : k > this.levels.length ? 1 : this.levels[k - 1]!;
  }

  private x(k: number): number {
    return k === 0 ? this.lo : k > this.levels.length ? this.hi : this.quantiles[k - 1]!;
  }

  mean(): number {
    let m = 0;
    for (let k = 0; k <= this.levels.length; k++) m += (this.p(k + 1) - this.p(k)) * logMean(this.x(k), this.x(k + 1));
    return Math.min(this.maxTokens, m);
  }

  cdf(tokens: number): number {
    if (!(tokens >= this.lo)) return 0;
    if (tokens >= this.maxTokens || tokens >= this.hi) return 1;
    // The last knot at or below `tokens`: where knots repeat (an atom), the CDF is the top of the jump.
    let k = this.levels.length;
    while (k > 0 && this.x(k) > tokens) k--;
    const x0 = this.x(k);
    const x1 = this.x(k + 1);
    const p0 = this.p(k);
    return p0 + ((this.p(k + 1) - p0) * Math.log(tokens / x0)) / Math.log(x1 / x0);
  }

  quantile(p: number): number {
    if (!(p > 0)) return this.lo;
    if (p >= 1) return this.hi;
    let k = 0;
    while (this.p(k + 1) <= p) k++;
    const p0 = this.p(k);
    const x0 = this.x(k);
    return x0 * Math.pow(this.x(k + 1) / x0, (p - p0) / (this.p(k + 1) - p0));
  }
}

/**
 * 1 + an exponential of mean m − 1, capped at maxTokens: the memoryless guess that goes with
 * knowing only a mean (the online-mean baseline). Its median is ~0.69 of the mean.
 */
export class ShiftedExponentialDistribution implements LengthDistribution {
  readonly quantiles: Float64Array;
  /** Mean of the exponential part (m − 1); 0 is a point mass at 1 token. */
  private readonly scale: number;

  constructor(
    readonly levels: readonly number[],
    mean: number,
    readonly maxTokens: number,
  ) {
    this.scale = Math.max(0, mean - 1);
    this.quantiles = new Float64Array(levels.length);
    for (let i = 0; i < levels.length; i++) this.quantiles[i] = this.quantile(levels[i]!);
  }

  mean(): number {
    if (this.scale === 0) return 1;
    return 1 + this.scale * -Math.expm1(-(this.maxTokens - 1) / this.scale);
  }

  cdf(tokens: number): number {
    if (!(tokens >= 1)) return 0;
    if (tokens >= this.maxTokens || this.scale === 0) return 1;
    return -Math.expm1(-(tokens - 1) / this.scale);
  }

  quantile(p: number): number {
    if (!(p > 0)) return 1;
    if (p >= 1) return this.maxTokens;
    return Math.min(this.maxTokens, 1 - this.scale * Math.log1p(-p));
  }
}
