import { ContextLengthError, InvalidArgumentError } from '../errors.js';
import { MAX_REQUEST_VALUE, finiteOr } from '../economy/bounds.js';
import { defaultCurves, type PriceCurves } from '../economy/curves.js';
import { PointLength } from '../economy/estimator.js';
import { OnlineMeanLength, type LengthDistribution, type LengthFeatures, type LengthPredictor } from '../economy/length-model.js';
import { BillBuilder, type Ledger } from '../economy/ledger.js';
import { KvOp, type SequenceOpen, type StepItem, type StepPlan, type StepResult } from '../engine/types.js';
import { BlockManager } from '../kv/block-manager.js';
import { Heap } from './deque.js';
import type { AdmitResult, Policy, SchedulerView } from './policy.js';
import { SchedRequest, StreamGroup, type FinishReason, type Quote, type RejectReason, type RequestSpec } from './request.js';
import { expectedValue, lifetimeSeconds, pMeet, tokensToGo } from './valuation.js';

export interface SchedulerConfig {
  /** Tokens one step may process (decodes count one each, prefill chunks their length). */
  maxBatchTokens: number;
  /** Sequences running at once. */
  maxRunning: number;
  /** Largest prefill chunk one request gets per step. */
  prefillChunk: number;
  /** Blocks in the engine's KV pool (EngineInfo.totalBlocks). */
  totalBlocks: number;
  blockSize: number;
  maxContext: number;
  /** Host blocks to swap out to (EngineInfo.hostBlocks); 0 means preemption always recomputes. */
  hostBlocks?: number;
  /** Seconds to move one token's keys and values one way (EngineInfo.swapSecondsPerToken). */
  swapSecondsPerToken?: number;
  stopIds?: readonly number[];
  curves?: PriceCurves;
  /** Steps after a preemption during which a stream is not preempted again. */
  antiThrashSteps?: number;
  cachedDiscount?: number;
  ledger?: Ledger;
  prefixCaching?: boolean;
  /** Seconds per step assumed before any step has been measured. */
  initialStepSeconds?: number;
  /** Preempt by swapping where there is host space and it is quicker than recomputing (default true). */
  swap?: boolean;
  /** Value per output token for requests that carry neither `value` nor `bid` (a tenant's default). */
  defaultBid?: (tenant: string) => number | undefined;
  /**
   * Clearing prices: when a constraint binds, its price rises to the value density of the best
   * demand it turns away (default true). False leaves the curves alone to set prices (ablation).
   */
  clearing?: boolean;
  /** Charge bills (default true). False itemizes them but charges nothing (ablation). */
  payment?: boolean;
  /** What a token of compute really costs the operator (value per token): the floor of a cached block's keep-value. */
  basePrice?: number;
  /** Predicts output lengths; default the online mean. */
  lengthModel?: LengthPredictor;
}

/** One waiting request in the scheduler's own order of value density (for clearing prices). */
interface WaitEntry {
  r: SchedRequest;
  epoch: number;
  density: number;
}

/** The best and second-best value densities a binding constraint turned away this step. */
interface Rationed {
  best: number;
  bestSeq: number;
  second: number;
}

export interface SchedulerListener {
  onToken?(r: SchedRequest, token: number, now: number): void;
  onFinish?(r: SchedRequest, now: number): void;
}

export interface SchedulerCounters {
  steps: number;
  /** Steps in which the batch (token budget or sequence slots) turned demand away. */
  batchBound: number;
  /** Steps in which KV memory turned demand away. */
  kvBound: number;
  preemptions: number;
  recomputedTokens: number;
  promptTokens: number;
  cachedTokens: number;
  rejected: number;
  completed: number;
  aborted: number;
  /** Preemptions done by swapping instead of recomputing. */
  swaps: number;
  /** Prompt tokens computed for the first time (not cache hits, not recompute). */
  prefillTokens: number;
  /** Requests admitted for the first time (resumptions after preemption not counted). */
  admitted: number;
  /** Blocks copied before a write (copy-on-write of a shared block). */
  blockCopies: number;
  /** Swap-outs lost to a failed step (their requests recompute instead). */
  lostSwaps: number;
}

/**
 * The continuous-batching scheduler: deterministic given its inputs and the clock values it is
 * handed, and free of I/O. Each step `plan(now)` chooses what runs (decodes first, then prefill
 * chunks of running requests, then admissions, all within a token budget and the KV blocks),
 * an engine executes the plan, and `commit(result, now, seconds)` records tokens, bills,
 * prefix-cache blocks and finished requests — or, when the engine failed, `stepFailed(now)`
 * fails the step's requests instead. The policy decides order, admission, victims and
 * eviction; the mechanics here are the same for all of them.
 *
 * Its block manager is the one account of KV memory: block ids are the engine's pool blocks,
 * and everything the engine must do to them (sequences opened and closed, blocks copied before
 * a shared one is written, swaps to host blocks) travels in the plan as data. The scheduler
 * never calls an engine.
 */
export class Scheduler implements SchedulerView {
  readonly blocks: BlockManager;
  readonly lengthModel: LengthPredictor;
  readonly counters: SchedulerCounters = { steps: 0, batchBound: 0, kvBound: 0, preemptions: 0, recomputedTokens: 0, promptTokens: 0, cachedTokens: 0, rejected: 0, completed: 0, aborted: 0, swaps: 0, prefillTokens: 0, admitted: 0, blockCopies: 0, lostSwaps: 0 };
  /** Prices in force this step: max(reserve curve, clearing price), per batched token and per KV block-second. */
  readonly prices = { token: 0, kv: 0 };
  /** The curves' reserve prices at this step's utilization. */
  readonly reserve = { token: 0, kv: 0 };
  readonly floorTokenPrice: number;
  readonly basePrice: number;
  readonly maxRunning: number;
  readonly prefillChunk: number;
  now = 0;
  step = 0;
  tokenUtilization = 0;
  /** Preempted requests whose keys and values wait in host memory. */
  swappedCount = 0;

