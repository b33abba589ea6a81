import type { CachedBlockInfo, EvictionPolicy } from '../../kv/block-manager.js';
import { Heap } from '../deque.js';
import type { Policy, SchedulerView } from '../policy.js';
import type { SchedRequest } from '../request.js';
import { expectedValue, lifetimeSeconds, pMeet } from '../valuation.js';
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
  /**
   * ρ, the price of risk (DESIGN.md §1): value units charged per value unit of expected waste
   * (work that misses its SLO anyway, or is preempted and redone). 1 prices waste at its cost
   * (risk-neutral); 0 ignores it (ablation).
   */
  riskPrice?: number;
  /** Which cached blocks go first: lowest keep-value (default) or least recently used (ablation). */
  retention?: 'keep-value' | 'lru';
}

/** Below this chance of meeting its SLO a request is not worth starting: it is turned away at once. */
const HOPELESS = 0.02;

/**
 * The pricing scheduler (DESIGN.md §1–2). At the prices in force — p_tok per batched token and
 * p_kv per KV block-second, each the max of the operator's reserve curve and the clearing price
 * of its constraint, and for each request the clearing price set by demand other than its own —
 * a waiting request's expected surplus is
 *
 *   V·P(meets SLO) − (uncached prompt + expected output)·p_tok − KV rent over its lifetime
 *     − latency externality (the step time it adds × the others' value of time)
 *     − ρ · expected waste (work lost if it misses its SLO anyway, or is preempted and redone)
 *
 * where V is its counted value (its claim, capped by what its tenant can pay) and the output
 * length is the length model's distribution, not a point guess. Requests with non-negative
 * surplus are admitted in order of surplus per KV block (a knapsack greedy). A request whose SLO
 * cannot be met, given the queue ahead of it, is turned away at once with a quote. When memory is
 * short the victim is the running stream with the least continuation surplus per block held,
 * counting what preempting it wastes (the swap or the recompute the scheduler would do), and only
 * when the beneficiary gains more than that times 1 + hysteresis. Cached blocks are kept by
 * keep-value (expected reuse × prefill saved × the token price) against rent, not by recency.
 */
