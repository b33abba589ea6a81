import type { CachedBlockInfo, EvictionPolicy } from '../../kv/block-manager.js';
import { Heap } from '../deque.js';
import type { Policy, SchedulerView } from '../policy.js';
import type { SchedRequest } from '../request.js';
import { earlier } from './fcfs.js';

/** Tuning of the pricing scheduler; every field has a default. */
export interface ShadowOptions {
  /** Waiting requests priced per step (the best by value density); the rest wait their turn. */
  candidates?: number;
  /** A preemption must gain this much more than the victim loses (no thrashing). */
  hysteresis?: number;
  /** Seconds ahead over which a cached block's reuse is expected (its keep-value horizon). */
  reuseHorizon?: number;
  /** Latency budget assumed for streams without an SLO or deadline, seconds. */
  defaultHorizon?: number;
}

const logistic = (x: number) => 1 / (1 + Math.exp(x));

/**
 * The pricing scheduler (DESIGN.md §1–2). Each step, at the shadow prices the curves set from
 * utilization — p_tok per batched token, p_kv per KV block-second — a waiting request's expected
 * surplus is
 *
 *   V·P(meets SLO) − (uncached prompt + expected output)·p_tok − KV rent over its lifetime
 *     − latency externality (the step time it adds × the others' value of time)
 *     − risk (work wasted if it misses its SLO anyway, or is preempted and recomputes)
 *
 * and requests with non-negative surplus are admitted in order of surplus per KV block (a
 * knapsack greedy). A request that can never clear — its SLO or deadline has passed, or its
 * value is below the cost at idle prices — leaves with a quote. When memory is short the
 * victim is the running stream with the least continuation surplus per block held, counting
 * the recompute its preemption wastes, and only when the beneficiary gains more than that
 * (times 1 + hysteresis). Cached blocks are kept by keep-value (expected reuse × prefill saved
 * × p_tok) against rent, not by recency.
 */
export class ShadowPolicy implements Policy, EvictionPolicy {
  readonly name = 'shadow';
  readonly eviction: EvictionPolicy = this;
  private view!: SchedulerView;
  private readonly opts: Required<ShadowOptions>;
  /** Waiting requests by value per KV block needed: a price-free order for choosing whom to price. */
  private readonly byDensity = new Heap<SchedRequest>((a, b) => a.score > b.score || (a.score === b.score && earlier(a, b)));
  /** Waiting requests by the time past which they can never meet their SLO or deadline. */
  private readonly byExpiry = new Heap<{ r: SchedRequest; at: number; epoch: number }>((a, b) => a.at < b.at);
  private live = 0;
  /** Σ over running streams of value per second of delay: what one more second of step time costs them. */
  private valueOfTime = 0;
  private minStepSeconds = Infinity;
  private readonly picked: SchedRequest[] = [];
  private readonly surplus = new Map<SchedRequest, number>();

  constructor(opts: ShadowOptions = {}) {
    this.opts = {
      candidates: opts.candidates ?? 16,
      hysteresis: opts.hysteresis ?? 0.25,
      reuseHorizon: opts.reuseHorizon ?? 30,
      defaultHorizon: opts.defaultHorizon ?? 60,
    };
  }

  attach(view: SchedulerView): void {
    this.view = view;
  }

  // --- valuation -------------------------------------------------------------------------

  /** The value of `r`'s completion if it meets its SLO. */
  value(r: SchedRequest): number {
    return r.valueAt(r.expectedOutput);
  }

  /** Seconds of latency budget: deadline, else TTFT + TPOT × length, else the default horizon. */
  private horizon(r: SchedRequest): number {
    const s = r.spec;
    if (s.deadlineMs !== undefined) return s.deadlineMs / 1000;
    if (s.slo?.ttftMs !== undefined || s.slo?.tpotMs !== undefined) {
      return ((s.slo.ttftMs ?? 0) + (s.slo.tpotMs ?? 0) * r.expectedOutput) / 1000 || this.opts.defaultHorizon;
    }
    return this.opts.defaultHorizon;
  }