  private readonly cfg: Required<Omit<SchedulerConfig, 'ledger' | 'curves' | 'stopIds' | 'defaultBid' | 'lengthModel' | 'swapSecondsPerToken'>>;
  private readonly swapSecondsPerToken: number;
  private readonly defaultBid: ((tenant: string) => number | undefined) | undefined;
  private readonly curves: PriceCurves;
  private readonly stopIds: Set<number>;
  private readonly byId = new Map<number, SchedRequest>();
  private readonly runningList: SchedRequest[] = [];
  private readonly planned: SchedRequest[] = [];
  private readonly items: StepItem[] = [];
  private readonly itemPool: StepItem[] = [];
  private readonly opens: SequenceOpen[] = [];
  private readonly kvOps: number[] = [];
  /** Closes for the next plan, and the ones the current plan carries. */
  private closesNext: number[] = [];
  private closesPlanned: number[] = [];
  /** Requests swapped out by the plan in flight: if the step fails, their swap may not have happened. */
  private readonly swappedThisStep: SchedRequest[] = [];
  private readonly plan_: StepPlan = { items: this.items, opens: this.opens, closes: this.closesPlanned, kvOps: this.kvOps };
  private budget = 0;
  /** Sequence slots held for groups' streams while their leaders prefill (StreamGroup.reservedSlots, summed). */
  private reservedSlots = 0;
  private nextSeqNo = 0;
  private stepEma: number;
  private perTokenEma: number;
  private readonly prefixOk: boolean;
  private readonly swapOk: boolean;
  private readonly deferredAborts = new Set<number>();
  private inFlight = false;
  /** Every waiting request by value density, lazily deleted: the demand clearing prices are read from. */
  private readonly waitingByValue = new Heap<WaitEntry>((a, b) => a.density > b.density || (a.density === b.density && a.r.seq < b.r.seq));
  private waitingLive = 0;
  private readonly scanned: WaitEntry[] = [];
  private readonly rationedBatch: Rationed = { best: 0, bestSeq: -1, second: 0 };
  private readonly rationedKv: Rationed = { best: 0, bestSeq: -1, second: 0 };
  /** KV memory turned someone away during this plan (a failed allocation or a preemption for blocks). */
  private kvShort = false;
  /** Tokens computed per second, recently: how fast a queue drains. */
  private tokenRateEma = 0;
  /** Scratch for expectedWaitSeconds: running streams' expected finish times. */
  private readonly finishTimes: number[] = [];

  constructor(
    private readonly policy: Policy,
    config: SchedulerConfig,
    private readonly listener: SchedulerListener = {},
  ) {
    for (const k of ['maxBatchTokens', 'maxRunning', 'prefillChunk', 'totalBlocks', 'blockSize', 'maxContext'] as const) {
      const v = config[k];
      if (!Number.isInteger(v) || v < 1) throw new InvalidArgumentError(`scheduler ${k} must be a positive integer, got ${v}`);
    }
    const hostBlocks = config.hostBlocks ?? 0;
    if (!Number.isInteger(hostBlocks) || hostBlocks < 0) throw new InvalidArgumentError(`scheduler hostBlocks must be a non-negative integer, got ${hostBlocks}`);
    this.cfg = {
      maxBatchTokens: config.maxBatchTokens,
      maxRunning: config.maxRunning,
      prefillChunk: config.prefillChunk,
      totalBlocks: config.totalBlocks,
      blockSize: config.blockSize,
      maxContext: config.maxContext,
      hostBlocks,
      antiThrashSteps: config.antiThrashSteps ?? 32,
      cachedDiscount: config.cachedDiscount ?? 0.1,
      prefixCaching: config.prefixCaching ?? true,
      initialStepSeconds: config.initialStepSeconds ?? 0.02,
      swap: config.swap ?? true,
      clearing: config.clearing ?? true,
      payment: config.payment ?? true,
      basePrice: config.basePrice ?? 2e-4,
    };
    this.basePrice = this.cfg.basePrice;
    this.lengthModel = config.lengthModel ?? new OnlineMeanLength();
    this.maxRunning = config.maxRunning;
    this.prefillChunk = config.prefillChunk;
    this.curves = config.curves ?? defaultCurves();
    this.floorTokenPrice = this.curves.tokens.price(0);
    this.prices.token = this.reserve.token = this.floorTokenPrice;
    this.prices.kv = this.reserve.kv = this.curves.kv.price(0);
    this.stopIds = new Set(config.stopIds ?? []);
    this.blocks = new BlockManager(config.totalBlocks, config.blockSize, hostBlocks);
    this.prefixOk = this.cfg.prefixCaching;
    this.swapSecondsPerToken = config.swapSecondsPerToken ?? Infinity;
    this.swapOk = this.cfg.swap && hostBlocks > 0 && Number.isFinite(this.swapSecondsPerToken);
    this.stepEma = this.cfg.initialStepSeconds;
    this.perTokenEma = this.cfg.initialStepSeconds / 64;
    this.tokenRateEma = this.cfg.maxBatchTokens / 4 / this.cfg.initialStepSeconds;
    this.ledger = config.ledger;
    this.defaultBid = config.defaultBid;
    policy.attach(this);
  }

  readonly ledger: Ledger | undefined;

  get config(): Readonly<SchedulerConfig> {
    return this.cfg;
  }
  /** The operator's congestion curves: the reserve prices beneath whatever clears. */
  get priceCurves(): PriceCurves {
    return this.curves;
  }
  get running(): readonly SchedRequest[] {
    return this.runningList;
  }
  get policyName(): string {
    return this.policy.name;
  }
  get waiting(): number {
    return this.policy.waiting();
  }
  /** Requests not yet finished, rejected or aborted. */
  get pending(): number {
    return this.runningList.length + this.policy.waiting();
  }
  /** Finished requests the engine has not been told of yet (the next plan closes them). */
  get pendingCloses(): number {
    return this.closesNext.length;
  }
  /** The sequence number the next `submit` will assign (callers key their own state by it). */
  get nextSeq(): number {
    return this.nextSeqNo;
  }

  get(seq: number): SchedRequest | undefined {
    return this.byId.get(seq);
  }

  stepSeconds(): number {
    return this.stepEma;
  }
  secondsPerToken(): number {
    return this.perTokenEma;
  }

  /** Throws the error a request of this size gets (OpenAI/vLLM semantics: prompt + max_tokens must fit). */
  checkFits(promptTokens: number, maxTokens: number): void {
    if (promptTokens < 1) throw new InvalidArgumentError('the prompt encodes to no tokens');
    if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new InvalidArgumentError('max_tokens must be a positive integer');
    const ctx = this.cfg.maxContext;
    if (promptTokens >= ctx) {
      throw new ContextLengthError(`the prompt is ${promptTokens} tokens; this model's context is ${ctx} tokens, which leaves no room to generate`);
    }
    if (promptTokens + maxTokens > ctx) {
      throw new ContextLengthError(
        `this model's maximum context length is ${ctx} tokens; the prompt is ${promptTokens} tokens and max_tokens is ${maxTokens} (total ${promptTokens + maxTokens})`,
      );
    }
  }

  /**
   * Registers a request; it waits for a step (or is rejected at once with a quote). Its claim of
   * value is backed by money here: capped by what its tenant can still commit and by the tenant's
   * per-request cap, and that capped claim — the most it can be charged — is escrowed.
   */
  submit(spec: RequestSpec): SchedRequest {
    return this.submitGroup([spec])[0] as SchedRequest;
  }