export class ShadowPolicy implements Policy, EvictionPolicy {
  readonly name = 'shadow';
  readonly eviction: EvictionPolicy | undefined;
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
      riskPrice: opts.riskPrice ?? 1,
      retention: opts.retention ?? 'keep-value',
    };
    this.eviction = this.opts.retention === 'lru' ? undefined : this;
  }

  attach(view: SchedulerView): void {
    this.view = view;
  }

  // --- valuation -------------------------------------------------------------------------

  /** The counted value of `r`'s completion if it meets its SLO. */
  value(r: SchedRequest): number {
    return r.valueAt(r.generated + r.remainingOutput());
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

  /** Cost at the prices `r` faces of running it to completion from here (not counting what is sunk). */
  private remainingCost(r: SchedRequest, uncached: number): number {
    const v = this.view;
    const out = r.remainingOutput();
    const rent = v.blocks.blocksFor(r.length + out / 2) * lifetimeSeconds(r, uncached, v) * v.kvPriceFor(r);
    return (uncached + out) * v.tokenPriceFor(r) + rent;
  }

  /**
   * Expected waste of starting `r` now, in value: the work it would do if it then misses its
   * SLO anyway, plus the work lost if its KV outgrows its share of free memory and it is
   * preempted (the length model's tail beyond that share).
   */
  private risk(r: SchedRequest, uncached: number, p: number, cost: number): number {
    const v = this.view;
    const bs = v.blocks.blockSize;
    const share = (v.blocks.availableBlocks * bs) / (1 + v.running.length);
    const room = Math.max(0, share - (r.length - r.promptLength));
    const g = r.generated;
    const done = g > 0 ? r.lengthDist.cdf(g) : 0;
    const pOverflow = done >= 1 ? 0 : Math.max(0, 1 - (r.lengthDist.cdf(g + room) - done) / (1 - done));
    const sunk = (uncached + Math.min(room, r.remainingOutput())) * Math.max(v.tokenPriceFor(r), v.basePrice);
    return (1 - p) * cost + pOverflow * sunk;
  }

  /** Expected surplus of admitting waiting request `r` now. */
  admissionSurplus(r: SchedRequest): number {
    const v = this.view;
    const uncached = r.length - v.cachedPrefixTokens(r);
    const p = pMeet(r, uncached, v);
    const cost = this.remainingCost(r, uncached);
    const out = r.remainingOutput();
    const latency = (uncached + out) * v.secondsPerToken() * this.valueOfTime;
    return this.value(r) * p - cost - latency - this.opts.riskPrice * this.risk(r, uncached, p, cost);
  }

  /**
   * Expected value `r` loses if it starts (or resumes) `delay` seconds later than it could now:
   * a preemption or a wait defers work, it does not destroy it, so what is lost is the chance of
   * meeting the SLO or deadline in the meantime — nothing for a request without one.
   */
  private delayLoss(r: SchedRequest, uncached: number, delay: number): number {
    const v = this.view;
    return Math.max(0, expectedValue(r, uncached, v) - expectedValue(r, uncached, v, delay));
  }

  /** Seconds until memory frees by itself: the soonest expected finish among running streams. */
  private secondsUntilRoom(): number {
    const v = this.view;
    let soonest = Infinity;
    for (const x of v.running) soonest = Math.min(soonest, x.remainingOutput());
    return (Number.isFinite(soonest) ? soonest : 0) * v.stepSeconds();
  }

  /**
   * What `r` (running) loses if preempted now: the work it wastes (the swap's transfer or the
   * recompute, whichever the scheduler would do) plus the value its delay costs — it waits for
   * room, then redoes its prefill.
   */
  private preemptionLoss(r: SchedRequest): number {
    const v = this.view;
    const redo = Math.ceil(r.computed / v.prefillChunk) * v.stepSeconds();
    return this.delayLoss(r, 0, this.secondsUntilRoom() + redo) + v.preemptionCost(r);
  }

  // --- policy ----------------------------------------------------------------------------

  enqueue(r: SchedRequest): void {
    const v = this.view;
    r.epoch++;
    this.live++;
    if (r.preemptions === 0) {
      const floorCost = (r.promptLength + r.expectedOutput) * v.floorTokenPrice;
      if (this.value(r) <= floorCost && floorCost > 0) {
        v.reject(r, v.quote(r, r.capped ? 'value_cap' : 'price_above_bid', 'its value is below the cost of serving it even on an idle server'));
        return;
      }
      // Known now, not after the SLO has passed: even started at once, it would miss.
      if (pMeet(r, r.length - v.cachedPrefixTokens(r), v) < HOPELESS) {
        v.reject(r, v.quote(r, 'slo_unreachable', 'its SLO or deadline cannot be met even if it starts now'));
        return;
      }
    }
    r.score = this.value(r) / Math.max(1, v.blocks.blocksFor(r.length + r.remainingOutput()));
    this.byDensity.push(r);
    const at = this.expiry(r);
    if (at < Infinity) this.byExpiry.push({ r, at, epoch: r.epoch });
  }

  /** Time after which `r` cannot meet its TTFT SLO or deadline however soon it starts. */
  private expiry(r: SchedRequest): number {
    const s = r.spec;
    const step = Number.isFinite(this.minStepSeconds) ? this.minStepSeconds : 0;
    const prefill = Math.ceil((r.length - r.computed) / this.view.prefillChunk) * step;
    let at = Infinity;
    if (s.slo?.ttftMs !== undefined && Number.isNaN(r.firstTokenAt)) at = Math.min(at, s.arrival + s.slo.ttftMs / 1000 - prefill);
    if (s.deadlineMs !== undefined) at = Math.min(at, s.arrival + s.deadlineMs / 1000 - prefill - step * r.lengthDist.quantile(0.05));
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
      if (top.r.state === 'waiting' && top.epoch === top.r.epoch) v.reject(top.r, v.quote(top.r, 'slo_unreachable', 'its SLO or deadline can no longer be met'));
    }
    let sum = 0;
    for (const r of v.running) sum += this.value(r) / Math.max(this.horizon(r), 1e-3);
    this.valueOfTime = sum;
    if (this.eviction !== undefined && v.step % 16 === 0) this.dropUnprofitableBlocks();
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
    let room = this.expectedRoom();
    for (const r of picked) {
      const s = this.surplus.get(r) as number;
      if (open && s >= 0) {
        // Admitted only if its expected footprint fits beside the running streams' expected
        // growth: memory promised twice is memory someone will be preempted from.
        const footprint = v.blocks.blocksFor(r.length + r.remainingOutput()) - Math.floor(v.cachedPrefixTokens(r) / v.blocks.blockSize);
        let res: ReturnType<SchedulerView['tryAdmit']> = footprint <= room || v.running.length === 0 ? v.tryAdmit(r) : 'no-blocks';
        if (res === 'no-blocks') {
          // Worth displacing running work only for what waiting for room would cost r.
          const physical = v.blocks.blocksFor(Math.min(r.length, v.prefillChunk)) - v.blocks.availableBlocks;
          if (this.makeRoomFor(r, this.delayLoss(r, r.length - v.cachedPrefixTokens(r), this.secondsUntilRoom()), Math.max(physical, footprint - room))) {
            res = v.tryAdmit(r);
            room = this.expectedRoom();
          }
        }
        if (res === 'admitted') {
          room -= footprint;
          continue;
        }
        open = false;
      }
      // Not admitted this step: back in the queue, priced again when its turn comes.
      this.byDensity.push(r);
    }
  }

  /** Blocks available now less what the running streams are expected to grow into. */
  private expectedRoom(): number {
    const v = this.view;
    let growth = 0;
    for (const x of v.running) growth += Math.max(0, v.blocks.blocksFor(x.length + x.remainingOutput()) - x.blocks.length);
    return v.blocks.availableBlocks - growth;
  }

  /**
   * Preempts running streams, least loss per block first, until `need` blocks (held or expected
   * to be grown into) are freed for `r` — only if `gain` beats their total loss by the hysteresis
   * margin; false, and nobody preempted, otherwise.
   */
  makeRoomFor(r: SchedRequest, gain: number, need: number): boolean {
    const v = this.view;
    if (need <= 0) return true;
    if (!(gain > 0)) return false;
    let freed = 0;
    const victims: SchedRequest[] = [];
    let loss = 0;
    while (freed < need) {
      const x = this.cheapestRunning(victims, need - freed);
      if (x === undefined) return false;
      loss += this.preemptionLoss(x);
      if (gain <= loss * (1 + this.opts.hysteresis)) return false;
      victims.push(x);
      // Blocks shared through the prefix cache stay held by others: they free nothing.
      freed += v.blocks.exclusiveBlocks(x.blocks) + Math.max(0, v.blocks.blocksFor(x.length + x.remainingOutput()) - x.blocks.length);
    }
    for (const x of victims) v.preempt(x);
    return true;
  }

  /** The running stream whose preemption loses least per block of the `need` it would free. */
  private cheapestRunning(exclude: readonly SchedRequest[], need: number): SchedRequest | undefined {
    let best: SchedRequest | undefined;
    let bestDensity = Infinity;
    for (const x of this.view.running) {
      if (!this.view.isPreemptible(x) || exclude.includes(x) || x.blocks.length === 0) continue;
      const d = this.preemptionLoss(x) / Math.min(x.blocks.length, Math.max(1, need));
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
    const x = this.cheapestRunning([], 1);
    if (x === undefined) return undefined;
    if (x === needy) return needy;
    const gain = this.preemptionLoss(needy);
    if (gain > this.preemptionLoss(x) * (1 + this.opts.hysteresis)) return x;
    // Not worth displacing anyone: the needy stream yields, if it may.
    return this.view.isPreemptible(needy) ? needy : undefined;
  }

  served(): void {}

  // --- KV retention ------------------------------------------------------------------------

  /**
   * Value of keeping a cached block over the reuse horizon: P(reused within it) × the prefill it
   * saves × what a token costs — the token price in force, and never less than the compute's
   * real cost (an idle server's price is ~0, but recomputing still costs the operator).
   */
  keepValue(b: CachedBlockInfo, now: number): number {
    const v = this.view;
    const rate = (b.hits + 0.5) / Math.max(1, now - b.createdAt + 1);
    const pReuse = 1 - Math.exp(-rate * this.opts.reuseHorizon);
    return pReuse * v.blocks.blockSize * Math.max(v.prices.token, v.basePrice);
  }

  /**
   * Rent of holding one cached block over the reuse horizon, in keep-value's unit: the operator's
   * reserve KV price × the horizon. The clearing part of the KV price is left out on purpose:
   * demand turned away for memory takes cached blocks on demand, lowest keep-value first, as
   * many as it needs — dropping every block below a momentary clearing price would throw away
   * far more than that demand can use.
   */
  rent(): number {
    return this.view.reserve.kv * this.opts.reuseHorizon;
  }

  /**
   * Drops cached blocks whose keep-value no longer covers their rent (the documented rule:
   * keep-value < reserve KV price × horizon). The default curve keeps that rent below a fresh
   * block's keep-value floor (its prefill at the base compute price) until memory is ~90% held,
   * so nothing is dropped while free blocks remain unless the operator's curve says memory is dear.
   */
  private dropUnprofitableBlocks(): void {
    const v = this.view;
    const rent = this.rent();
    if (!(rent > 0)) return;
    const drop: number[] = [];
    for (const id of v.blocks.cachedIds()) if (v.blocks.keepValueOf(id, v.now, this) < rent) drop.push(id);
    for (const id of drop) v.blocks.dropCached(id);
  }
}
