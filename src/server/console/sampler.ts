import type { RequestRecord } from '../journal.js';
import type { MetricsTotals } from '../metrics.js';
import type { MarketView, TenantState } from './market.js';

/** One second of the market, as the console charts it (rates per second, latencies in ms). */
export interface Sample {
  /** Unix time, seconds. */
  t: number;
  priceToken: number;
  priceKv: number;
  reserveToken: number;
  reserveKv: number;
  utilTokens: number;
  utilKv: number;
  running: number;
  waiting: number;
  swapped: number;
  generationTps: number;
  promptTps: number;
  admittedPs: number;
  preemptedPs: number;
  swapsPs: number;
  /** 429s (and 402s) per second, by reason code. */
  rejectedPs: Record<string, number>;
  /** Prefix-cache hits over queried prompt tokens in the latency window; null when nothing was queried. */
  hitRate: number | null;
  /** p50, p90, p99 over requests finished in the latency window; null when none. */
  ttftMs: [number, number, number] | null;
  tpotMs: [number, number, number] | null;
}

/** The congestion curves sampled over utilization 0–1, and where the market stands on them. */
export interface CurvePoints {
  u: number[];
  token: number[];
  kv: number[];
}

export interface Tick {
  sample: Sample;
  curves: CurvePoints;
  tenants: TenantState[];
  /** Requests finished since the previous tick, oldest first. */
  requests: RequestRecord[];
}

export interface SamplerOptions {
  /** Samples kept (one a second): the charts' longest window. */
  history?: number;
  /** Seconds of finished requests behind the latency percentiles and the hit rate. */
  windowSeconds?: number;
  /** Recent requests kept for the requests table. */
  recentRequests?: number;
  clock?: () => number;
}

const CURVE_POINTS = 41;

/**
 * Samples the market once a second into a fixed history (15 minutes by default) and keeps the
 * most recent requests; subscribers get each tick. Counters become per-second rates from the
 * difference between consecutive samples.
 */
export class Sampler {
  readonly history: Sample[] = [];
  readonly recent: RequestRecord[] = [];
  private readonly maxHistory: number;
  private readonly windowMs: number;
  private readonly maxRecent: number;
  private readonly clock: () => number;
  private readonly listeners = new Set<(t: Tick) => void>();
  private fresh: RequestRecord[] = [];
  /** Finished requests' (time, ttft, tpot) within the window, oldest first. */
  private latencies: Array<{ at: number; ttft: number | null; tpot: number | null }> = [];
  private previous: { at: number; totals: MetricsTotals } | undefined;
  /** Prefix-cache totals one window ago, for the windowed hit rate. */
  private readonly prefixMarks: Array<{ at: number; queried: number; hit: number }> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly market: MarketView,
    opts: SamplerOptions = {},
  ) {
    this.maxHistory = opts.history ?? 900;
    this.windowMs = (opts.windowSeconds ?? 30) * 1000;
    this.maxRecent = opts.recentRequests ?? 100;
    this.clock = opts.clock ?? Date.now;
  }

  start(intervalMs = 1000): void {
    if (this.timer !== undefined) return;
    this.tick();
    this.timer = setInterval(() => this.tick(), intervalMs);
    // The console must never keep a draining server alive.
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  subscribe(fn: (t: Tick) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** A finished request, from the journal. */
  record(r: RequestRecord): void {
    this.recent.push(r);
    if (this.recent.length > this.maxRecent) this.recent.splice(0, this.recent.length - this.maxRecent);
    this.fresh.push(r);
    if (this.fresh.length > this.maxRecent) this.fresh.splice(0, this.fresh.length - this.maxRecent);
    if (r.outcome === 'completed' && (r.ttft_ms != null || r.tpot_ms != null)) {
      this.latencies.push({ at: r.time, ttft: r.ttft_ms ?? null, tpot: r.tpot_ms ?? null });
    }
  }

  curves(): CurvePoints {
    const u: number[] = [];
    const token: number[] = [];
    const kv: number[] = [];
    for (let i = 0; i < CURVE_POINTS; i++) {
      const x = i / (CURVE_POINTS - 1);
      u.push(x);
      token.push(finite(this.market.reserveTokenPrice(x)));
      kv.push(finite(this.market.reserveKvPrice(x)));
    }
    return { u, token, kv };
  }

  /** Takes one sample now and tells the subscribers. */
  tick(): Tick {
    const at = this.clock();
    const snap = this.market.snapshot();
    const totals = this.market.totals();
    const prev = this.previous;
    const dt = prev === undefined ? 0 : (at - prev.at) / 1000;
    const rate = (now: number, before: number | undefined) => (dt > 0 ? Math.max(0, now - (before ?? 0)) / dt : 0);
    const rejectedPs: Record<string, number> = {};
    for (const [reason, n] of Object.entries(totals.rejected)) rejectedPs[reason] = rate(n, prev?.totals.rejected[reason]);

    const cutoff = at - this.windowMs;
    let drop = 0;
    while (drop < this.latencies.length && (this.latencies[drop] as { at: number }).at < cutoff) drop++;
    if (drop > 0) this.latencies = this.latencies.slice(drop);
    this.prefixMarks.push({ at, queried: totals.prefixQueriedTokens, hit: totals.prefixHitTokens });
    while (this.prefixMarks.length > 1 && (this.prefixMarks[1] as { at: number }).at <= cutoff) this.prefixMarks.shift();
    const mark = this.prefixMarks[0] as { queried: number; hit: number };
    const queried = totals.prefixQueriedTokens - mark.queried;

    const sample: Sample = {
      t: at / 1000,
      priceToken: finite(snap.priceToken),
      priceKv: finite(snap.priceKv),
      reserveToken: finite(snap.reserveToken),
      reserveKv: finite(snap.reserveKv),
      utilTokens: snap.utilTokens,
      utilKv: snap.utilKv,
      running: snap.running,
      waiting: snap.waiting,
      swapped: snap.swapped,
      generationTps: rate(totals.generationTokens, prev?.totals.generationTokens),
      promptTps: rate(totals.promptTokens, prev?.totals.promptTokens),
      admittedPs: rate(totals.admitted, prev?.totals.admitted),
      preemptedPs: rate(totals.preemptions, prev?.totals.preemptions),
      swapsPs: rate(totals.swaps, prev?.totals.swaps),
      rejectedPs,
      hitRate: queried > 0 ? (totals.prefixHitTokens - mark.hit) / queried : null,
      ttftMs: percentiles(this.latencies.map((l) => l.ttft)),
      tpotMs: percentiles(this.latencies.map((l) => l.tpot)),
    };
    this.previous = { at, totals };
    this.history.push(sample);
    if (this.history.length > this.maxHistory) this.history.splice(0, this.history.length - this.maxHistory);
    const tick: Tick = { sample, curves: this.curves(), tenants: this.market.tenants(), requests: this.fresh };
    this.fresh = [];
    for (const fn of this.listeners) fn(tick);
    return tick;
  }
}

/** Nearest-rank p50, p90, p99 of the non-null values; null when there are none. */
export function percentiles(values: ReadonlyArray<number | null>): [number, number, number] | null {
  const v = values.filter((x): x is number => x !== null && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const at = (p: number) => v[Math.min(v.length - 1, Math.max(0, Math.ceil(p * v.length) - 1))] as number;
  return [at(0.5), at(0.9), at(0.99)];
}

/** JSON has no Infinity: an unbounded price is shown as the largest finite one. */
function finite(x: number): number {
  return Number.isFinite(x) ? x : x > 0 ? Number.MAX_VALUE : 0;
}