  /**
   * Registers a request of several streams (OpenAI's `n`): one spec per stream, the same prompt,
   * each with its own sampling state (seed). The group is one request to the economy: one
   * admission decision on its leader, one escrow of the whole claim (each stream counts an equal
   * share of it), one bill at the end, and its prompt prefilled once (see StreamGroup). One spec
   * is a plain request.
   */
  submitGroup(specs: readonly RequestSpec[]): SchedRequest[] {
    const first = specs[0];
    if (first === undefined) throw new InvalidArgumentError('a request needs at least one stream');
    this.checkFits(first.prompt.length, first.maxTokens);
    const n = specs.length;
    if (n > this.cfg.maxRunning) throw new InvalidArgumentError(`n = ${n} streams cannot run at once on a server that runs ${this.cfg.maxRunning} sequences`);
    for (const spec of specs) {
      let same = spec.prompt.length === first.prompt.length && spec.maxTokens === first.maxTokens && spec.tenant === first.tenant;
      for (let i = 0; same && spec.prompt !== first.prompt && i < first.prompt.length; i++) same = spec.prompt[i] === first.prompt[i];
      if (!same) throw new InvalidArgumentError("a request's streams share its prompt, max_tokens and tenant");
    }
    // Admission decisions (is its SLO still reachable?) are made at its arrival, not at the last step.
    if (first.arrival > this.now) this.now = first.arrival;
    // Every stream's value is checked before any is registered: a bad one leaves nothing behind.
    const resolved: RequestSpec[] = [];
    for (let spec of specs) {
      if (spec.value === undefined && spec.bid === undefined) {
        const bid = this.defaultBid?.(spec.tenant);
        if (bid !== undefined) spec = { ...spec, bid };
      }
      const claim0 = spec.value ?? (spec.bid ?? 0) * spec.maxTokens;
      if (!(claim0 >= 0 && claim0 < Infinity)) {
        throw new InvalidArgumentError(`the request's value (value, or bid × max_tokens) must be a finite non-negative number, got ${claim0}`);
      }
      resolved.push(spec);
    }
    const members: SchedRequest[] = [];
    let claim = 0;
    let dist: LengthDistribution | undefined;
    for (const spec of resolved) {
      const features: LengthFeatures = {
        tenant: spec.tenant,
        promptTokens: spec.prompt.length,
        maxTokens: spec.maxTokens,
        endpoint: spec.endpoint ?? 'trace',
        hasStop: spec.sampling.stop.length > 0,
        temperature: spec.sampling.temperature,
        leadingTokens: spec.prompt,
      };
      // The streams of one request are draws of one length distribution.
      dist ??= spec.knownOutputTokens !== undefined ? new PointLength(Math.max(1, Math.min(spec.maxTokens, spec.knownOutputTokens))) : this.lengthModel.predict(features);
      const r = new SchedRequest(this.nextSeqNo++, spec, dist, features, this.cfg.cachedDiscount);
      this.byId.set(r.seq, r);
      members.push(r);
      claim += r.claimAt(spec.maxTokens);
    }
    const r = members[0] as SchedRequest;
    const group = n > 1 ? new StreamGroup() : undefined;
    if (group !== undefined) {
      for (const m of members) {
        m.group = group;
        group.members.push(m);
      }
      group.live = n;
    }
    const tenant = first.tenant;
    // However rich the tenant, no claim counts for more than this: every price, bill and metric
    // derived from it stays finite (two claims of 1e308 once overflowed a counter to Infinity).
    let capped = claim > MAX_REQUEST_VALUE;
    let counted = Math.min(claim, MAX_REQUEST_VALUE);
    if (this.ledger) {
      if (this.ledger.exhausted(tenant)) {
        this.setCharge(members, capped, counted, undefined);
        this.enqueue(r, false);
        if (r.state === 'waiting') this.reject(r, this.quote(r, 'budget_exhausted', `tenant ${tenant} has spent its budget`));
        return members;
      }
      const cap = this.ledger.valueCap(tenant);
      counted = Math.min(claim, cap, MAX_REQUEST_VALUE);
      capped = counted < claim;
      this.ledger.escrow(tenant, counted);
      this.setCharge(members, capped, counted, counted);
    } else this.setCharge(members, capped, counted, undefined);
    // Enqueued first even when it is turned away at once, so the policy's count stays exact.
    this.enqueue(r, false);
    if (r.state === 'waiting' && capped && r.maxCharge <= 0) {
      this.reject(r, this.quote(r, 'value_cap', `tenant ${tenant} has nothing left to back this request's value with`));
    }
    return members;
  }

  /** A request's counted claim (and escrow) onto its streams: each stream counts an equal share. */
  private setCharge(members: readonly SchedRequest[], capped: boolean, counted: number, escrow: number | undefined): void {
    const group = members[0]?.group;
    if (group !== undefined) {
      group.maxCharge = counted;
      group.escrow = escrow;
    }
    for (const m of members) {
      m.capped = capped;
      m.maxCharge = counted / members.length;
      if (group === undefined) m.escrow = escrow;
    }
  }

  /** Into the policy's queue and the scheduler's own order of value density. */
  private enqueue(r: SchedRequest, resumed: boolean): void {
    this.waitingLive++;
    this.policy.enqueue(r, resumed);
    if (r.state !== 'waiting') return;
    const uncached = r.swapped ? 0 : r.length - r.computed;
    this.waitingByValue.push({ r, epoch: r.epoch, density: r.valueAt(r.generated + r.remainingOutput()) / tokensToGo(r, uncached) });
    this.waitingLive++;
    // Stale entries (admitted, rejected, aborted) are dropped lazily; compact before they pile up.
    if (this.waitingByValue.length > 2 * this.waitingLive + 256) this.waitingByValue.retain((e) => e.r.state === 'waiting' && e.epoch === e.r.epoch);
  }

  private leftWaiting(): void {
    this.waitingLive--;
  }

  /** The client went away: free everything it held, now or (mid-step) right after the step. */
  abort(seq: number, now = this.now): void {
    const r = this.byId.get(seq);
    if (r === undefined || r.state === 'done') return;
    if (this.inFlight && r.plannedStep === this.step) {
      this.deferredAborts.add(seq);
      return;
    }
    this.finish(r, 'abort', now);
  }

  /** Ends a running request early (a stop sequence matched in its text). */
  stop(seq: number, now = this.now): void {
    const r = this.byId.get(seq);
    if (r === undefined || r.state === 'done') return;
    if (this.inFlight && r.plannedStep === this.step) {
      // Finish after the step commits, as completed.
      r.stopRequested = true;
      return;
    }
    this.finish(r, 'stop', now);
  }

