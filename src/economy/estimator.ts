/**
 * What the scheduler needs of output-length distributions beyond the predictors
 * (`length-model.ts`): a length known in advance, and the expected remainder of an answer
 * already under way.
 */
import { LEVELS, type LengthDistribution } from './length-distribution.js';

/** A length known in advance (a trace replayed with `knownOutputTokens`): all the mass at one point. */
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