  /** Probability-like factor that `r`, started now with `uncached` prompt tokens left, meets its SLO. */
  private pMeet(r: SchedRequest, uncached: number): number {
    const v = this.view;
    const s = r.spec;
    const step = v.stepSeconds();
    const prefillSteps = Math.ceil(uncached / v.prefillChunk);
    let p = 1;
    if (s.slo?.ttftMs !== undefined && Number.isNaN(r.firstTokenAt)) {
      const slo = s.slo.ttftMs / 1000;
      const est = v.now - s.arrival + prefillSteps * step;
      p *= logistic((est - slo) / (0.1 * slo));
    }
    if (s.slo?.tpotMs !== undefined) {
      const slo = s.slo.tpotMs / 1000;
      p *= logistic((step - slo) / (0.1 * slo));
    }
    if (s.deadlineMs !== undefined) {
      const slo = s.deadlineMs / 1000;
      const est = v.now - s.arrival + (prefillSteps + r.remainingOutput()) * step;
      p *= logistic((est - slo) / (0.1 * slo));
    }
    return p;
  }

  /** Cost at current prices of running `r` to completion from here (not counting what is sunk). */
  private remainingCost(r: SchedRequest, uncached: number): number {
    const v = this.view;
    const out = r.remainingOutput();
    const lifetime = (Math.ceil(uncached / v.prefillChunk) + out) * v.stepSeconds();
    const rent = v.blocks.blocksFor(r.length + out / 2) * lifetime * v.prices.kv;
    return (uncached + out) * v.prices.token + rent;
  }

  /** Expected surplus of admitting waiting request `r` now. */
  admissionSurplus(r: SchedRequest): number {
    const v = this.view;
    const uncached = r.length - v.cachedPrefixTokens(r);
    const p = this.pMeet(r, uncached);
    const cost = this.remainingCost(r, uncached);
    const out = r.remainingOutput();
    const latency = (uncached + out) * v.secondsPerToken() * this.valueOfTime;
    const kvUse = v.blocks.utilization;
    const risk = (1 - p) * cost + kvUse ** 4 * uncached * v.prices.token;
    return this.value(r) * p - cost - latency - risk;
  }

  /** What `r` (running) loses if preempted now: its continuation surplus plus the recompute. */
  private preemptionLoss(r: SchedRequest): number {
    const cont = this.value(r) * this.pMeet(r, r.pending) - this.remainingCost(r, r.pending);
    return Math.max(0, cont) + r.computed * this.view.prices.token;
  }

  // --- policy ----------------------------------------------------------------------------

  enqueue(r: SchedRequest): void {
    const v = this.view;
    r.epoch++;
    if (r.preemptions === 0) {
      const floorCost = (r.promptLength + r.expectedOutput) * v.floorTokenPrice;
      if (this.value(r) <= floorCost && floorCost > 0) {
        this.live++;
        v.reject(r, v.quote(r, 'value below the cost of serving it at idle prices'));
        return;
      }
    }
    r.score = this.value(r) / Math.max(1, v.blocks.blocksFor(r.length + r.remainingOutput()));
    this.byDensity.push(r);
    const at = this.expiry(r);
    if (at < Infinity) this.byExpiry.push({ r, at, epoch: r.epoch });
    this.live++;
  }

  /** Time after which `r` cannot meet its TTFT SLO or deadline however soon it starts. */
  private expiry(r: SchedRequest): number {
    const s = r.spec;
    let at = Infinity;
    if (s.slo?.ttftMs !== undefined && Number.isNaN(r.firstTokenAt)) at = Math.min(at, s.arrival + s.slo.ttftMs / 1000);
    if (s.deadlineMs !== undefined) {
      const fastest = (Number.isFinite(this.minStepSeconds) ? this.minStepSeconds : 0) * r.remainingOutput();
      at = Math.min(at, s.arrival + s.deadlineMs / 1000 - fastest);
    }
    return at;
  }

  remove(): void {
    this.live--;
  }

  waiting(): number {
    return this.live;
  }

  beginStep(): void {
    const v = this.view;
    this.minStepSeconds = Math.min(this.minStepSeconds, v.stepSeconds());
    for (let top = this.byExpiry.peek(); top !== undefined && top.at <= v.now; top = this.byExpiry.peek()) {
      this.byExpiry.pop();
      if (top.r.state === 'waiting' && top.epoch === top.r.epoch) v.reject(top.r, v.quote(top.r, 'its SLO or deadline can no longer be met'));
    }
    let sum = 0;
    for (const r of v.running) sum += this.value(r) / Math.max(this.horizon(r), 1e-3);
    this.valueOfTime = sum;
    if (v.prices.kv > 0 && v.step % 16 === 0) this.dropUnprofitableBlocks();
  }