  plan(now: number): StepPlan {
    if (this.inFlight) throw new InvalidArgumentError('plan() called twice without commit()');
    this.now = now;
    this.step++;
    this.counters.steps++;
    this.planned.length = 0;
    for (const it of this.items) this.itemPool.push(it);
    this.items.length = 0;
    this.beginEngineOps();
    this.budget = this.cfg.maxBatchTokens;

    this.kvShort = false;
    this.curves.tokens.observe(this.tokenUtilization);
    this.curves.kv.observe(this.blocks.utilization);
    this.policy.beginStep();

    // Decodes first (Sarathi-style stall-free batching), then prefill chunks of running requests.
    for (let pass = 0; pass < 2; pass++) {
      for (let i = 0; i < this.runningList.length && this.budget > 0; i++) {
        const r = this.runningList[i] as SchedRequest;
        if (r.plannedStep === this.step || r.state !== 'running') continue;
        const decoding = r.pending === 1 && r.computed > 0;
        if (decoding !== (pass === 0)) continue;
        const n = Math.min(r.pending, this.cfg.prefillChunk, this.budget);
        const ok = this.ensureBlocks(r, r.computed + n);
        if (ok && r.state === 'running') this.addItem(r, n);
        // ensureBlocks may have preempted requests, r itself included: resume from r's place.
        if (this.runningList[i] !== r) {
          const at = this.runningList.indexOf(r);
          i = at >= 0 ? at : i - 1;
        }
      }
    }
    if (this.budget > 0 && this.runningList.length + this.reservedSlots < this.cfg.maxRunning) this.policy.admit();
    this.tokenUtilization = (this.cfg.maxBatchTokens - this.budget) / this.cfg.maxBatchTokens;
    this.setPrices();
    this.inFlight = this.items.length > 0;
    return this.plan_;
  }

  /**
   * A plan carries the engine operations queued since the last step was committed (a
   * preemption between steps swaps out with the next plan) and the closes gathered since the
   * last plan (requests finish during commit too).
   */
  private beginEngineOps(): void {
    const carried = this.closesNext;
    this.closesNext = this.closesPlanned;
    this.closesNext.length = 0;
    this.closesPlanned = carried;
    this.plan_.closes = carried;
  }

  /**
   * The engine failed the plan: nothing of it is committed. Its requests fail (they finish as
   * aborted, their blocks freed); a request it swapped out recomputes instead, since the copy to
   * host memory may not have happened; its closes go out again with the next plan (an engine
   * ignores closes of sequences it does not hold).
   */
  stepFailed(now: number): void {
    this.inFlight = false;
    this.now = now;
    for (const r of this.swappedThisStep) {
      if (!r.swapped || r.state === 'done') continue;
      this.dropSwapped(r);
      r.computed = 0;
      this.counters.lostSwaps++;
    }
    this.endEngineOps();
    for (const seq of this.closesPlanned) this.closesNext.push(seq);
    this.closesPlanned.length = 0;
    for (const r of this.planned) this.finish(r, 'abort', now);
    this.deferredAborts.clear();
  }

  /** The engine has consumed the plan's operations (or failed it). */
  private endEngineOps(): void {
    this.opens.length = 0;
    this.kvOps.length = 0;
    this.swappedThisStep.length = 0;
  }

  /** The engine takes `r`'s sampling state with the plan that first admits it. */
  private openOnEngine(r: SchedRequest): void {
    if (r.opened) return;
    r.opened = true;
    this.opens.push({ seq: r.seq, sampling: r.spec.sampling, rng: r.spec.rng });
  }

  /** A finished request's sampling state leaves the engine with the next plan. */
  private closeOnEngine(r: SchedRequest): void {
    if (!r.opened) return;
    r.opened = false;
    this.closesNext.push(r.seq);
  }

  /** Block `index` of `r` is about to be written: if it is shared, `r` gets its own copy (one more block). */
  private makeWritable(r: SchedRequest, index: number): void {
    const id = r.blocks[index] as number;
    if (!this.blocks.isShared(id)) return;
    const fresh: number[] = [];
    this.blocks.allocate(1, this.now, this.policy.eviction, fresh);
    const copy = fresh[0] as number;
    this.kvOps.push(KvOp.copy, id, copy);
    r.blocks[index] = copy;
    this.blocks.releaseOne(id, this.now);
    this.counters.blockCopies++;
  }

  /**
   * The step's prices (DESIGN.md §1): each constraint that binds — the batch (token budget or
   * sequence slots) when waiting demand cannot get in, KV memory when it cannot hold the best
   * waiting request or had to preempt — is priced at the value density of the best demand it
   * turns away (a uniform-price auction: everyone served pays what the marginal excluded
   * request would have paid), with the operator's curve as the reserve beneath it. A constraint
   * that does not bind has no clearing price, so an idle server charges only the reserve.
   *
   * Batch density is expected value per token still to compute; KV density is the value left
   * after paying for those tokens, per block-second it would hold.
   */
  private setPrices(): void {
    this.reserve.token = this.curves.tokens.price(this.tokenUtilization);
    this.reserve.kv = this.curves.kv.price(this.blocks.utilization);
    const batch = this.rationedBatch;
    const kv = this.rationedKv;
    batch.best = batch.second = kv.best = kv.second = 0;
    batch.bestSeq = kv.bestSeq = -1;
    if (this.cfg.clearing && this.waitingLive > 0) this.rationDemand();
    // A curve from a file can misbehave at the edges of its domain: a price is always finite.
    this.reserve.token = finiteOr(this.reserve.token, this.floorTokenPrice);
    this.reserve.kv = finiteOr(this.reserve.kv, 0);
    this.prices.token = Math.max(this.reserve.token, batch.best);
    this.prices.kv = Math.max(this.reserve.kv, kv.best);
  }

  /** Reads the best few waiting requests' densities into the two Rationed records. */
  private rationDemand(): void {
    const batchBinds = this.runningList.length >= this.cfg.maxRunning || this.budget <= 0;
    const scanned = this.scanned;
    scanned.length = 0;
    const heap = this.waitingByValue;
    // The static order is by nominal density; a few from the top are priced with their SLO odds now.
    while (scanned.length < 8) {
      const e = heap.pop();
      if (e === undefined) break;
      if (e.r.state !== 'waiting' || e.epoch !== e.r.epoch) continue;
      scanned.push(e);
    }
    const head = scanned[0];
    let kvBinds = this.kvShort;
    if (!kvBinds && head !== undefined && !head.r.swapped) {
      kvBinds = this.blocks.blocksFor(Math.min(head.r.length, this.cfg.prefillChunk)) > this.blocks.availableBlocks;
    }
    if (batchBinds) this.counters.batchBound++;
    if (kvBinds) this.counters.kvBound++;
    if (batchBinds) {
      for (const e of scanned) {
        const uncached = e.r.swapped ? 0 : e.r.length - e.r.computed;
        offer(this.rationedBatch, e.r.seq, expectedValue(e.r, uncached, this) / tokensToGo(e.r, uncached));
      }
    }
    if (kvBinds) {
      const pTok = Math.max(this.reserve.token, this.rationedBatch.best);
      for (const e of scanned) {
        const uncached = e.r.swapped ? 0 : e.r.length - e.r.computed;
        const left = expectedValue(e.r, uncached, this) - tokensToGo(e.r, uncached) * pTok;
        const blockSeconds = this.blocks.blocksFor(e.r.length + e.r.remainingOutput() / 2) * lifetimeSeconds(e.r, uncached, this);
        if (left > 0 && blockSeconds > 0) offer(this.rationedKv, e.r.seq, left / blockSeconds);
      }
    }
    for (const e of scanned) heap.push(e);
  }

