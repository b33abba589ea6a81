import type { EvictionPolicy, BlockManager } from '../kv/block-manager.js';
import type { Quote, RejectReason, SchedRequest } from './request.js';

export type AdmitResult = 'admitted' | 'no-slot' | 'no-budget' | 'no-blocks';

/** What a policy may see and do; the scheduler implements it. */
export interface SchedulerView {
  readonly now: number;
  readonly step: number;
  /** Prices in force: max(reserve curve, clearing price). */
  readonly prices: Readonly<{ token: number; kv: number }>;
  /** The operator's reserve prices (the curves at current utilization). */
  readonly reserve: Readonly<{ token: number; kv: number }>;
  /** Price of a token when idle: the floor a value must clear. */
  readonly floorTokenPrice: number;
  /** What a token of compute really costs the operator (value per token). */
  readonly basePrice: number;
  readonly blocks: BlockManager;
  readonly running: readonly SchedRequest[];
  readonly maxRunning: number;
  readonly prefillChunk: number;
  /** Recent seconds per engine step. */
  stepSeconds(): number;
  /** Seconds one more batched token adds to a step. */
  secondsPerToken(): number;
  /** The prices `r` faces: those in force, with the clearing part set by demand other than `r`. */
  tokenPriceFor(r: SchedRequest): number;
  kvPriceFor(r: SchedRequest): number;
  /** What preempting `r` now wastes, in value: the swap's transfer time or the recompute, whichever the scheduler would do. */
  preemptionCost(r: SchedRequest): number;
  /** Not planned this step, running, and outside the anti-thrash window. */
  isPreemptible(r: SchedRequest): boolean;
  /** Tokens of `r`'s prompt found in the prefix cache right now (verified), without taking them. */
  cachedPrefixTokens(r: SchedRequest): number;
  /** Admits `r` now if slots, token budget and blocks allow. */
  tryAdmit(r: SchedRequest): AdmitResult;
  preempt(r: SchedRequest): void;
  reject(r: SchedRequest, quote: Quote): void;
  quote(r: SchedRequest, reason: RejectReason, message: string): Quote;
}

/**
 * A scheduling policy: the order of the waiting queue, who is admitted, who is preempted and
 * which cached blocks go first. The scheduler does the mechanics (budgets, blocks, engine).
 */
export interface Policy {
  readonly name: string;
  /** Cached-block eviction order; undefined means LRU. */
  readonly eviction: EvictionPolicy | undefined;
  attach(view: SchedulerView): void;
  /** A request enters (or, preempted, re-enters) the waiting queue. */
  enqueue(r: SchedRequest, resumed: boolean): void;
  /** Called when a waiting request leaves the queue other than through `admit` (abort, reject). */
  remove(r: SchedRequest): void;
  waiting(): number;
  /** Start of a step, after prices are set: rejections, counters. */
  beginStep(): void;
  /** Offer waiting requests to `view.tryAdmit` in the policy's order. */
  admit(): void;
  /** Running order: the earlier, the more important (gets the token budget first, preempted last). */
  before(a: SchedRequest, b: SchedRequest): boolean;
  /** A running request to preempt so that `needy` (running, needing blocks) can go on; may be `needy` itself. */
  victim(needy: SchedRequest): SchedRequest | undefined;
  /** Tokens served to `r` this step (prompt and output), for fairness counters. */
  served(r: SchedRequest, promptTokens: number, outputTokens: number): void;
}