  admit(): void {
    const v = this.view;
    const picked = this.picked;
    picked.length = 0;
    while (picked.length < this.opts.candidates) {
      const r = this.byDensity.pop();
      if (r === undefined) break;
      if (r.state !== 'waiting' || picked.includes(r)) continue;
      picked.push(r);
    }
    this.surplus.clear();
    for (const r of picked) this.surplus.set(r, this.admissionSurplus(r));
    const density = (r: SchedRequest) => (this.surplus.get(r) as number) / Math.max(1, v.blocks.blocksFor(r.length + r.remainingOutput()));
    picked.sort((a, b) => density(b) - density(a) || (earlier(a, b) ? -1 : 1));
    let open = true;
    for (const r of picked) {
      const s = this.surplus.get(r) as number;
      if (open && s >= 0) {
        let res = v.tryAdmit(r);
        if (res === 'no-blocks' && this.makeRoomFor(r, s)) res = v.tryAdmit(r);
        if (res === 'admitted') continue;
        open = false;
      }
      // Not admitted this step: back in the queue, priced again when its turn comes.
      this.byDensity.push(r);
    }
  }

  /** Preempts running streams whose loss is below `gain` until `r` fits; false if it cannot. */
  private makeRoomFor(r: SchedRequest, gain: number): boolean {
    const v = this.view;
    const need = v.blocks.blocksFor(Math.min(r.length, v.prefillChunk)) - v.blocks.availableBlocks;
    let freed = 0;
    const victims: SchedRequest[] = [];
    let loss = 0;
    while (freed < need) {
      const x = this.cheapestRunning(victims);
      if (x === undefined) return false;
      loss += this.preemptionLoss(x);
      if (gain <= loss * (1 + this.opts.hysteresis)) return false;
      victims.push(x);
      // Blocks shared through the prefix cache stay held by others: they free nothing.
      freed += v.blocks.exclusiveBlocks(x.blocks);
    }
    for (const x of victims) v.preempt(x);
    return true;
  }

  private cheapestRunning(exclude: readonly SchedRequest[]): SchedRequest | undefined {
    let best: SchedRequest | undefined;
    let bestDensity = Infinity;
    for (const x of this.view.running) {
      if (!this.view.isPreemptible(x) || exclude.includes(x) || x.blocks.length === 0) continue;
      const d = this.preemptionLoss(x) / x.blocks.length;
      if (d < bestDensity) {
        bestDensity = d;
        best = x;
      }
    }
    return best;
  }

  before(a: SchedRequest, b: SchedRequest): boolean {
    return earlier(a, b);
  }

  victim(needy: SchedRequest): SchedRequest | undefined {
    const x = this.cheapestRunning([]);
    if (x === undefined) return undefined;
    if (x === needy) return needy;
    const gain = this.preemptionLoss(needy);
    if (gain > this.preemptionLoss(x) * (1 + this.opts.hysteresis)) return x;
    // Not worth displacing anyone: the needy stream yields, if it may.
    return this.view.isPreemptible(needy) ? needy : undefined;
  }

  served(): void {}

  // --- KV retention ------------------------------------------------------------------------

  /** Expected prefill value of keeping a cached block over the reuse horizon. */
  keepValue(b: CachedBlockInfo, now: number): number {
    const v = this.view;
    const rate = (b.hits + 0.5) / Math.max(1, now - b.createdAt + 1);
    const pReuse = 1 - Math.exp(-rate * this.opts.reuseHorizon);
    return pReuse * v.blocks.blockSize * Math.max(v.prices.token, v.floorTokenPrice, 1e-9);
  }

  /** Drops cached blocks whose keep-value no longer covers their rent over the horizon. */
  private dropUnprofitableBlocks(): void {
    const v = this.view;
    const rent = v.prices.kv * this.opts.reuseHorizon;
    const drop: number[] = [];
    for (const id of v.blocks.cachedIds()) if (v.blocks.keepValueOf(id, v.now, this) < rent) drop.push(id);
    for (const id of drop) v.blocks.dropCached(id);
  }
}