  /**
   * Prices `r` faces: those in force, but with the clearing component set by the best demand
   * other than `r` itself (the Vickrey rule: a request never sets its own price).
   */
  tokenPriceFor(r: SchedRequest): number {
    const b = this.rationedBatch;
    return Math.max(this.reserve.token, b.bestSeq === r.seq ? b.second : b.best);
  }

  kvPriceFor(r: SchedRequest): number {
    const k = this.rationedKv;
    return Math.max(this.reserve.kv, k.bestSeq === r.seq ? k.second : k.best);
  }

  commit(result: StepResult, now: number, stepSeconds: number): void {
    this.inFlight = false;
    this.now = now;
    this.endEngineOps();
    const tokensThisStep = this.cfg.maxBatchTokens - this.budget;
    if (this.items.length > 0 && stepSeconds > 0) {
      this.stepEma = 0.8 * this.stepEma + 0.2 * stepSeconds;
      this.perTokenEma = 0.9 * this.perTokenEma + 0.1 * (stepSeconds / Math.max(1, tokensThisStep));
      this.tokenRateEma = 0.9 * this.tokenRateEma + 0.1 * (tokensThisStep / stepSeconds);
    }
    for (let i = 0; i < this.planned.length; i++) {
      const r = this.planned[i] as SchedRequest;
      // Aborted mid-step (or the step failed): no progress, no bill, no blocks registered.
      if (this.deferredAborts.has(r.seq)) continue;
      const n = (this.items[i] as StepItem).count;
      const start = r.computed;
      const end = start + n;
      const fresh = Math.max(0, end - Math.max(start, r.billedTo));
      const freshPrompt = Math.max(0, Math.min(end, r.promptLength) - Math.max(start, r.billedTo));
      if (freshPrompt > 0) {
        r.bill.addPrompt(freshPrompt, 0, this.prices.token);
        this.counters.prefillTokens += freshPrompt;
      }
      let waste = n - fresh;
      if (r.forkToken && waste > 0) {
        r.forkToken = false;
        waste--;
      }
      if (waste > 0) {
        r.recomputed += waste;
        this.counters.recomputedTokens += waste;
      }
      r.billedTo = Math.max(r.billedTo, end);
      r.computed = end;
      this.policy.served(r, freshPrompt, 0);
      this.registerBlocks(r);
      if (r.group !== undefined && !r.group.forked && end === r.promptLength) this.fork(r);
      const token = result.tokens[i] as number;
      // A stop sequence matched while this step ran: the token it sampled is not part of the answer.
      if (token >= 0 && r.state === 'running' && !r.stopRequested) this.sampled(r, token, now);
    }
    if (stepSeconds > 0) {
      // A stream forked at the end of this step ran none of it.
      for (const r of this.runningList) if (!r.forkToken) r.bill.addKvRent(this.blocks.heldShare(r.blocks) * stepSeconds, this.prices.kv);
    }
    for (const r of this.planned) {
      if (this.deferredAborts.has(r.seq)) this.finish(r, 'abort', now);
      else if (r.stopRequested && r.state !== 'done') this.finish(r, 'stop', now);
    }
    this.deferredAborts.clear();
  }

  private sampled(r: SchedRequest, token: number, now: number): void {
    const sp = r.spec.sampling;
    if ((sp.ignoreEos !== true && this.stopIds.has(token)) || sp.stopTokenIds?.includes(token) === true) {
      this.finish(r, 'stop', now);
      return;
    }
    r.tokens[r.length++] = token;
    r.generated++;
    if (Number.isNaN(r.firstTokenAt)) r.firstTokenAt = now;
    r.lastTokenAt = now;
    r.bill.addCompletion(1, this.prices.token);
    this.policy.served(r, 0, 1);
    this.listener.onToken?.(r, token, now);
    if (r.state !== 'running' || r.stopRequested) return;
    if (r.generated >= r.spec.maxTokens || r.length >= this.cfg.maxContext) this.finish(r, 'length', now);
  }

  private finish(r: SchedRequest, reason: FinishReason, now: number): void {
    if (r.state === 'done') return;
    this.leave(r);
    r.state = 'done';
    r.finishedAt = now;
    r.finishReason = reason;
    r.outcome = reason === 'abort' ? 'aborted' : 'completed';
    if (reason === 'abort') this.counters.aborted++;
    else {
      this.counters.completed++;
      this.lengthModel.observe(r.features, r.generated, reason === 'length');
    }
    const g = r.group;
    if (g === undefined) {
      // Never more than the work was claimed to be worth (a bid pays per token delivered), nor than its escrow.
      r.finalBill = r.bill.bill(r.valueAt(r.generated), this.cfg.payment);
      if (this.ledger && r.escrow !== undefined) this.ledger.settle(r.tenant, r.escrow, r.finalBill.total, reason !== 'abort');
    } else {
      this.memberEnded(g, r);
      // Streams still waiting for a leader that ended first end with it.
      if (r === g.leader && !g.forked) for (const m of g.members) if (m.awaitingFork) this.finish(m, reason, now);
    }
    this.byId.delete(r.seq);
    this.listener.onFinish?.(r, now);
  }

  reject(r: SchedRequest, quote: Quote): void {
    if (r.state === 'done') return;
    const cascaded = r.awaitingFork;
    this.leave(r);
    r.state = 'done';
    r.finishedAt = this.now;
    r.outcome = 'rejected';
    r.finishReason = 'rejected';
    r.quote = quote;
    // Turned away: whatever it ran before a preemption is the server's loss, not charged.
    r.finalBill = r.bill.bill(r.maxCharge, false);
    // A request turned away before its streams forked is one rejection, with one quote.
    if (!cascaded) this.counters.rejected++;
    const g = r.group;
    if (g === undefined) this.ledger?.reject(r.tenant, r.escrow);
    else {
      if (r === g.leader && !g.forked) {
        this.ledger?.reject(r.tenant, g.escrow);
        g.escrow = undefined;
      }
      this.memberEnded(g, r);
      if (r === g.leader && !g.forked) for (const m of g.members) if (m.awaitingFork) this.reject(m, quote);
    }
    this.byId.delete(r.seq);
    this.listener.onFinish?.(r, this.now);
  }

