/**
 * Expected output length, learned online per tenant and prompt-length bucket (powers of two):
 * the running mean of completed requests' output tokens, shrunk toward a prior while there are
 * few observations. The risk and rent terms of the pricing scheduler use it; requests never
 * reveal their true length to it.
 */
export class LengthEstimator {
  private readonly stats = new Map<string, { n: number; sum: number }>();

  constructor(
    private readonly prior = 128,
    private readonly priorWeight = 4,
  ) {}

  private key(tenant: string, promptTokens: number): string {
    return `${tenant}\u0000${Math.floor(Math.log2(Math.max(1, promptTokens)))}`;
  }

  estimate(tenant: string, promptTokens: number, maxTokens: number): number {
    const s = this.stats.get(this.key(tenant, promptTokens)) ?? this.stats.get(`${tenant}\u0000*`);
    const mean = s === undefined ? this.prior : (s.sum + this.prior * this.priorWeight) / (s.n + this.priorWeight);
    return Math.max(1, Math.min(maxTokens, Math.round(mean)));
  }

  observe(tenant: string, promptTokens: number, outputTokens: number): void {
    for (const k of [this.key(tenant, promptTokens), `${tenant}\u0000*`]) {
      const s = this.stats.get(k);
      if (s === undefined) this.stats.set(k, { n: 1, sum: outputTokens });
      else {
        s.n++;
        s.sum += outputTokens;
      }
    }
  }
}