  /** Out of the queue or the batch, its blocks freed and its sampling state closed on the engine. */
  private leave(r: SchedRequest): void {
    if (r.state === 'waiting') {
      // A stream waiting for its leader's prompt is in no queue and holds nothing.
      if (!r.awaitingFork) {
        this.policy.remove(r);
        this.leftWaiting();
        this.dropSwapped(r);
      }
    } else this.leaveRunning(r);
    this.closeOnEngine(r);
  }

  /**
   * One stream of a group ended. The last one to end carries the group's bill: every stream's
   * charges (the prompt billed once, on the leader) capped at the group's claim, settled against
   * its one escrow. Streams turned away are not charged.
   */
  private memberEnded(g: StreamGroup, r: SchedRequest): void {
    if (r.outcome !== 'rejected') r.finalBill = undefined;
    if (--g.live > 0) return;
    const total = new BillBuilder({ cachedDiscount: this.cfg.cachedDiscount });
    let served = false;
    let completed = true;
    let claim = 0;
    for (const m of g.members) {
      if (m.outcome !== 'completed') completed = false;
      if (m.outcome === 'rejected') continue;
      served = true;
      total.absorb(m.bill);
      claim += m.claimAt(m.generated);
    }
    // Turned away whole: its escrow went back with the rejection.
    if (!served) return;
    r.finalBill = total.bill(Math.min(claim, g.maxCharge), this.cfg.payment);
    if (this.ledger && g.escrow !== undefined) this.ledger.settle(r.tenant, g.escrow, r.finalBill.total, completed);
    g.escrow = undefined;
  }

  /**
   * The quote `r` leaves with: the prices it faces now, the least value that would clear now
   * for its size and SLO odds, and whether a retry can clear — with the expected wait when it
   * can, so that a client (person, agent, router) knows whether to wait, spend less or go.
   */
  quote(r: SchedRequest, reason: RejectReason, message: string): Quote {
    const out = r.remainingOutput();
    const uncached = r.swapped ? 0 : Math.max(0, r.length - r.computed - (r.state === 'waiting' ? this.cachedPrefixTokens(r) : 0));
    const pTok = this.tokenPriceFor(r);
    const pKv = this.kvPriceFor(r);
    const blocks = this.blocks.blocksFor(r.length + out / 2);
    const lifetime = lifetimeSeconds(r, uncached, this);
    const cost = (uncached + out) * pTok + blocks * lifetime * pKv;
    const p = pMeet(r, uncached, this);
    const minValue = p > 1e-6 ? cost / p : Infinity;
    const counted = r.valueAt(r.generated + out);
    let retryable = false;
    switch (reason) {
      case 'budget_exhausted':
        break;
      case 'value_cap':
        // Money comes back when the tenant's requests in flight settle.
        retryable = (this.ledger?.account(r.tenant).inFlight ?? 0) > ((r.escrow ?? r.group?.escrow) !== undefined && r.state !== 'done' ? 1 : 0);
        break;
      default: {
        // A retry is a fresh request on a quieter server: it can clear if it would on an idle one.
        const idleCost = (uncached + out) * this.floorTokenPrice + blocks * lifetime * this.curves.kv.price(0);
        retryable = counted >= idleCost && counted > 0 && this.feasibleWhenIdle(r, uncached);
      }
    }
    const wait = r.state === 'waiting' ? this.expectedWaitSeconds(r) : 0;
    const ttft = Math.max(0, this.now - r.spec.arrival) + wait + Math.ceil(uncached / this.cfg.prefillChunk) * this.stepEma;
    // A group turned away before it forks is quoted whole: its leader clears with a 1/n share of
    // the value, so the request clears with n times the leader's minimum.
    const streams = r.group !== undefined && !r.group.forked ? r.group.size : 1;
    return {
      reason,
      message,
      pricePerToken: this.prices.token,
      pricePerKvBlockSecond: this.prices.kv,
      minValue: minValue * streams,
      valueCounted: counted * streams,
      retryable,
      expectedWaitMs: retryable ? Math.round(this.drainSeconds(r) * 1000) : null,
      predictedTtftMs: roundMs(ttft),
      predictedE2eMs: roundMs(ttft + out * this.stepEma),
    };
  }

  /**
   * Seconds `r` (waiting) is expected to wait before it starts computing, from the queue as it
   * stands: the requests ahead of it (waiting ones of at least its value density — the pricing
   * policy's order — or already preempted) need slots and prefill first, so `r` starts once
   * enough running streams have finished to seat them and it, and once their prompts have
   * passed through the batch. 0 on a server with room for everyone.
   */
  expectedWaitSeconds(r: SchedRequest): number {
    const step = this.stepEma;
    const mine = r.valueAt(r.generated + r.remainingOutput()) / tokensToGo(r, r.swapped ? 0 : r.length - r.computed);
    let ahead = 0;
    let aheadPrompt = 0;
    let aheadService = 0;
    this.waitingByValue.forEach((e) => {
      if (e.r === r || e.r.state !== 'waiting' || e.epoch !== e.r.epoch) return;
      if (!(e.density >= mine) && e.r.preemptions === 0) return;
      ahead++;
      const uncached = e.r.swapped ? 0 : e.r.length - e.r.computed;
      aheadPrompt += uncached;
      aheadService += Math.ceil(uncached / this.cfg.prefillChunk) + e.r.remainingOutput();
    });
    // Their prompts go through the batch before r's, at most a batch's worth per step.
    const prefillWait = (aheadPrompt / this.cfg.maxBatchTokens) * step;
    const free = this.cfg.maxRunning - this.runningList.length - this.reservedSlots;
    const need = ahead + 1 - free;
    if (need <= 0) return prefillWait;
    // Slots free up as running streams finish: the need-th soonest finish seats r.
    const ends = this.finishTimes;
    ends.length = 0;
    for (const x of this.runningList) ends.push((Math.ceil(x.pending / this.cfg.prefillChunk) + x.remainingOutput()) * step);
    ends.sort((a, b) => a - b);
    let slotWait: number;
    if (need <= ends.length) slotWait = ends[need - 1] as number;
    else {
      // More ahead than running: further rounds of the queue ahead, maxRunning at a time.
      const meanService = ahead > 0 ? (aheadService / ahead) * step : 0;
      slotWait = (ends[ends.length - 1] ?? 0) + Math.ceil((need - ends.length) / this.cfg.maxRunning) * meanService;
    }
    return Math.max(prefillWait, slotWait);
  }

  /** Whether a fresh attempt of `r` would meet its SLO and deadline on an otherwise idle server. */
  private feasibleWhenIdle(r: SchedRequest, uncached: number): boolean {
    const s = r.spec;
    const step = Math.min(this.stepEma, this.cfg.initialStepSeconds);
    const prefill = Math.ceil(Math.max(1, uncached) / this.cfg.prefillChunk) * step;
    if (s.slo?.ttftMs !== undefined && prefill * 1000 > s.slo.ttftMs) return false;
    if (s.slo?.tpotMs !== undefined && step * 1000 > s.slo.tpotMs) return false;
    if (s.deadlineMs !== undefined && (prefill + r.lengthDist.quantile(0.1) * step) * 1000 > s.deadlineMs) return false;
    return true;
  }

  /** Seconds until the work ahead of `r` — running streams and waiting demand of higher value density — is done. */
  private drainSeconds(r: SchedRequest): number {
    let tokens = 0;
    for (const x of this.runningList) tokens += x.pending + x.remainingOutput();
    const uncached = r.swapped ? 0 : r.length - r.computed;
    const mine = r.valueAt(r.generated + r.remainingOutput()) / tokensToGo(r, uncached);
    this.waitingByValue.forEach((e) => {
      if (e.r !== r && e.r.state === 'waiting' && e.epoch === e.r.epoch && e.density >= mine) tokens += tokensToGo(e.r, e.r.swapped ? 0 : e.r.length - e.r.computed);
    });
    return tokens / Math.max(this.tokenRateEma, 1e-6);
  }

  /** Running, outside the anti-thrash window, and not inside a step in flight (one planned in the step being planned is taken out of it). */
  isPreemptible(r: SchedRequest): boolean {
    return r.state === 'running' && !(this.inFlight && r.plannedStep === this.step) && this.step - r.lastPreemptStep > (this.cfg.antiThrashSteps as number);
  }

  /** Full blocks of `r`'s tokens found in the prefix cache (verified), without taking them. */
  private cachedPrefixBlocks(r: SchedRequest): number {
    const maxBlocks = Math.floor(r.length / this.cfg.blockSize);
    if (r.chain.length < maxBlocks) this.blocks.chainHashes(r.tokens, maxBlocks, r.chain);
    return this.blocks.matchPrefix(r.tokens, r.chain, maxBlocks);
  }

  cachedPrefixTokens(r: SchedRequest): number {
    if (r.swapped) return r.computed;
    if (!this.prefixOk || r.spec.computeWholePrompt === true) return 0;
    // The last token is always computed: its logits are needed.
    return Math.min(this.cachedPrefixBlocks(r) * this.cfg.blockSize, r.length - 1);
  }

  tryAdmit(r: SchedRequest): AdmitResult {
    // A group's leader takes its streams' slots with it, and room for each to copy the block it
    // shares before its first write.
    const streams = this.streamsToSeat(r);
    if (this.runningList.length + this.reservedSlots + streams > this.cfg.maxRunning) return 'no-slot';
    if (this.budget <= 0) return 'no-budget';
    const bs = this.cfg.blockSize;
    if (r.swapped) return this.swapBackIn(r, streams - 1);
    let hitBlocks = 0;
    // Prompt log probabilities need every prompt position computed, so such requests take no cache hit.
    if (this.prefixOk && r.spec.computeWholePrompt !== true) {
      hitBlocks = this.cachedPrefixBlocks(r);
      if (hitBlocks > 0) this.blocks.acquireCached(r.chain, hitBlocks, this.now, r.blocks);
    }
    // A prompt cached to its last token recomputes that token, in a copy of the shared block.
    const start = Math.min(hitBlocks * bs, r.length - 1);
    const copy = start < hitBlocks * bs ? 1 : 0;
    const n = Math.min(r.length - start, this.cfg.prefillChunk, this.budget);
    const need = this.blocks.blocksFor(start + n) - hitBlocks;
    if (need + copy + streams - 1 > this.blocks.availableBlocks) {
      if (hitBlocks > 0) this.blocks.release(r.blocks, this.now);
      this.kvShort = true;
      return 'no-blocks';
    }
    this.blocks.allocate(need, this.now, this.policy.eviction, r.blocks);
    if (copy) this.makeWritable(r, hitBlocks - 1);
    this.reserveSlots(r, streams - 1);
    this.policy.remove(r);
    this.leftWaiting();
    this.openOnEngine(r);
    r.computed = start;
    r.registered = hitBlocks - copy;
    if (r.preemptions === 0) {
      this.counters.admitted++;
      r.cachedTokens = start;
      this.counters.promptTokens += r.promptLength;
      this.counters.cachedTokens += r.cachedTokens;
      if (r.cachedTokens > 0) r.bill.addPrompt(0, r.cachedTokens, this.prices.token);
      r.billedTo = Math.max(r.billedTo, r.cachedTokens);
    }
    r.state = 'running';
    r.admittedStep = this.step;
    if (Number.isNaN(r.admittedAt)) r.admittedAt = this.now;
    this.insertRunning(r);
    this.addItem(r, n);
    return 'admitted';
  }

  /** A swapped-out request returns with its keys and values: no prefill, only blocks, copied back from host. */
  private swapBackIn(r: SchedRequest, siblings: number): AdmitResult {
    const n = Math.min(r.pending, this.cfg.prefillChunk, this.budget);
    const need = this.blocks.blocksFor(r.computed + n);
    if (need + siblings > this.blocks.availableBlocks) {
      this.kvShort = true;
      return 'no-blocks';
    }
    this.blocks.allocate(need, this.now, this.policy.eviction, r.blocks);
    this.reserveSlots(r, siblings);
    this.policy.remove(r);
    this.leftWaiting();
    for (let i = 0; i < r.hostBlocks.length; i++) this.kvOps.push(KvOp.swapIn, r.hostBlocks[i] as number, r.blocks[i] as number);
    // Host blocks are reusable at once: a swap-out later in this plan is applied after these reads.
    this.blocks.releaseHost(r.hostBlocks);
    r.swapped = false;
    this.swappedCount--;
    r.registered = 0;
    r.state = 'running';
    r.admittedStep = this.step;
    this.insertRunning(r);
    this.addItem(r, n);
    return 'admitted';
  }

  /**
   * Takes `r` off the engine: by swapping its blocks to host memory when there is room and
   * moving them both ways is quicker than recomputing them, else by dropping them (its full
   * blocks stay in the prefix cache, so the recompute may be partly a cache hit). Its sampling
   * state stays on the engine either way, so its random stream resumes where it stopped.
   */
  preempt(r: SchedRequest): void {
    if (r.state !== 'running') return;
    if (this.inFlight && r.plannedStep === this.step) throw new InvalidArgumentError(`sequence ${r.seq} is in the step in flight and cannot be preempted now`);
    // As vLLM does, a stream already scheduled in this plan leaves it and gives its tokens back.
    if (r.plannedStep === this.step) this.unplan(r);
    if (this.wouldSwap(r)) {
      const held = this.blocks.blocksFor(r.computed);
      this.blocks.allocateHost(held, r.hostBlocks);
      for (let i = 0; i < held; i++) this.kvOps.push(KvOp.swapOut, r.blocks[i] as number, r.hostBlocks[i] as number);
      this.leaveRunning(r);
      r.swapped = true;
      this.swappedThisStep.push(r);
      this.swappedCount++;
      this.counters.swaps++;
    } else {
      this.leaveRunning(r);
      r.computed = 0;
    }
    r.state = 'waiting';
    r.registered = 0;
    r.preemptions++;
    r.lastPreemptStep = this.step;
    this.counters.preemptions++;
    this.enqueue(r, true);
  }

  /** Swap when there is host room and moving the KV out and back is quicker than recomputing it. */
  private wouldSwap(r: SchedRequest): boolean {
    return this.swapOk && r.computed > 0 && this.blocks.blocksFor(r.computed) <= this.blocks.freeHostBlocks && 2 * this.swapSecondsPerToken < this.perTokenEma;
  }

  preemptionSeconds(r: SchedRequest): number {
    return this.wouldSwap(r) ? 2 * r.computed * this.swapSecondsPerToken : 0;
  }

  preemptionCost(r: SchedRequest): number {
    const price = Math.max(this.prices.token, this.basePrice);
    // A swap costs its transfer time, priced as the tokens that time could have computed.
    const tokens = this.wouldSwap(r) ? (2 * r.computed * this.swapSecondsPerToken) / this.perTokenEma : r.computed;
    return tokens * price;
  }

  /**
   * Blocks for `r` to hold `tokens`, and its own copy of the block it writes first when that one
   * is shared (a forked stream's share of its prompt's last block); preempts the policy's victims
   * if memory is short.
   */
  private ensureBlocks(r: SchedRequest, tokens: number): boolean {
    const at = Math.floor(r.computed / this.cfg.blockSize);
    for (;;) {
      // Preempting a sibling may leave the block unshared: asked again after every preemption.
      const copy = at < r.blocks.length && this.blocks.isShared(r.blocks[at] as number) ? 1 : 0;
      const need = this.blocks.blocksFor(tokens) - r.blocks.length;
      if (need + copy <= 0) return true;
      if (need + copy <= this.blocks.availableBlocks) {
        if (copy) this.makeWritable(r, at);
        if (need > 0) this.blocks.allocate(need, this.now, this.policy.eviction, r.blocks);
        return true;
      }
      this.kvShort = true;
      const v = this.policy.victim(r);
      if (v === undefined) return false;
      this.preempt(v);
      if (v === r) return false;
    }
  }

  /** Sequence slots admitting `r` takes now: its group's, when it is a leader whose streams have not forked. */
  private streamsToSeat(r: SchedRequest): number {
    const g = r.group;
    return g !== undefined && !g.forked && g.leader === r ? g.size : 1;
  }

  private reserveSlots(r: SchedRequest, slots: number): void {
    if (slots <= 0 || r.group === undefined) return;
    r.group.reservedSlots = slots;
    this.reservedSlots += slots;
  }

  private releaseSlots(r: SchedRequest): void {
    const g = r.group;
    if (g === undefined || g.reservedSlots === 0) return;
    this.reservedSlots -= g.reservedSlots;
    g.reservedSlots = 0;
  }

  /**
   * The leader's prompt is computed: each other stream of its group takes a reference to every
   * prompt block and starts running with the prompt's last token to feed, for its own first
   * draw from its own random stream. The prompt is billed and counted once, on the leader.
   */
  private fork(leader: SchedRequest): void {
    const g = leader.group as StreamGroup;
    g.forked = true;
    this.releaseSlots(leader);
    const promptBlocks = this.blocks.blocksFor(leader.promptLength);
    for (const s of g.members) {
      if (s === leader || s.state !== 'waiting') continue;
      for (let b = 0; b < promptBlocks; b++) this.blocks.share(leader.blocks[b] as number, this.now, s.blocks);
      for (let b = 0; b < leader.chain.length && b < promptBlocks; b++) s.chain.push(leader.chain[b] as number);
      s.registered = Math.min(leader.registered, promptBlocks);
      s.computed = s.promptLength - 1;
      s.cachedTokens = s.promptLength - 1;
      s.billedTo = s.promptLength;
      s.forkToken = true;
      s.state = 'running';
      s.admittedStep = this.step;
      s.admittedAt = this.now;
      this.openOnEngine(s);
      this.insertRunning(s);
    }
  }

  private unplan(r: SchedRequest): void {
    const i = this.planned.indexOf(r);
    if (i < 0) return;
    const item = this.items[i] as StepItem;
    this.budget += item.count;
    this.planned.splice(i, 1);
    this.items.splice(i, 1);
    this.itemPool.push(item);
    r.plannedStep = -1;
  }

  private addItem(r: SchedRequest, n: number): void {
    const item = this.itemPool.pop() ?? { seq: 0, tokens: r.tokens, offset: 0, count: 0, sample: false, blocks: r.blocks };
    item.seq = r.seq;
    item.tokens = r.tokens;
    item.blocks = r.blocks;
    item.offset = r.computed;
    item.count = n;
    item.sample = r.computed + n === r.length;
    this.items.push(item);
    this.planned.push(r);
    r.plannedStep = this.step;
    this.budget -= n;
  }

  private registerBlocks(r: SchedRequest): void {
    if (!this.prefixOk) return;
    const full = Math.floor(r.computed / this.cfg.blockSize);
    if (full <= r.registered) return;
    if (r.chain.length < full) this.blocks.chainHashes(r.tokens, full, r.chain);
    for (let b = r.registered; b < full; b++) {
      this.blocks.register(r.blocks[b] as number, r.chain[b] as number, b, r.tokens, b * this.cfg.blockSize);
    }
    r.registered = full;
  }

  private insertRunning(r: SchedRequest): void {
    const list = this.runningList;
    let i = list.length;
    while (i > 0 && this.policy.before(r, list[i - 1] as SchedRequest)) i--;
    list.splice(i, 0, r);
  }

  private leaveRunning(r: SchedRequest): void {
    const i = this.runningList.indexOf(r);
    if (i >= 0) this.runningList.splice(i, 1);
    this.releaseSlots(r);
    this.blocks.release(r.blocks, this.now);
    r.plannedStep = -1;
  }

  /** A swapped-out request that will not come back frees its host blocks. */
  private dropSwapped(r: SchedRequest): void {
    if (!r.swapped) return;
    this.blocks.releaseHost(r.hostBlocks);
    r.swapped = false;
    this.swappedCount--;
  }
}

function roundMs(seconds: number): number {
  return Number.isFinite(seconds) ? Math.round(seconds * 1000) : Number.MAX_SAFE_INTEGER;
}

function offer(into: Rationed, seq: number, density: number): void {
  if (!(density > 0 && density < Infinity)) return;
  if (density > into.best) {
    into.second = into.best;
    into.best = density;
    into.bestSeq = seq;
  } else if (density > into.second) into.second = density;
}
