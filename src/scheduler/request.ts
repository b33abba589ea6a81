import { expectedRemaining } from '../economy/estimator.js';
import type { LengthDistribution, LengthFeatures } from '../economy/length-model.js';
import { BillBuilder, type Bill } from '../economy/ledger.js';
import type { Rng } from '../sampling/rng.js';
import type { SamplingParams } from '../sampling/params.js';

export interface Slo {
  ttftMs?: number;
  tpotMs?: number;
}

/** What a client (or a trace line) asks for. */
export interface RequestSpec {
  /** The caller's id (trace id, HTTP request id). */
  id: string;
  tenant: string;
  /** Arrival time on the scheduler's clock, seconds. */
  arrival: number;
  prompt: ArrayLike<number>;
  maxTokens: number;
  /** Value of the whole completion. */
  value?: number;
  /** Value per output token (used when `value` is absent). */
  bid?: number;
  slo?: Slo;
  /** Completion must end within this many ms of arrival to be worth anything. */
  deadlineMs?: number;
  /** vLLM semantics: lower is more important. */
  priority?: number;
  sampling: SamplingParams;
  rng: Rng;
  /** Treat this many output tokens as the known length; else the length model's prediction. */
  knownOutputTokens?: number;
  /** Which API it came through, for the length model (default 'trace'). */
  endpoint?: LengthFeatures['endpoint'];
  /** The caller's own index for this request (the simulator's trace position), untouched here. */
  tag?: number;
  /** Compute every prompt token even where the prefix cache holds them (prompt log probabilities). */
  computeWholePrompt?: boolean;
}

export type RequestState = 'waiting' | 'running' | 'swapped' | 'done';
export type Outcome = 'completed' | 'rejected' | 'aborted';
export type FinishReason = 'stop' | 'length' | 'abort' | 'rejected';

/**
 * Why a request was turned away. `budget_exhausted` is HTTP 402, the rest 429.
 *
 * - `price_above_bid`: its value does not cover what it would cost at current prices.
 * - `slo_unreachable`: its SLO or deadline cannot be met (now, or ever).
 * - `value_cap`: its claim of value, capped by what its tenant can pay, does not clear.
 * - `budget_exhausted`: its tenant's budget is spent and nothing in flight will refund any.
 */
export type RejectReason = 'price_above_bid' | 'slo_unreachable' | 'value_cap' | 'budget_exhausted';
export const REJECT_REASONS: readonly RejectReason[] = ['price_above_bid', 'slo_unreachable', 'value_cap', 'budget_exhausted'];

/** The price quote a rejected request leaves with (HTTP 429 body and headers). */
export interface Quote {
  reason: RejectReason;
  /** What happened, for people. */
  message: string;
  /** The token price in force (the same number as the x-marginal-price-token header). */
  pricePerToken: number;
  /** The KV price in force, per block-second. */
  pricePerKvBlockSecond: number;
  /** The least value that would clear now for this request's size (Infinity when nothing would). */
  minValue: number;
  /** The value the request was counted at (its claim after the tenant's caps). */
  valueCounted: number;
  /** Whether a retry of the same request can clear: false when waiting cannot help. */
  retryable: boolean;
  /** When retryable: the expected wait before it would clear, ms; else null. */
  expectedWaitMs: number | null;
  /** The server's prediction of its time to first token had it been admitted now (queue wait + prefill), ms. */
  predictedTtftMs?: number;
  /** The same for its end (TTFT + expected output at the current step time), ms. */
  predictedE2eMs?: number;
}

/**
 * A request's n streams (OpenAI's `n`, vLLM's parallel sampling): one admission decision, one
 * escrow and one bill for all of them, the prompt prefilled once. The leader (member 0) waits,
 * is admitted and prefills as any request does; when its prompt is done the others fork from it,
 * taking references to its prompt blocks (the last partial one is copied on its first write),
 * and from then on each member is a stream of its own.
 *
 * Preemption takes streams one at a time, as vLLM V1 treats a parent request's children: each
 * stream counts its own share of the value and holds its own blocks past the shared prompt, so a
 * policy's surplus per block held (and what preempting frees, shared blocks excepted) is exact
 * per stream, and the prompt's full blocks stay in the prefix cache, so a stream that recomputes
 * resumes from a hit. Preempting the group whole would throw away streams that are worth their
 * blocks to free memory one victim already frees. Admission, by contrast, is the group's: the
 * leader is admitted only with slots for every stream (held until they fork) and room for each
 * to copy the shared last block; it is priced at its own share of the value against the whole
 * prompt's prefill, a conservative reading of the group's surplus.
 */
export class StreamGroup {
  readonly members: SchedRequest[] = [];
  /** The members other than the leader have taken their share of its prompt blocks. */
  forked = false;
  /** Sequence slots held for the other members while the leader prefills. */
  reservedSlots = 0;
  /** Members not yet done. */
  live = 0;
  /** The group's escrow in the ledger (its capped claim), settled when its last member ends. */
  escrow: number | undefined;
  /** The most the group can be charged: its claim after the tenant's caps. */
  maxCharge = Infinity;

  get leader(): SchedRequest {
    return this.members[0] as SchedRequest;
  }

  get size(): number {
    return this.members.length;
  }
}

/**
 * The scheduler's record of one request. Prompt and generated tokens share one array, so a
 * preempted request recomputes exactly the sequence it had and resumes where it stopped.
 */
export class SchedRequest {
  state: RequestState = 'waiting';
  /** Prompt then generated tokens. */
  readonly tokens: Int32Array;
  length: number;
  readonly promptLength: number;
  /** Tokens whose keys and values the engine holds. */
  computed = 0;
  generated = 0;
  /** KV blocks held, in sequence order. */
  readonly blocks: number[] = [];
  /** Chain hashes of full blocks known so far (prompt blocks at admission, then generated ones). */
  chain: number[] = [];
  /** Leading blocks already registered in the prefix cache. */
  registered = 0;
  cachedTokens = 0;
  preemptions = 0;
  lastPreemptStep = -Infinity;
  admittedStep = -Infinity;
  /** When it was first admitted (scheduled), for queue-time metrics. */
  admittedAt = NaN;
  firstTokenAt = NaN;
  lastTokenAt = NaN;
  /** The previous token's time, kept by observers that measure inter-token latency. */
  prevTokenAt = NaN;
  finishedAt = NaN;
  outcome: Outcome | undefined;
  finishReason: FinishReason | undefined;
  quote: Quote | undefined;
  readonly bill: BillBuilder;
  finalBill: Bill | undefined;
  /** Filled by the policy: a cached score (surplus density, virtual counter, ...). */
  score = 0;
  /** Index in a policy's heap, or -1. */
  heapIndex = -1;
  /** Expected output length (the length model's mean, or the trace's). */
  expectedOutput: number;
  /** The length model's prediction for this request. */
  readonly lengthDist: LengthDistribution;
  readonly features: LengthFeatures;
  /**
   * The most this request can be charged and the most its value counts for: its claim, capped by
   * what its tenant can pay (escrowed from its budget) and the tenant's per-request cap; Infinity
   * without a ledger.
   */
  maxCharge = Infinity;
  /** Its claim was cut by the cap. */
  capped = false;
  /** Escrow held in the ledger for this request, settled at finish (undefined: none held). */
  escrow: number | undefined;
  /** Tokens computed again after preemption: waste, never billed. */
  recomputed = 0;
  /** Positions [0, billedTo) have been billed (prompt) or fed back after sampling (output). */
  billedTo = 0;
  /** A stop sequence matched mid-step: finish as completed once the step commits. */
  stopRequested = false;
  /** Preempted by swapping: its keys and values wait in host memory, `computed` still counts them. */
  swapped = false;
  /** Host blocks holding its swapped-out blocks, in sequence order. */
  readonly hostBlocks: number[] = [];
  /** The engine holds its sampling state (opened at its first admission, closed when it is done). */
  opened = false;
  /** The step this request was last planned in (-1 when not running). */
  plannedStep = -1;
  /** Bumped on every enqueue, so lazily deleted queue entries can tell they are stale. */
  epoch = 0;
  /** The request's streams when it asked for n > 1 (this is one of them). */
  group: StreamGroup | undefined;
  /**
   * A forked stream whose next fed token is the prompt's last, recomputed for its own first
   * draw: the group's prompt, already billed, and no waste.
   */
  forkToken = false;

  constructor(
    readonly seq: number,
    readonly spec: RequestSpec,
    lengthDist: LengthDistribution,
    features: LengthFeatures,
    cachedDiscount?: number,
  ) {
    this.promptLength = spec.prompt.length;
    this.tokens = new Int32Array(this.promptLength + spec.maxTokens);
    for (let i = 0; i < this.promptLength; i++) this.tokens[i] = spec.prompt[i] as number;
    this.length = this.promptLength;
    this.lengthDist = lengthDist;
    this.features = features;
    this.expectedOutput = Math.max(1, Math.min(spec.maxTokens, lengthDist.mean()));
    this.bill = new BillBuilder(cachedDiscount === undefined ? {} : { cachedDiscount });
  }

  /** The value the client claimed for the completion at `outputTokens` (before any cap). */
  claimAt(outputTokens: number): number {
    if (this.spec.value !== undefined) return this.spec.value;
    return (this.spec.bid ?? 0) * outputTokens;
  }

  /** A member of a group still waiting for its leader's prompt (in no queue, holding nothing). */
  get awaitingFork(): boolean {
    const g = this.group;
    return g !== undefined && !g.forked && this !== g.leader && this.state === 'waiting';
  }

  get tenant(): string {
    return this.spec.tenant;
  }

  /** Tokens still to feed before the next sample: the prompt (or a recompute), or the last token. */
  get pending(): number {
    return this.length - this.computed;
  }

  get prefilling(): boolean {
    return this.length - this.computed > 1 || this.generated === 0;
  }

  /** Value counted for the completion if it meets its SLO: the claim, as far as money backs it. */
  valueAt(outputTokens: number): number {
    return Math.min(this.claimAt(outputTokens), this.maxCharge);
  }

  /**
   * DESIGN.md §5: it completed, its TTFT ≤ slo.ttft_ms, its TPOT ≤ slo.tpot_ms and it ended
   * within deadline_ms of arrival, for each of those it carries (times on the scheduler's clock).
   */
  metSlo(): boolean {
    if (this.outcome !== 'completed') return false;
    const s = this.spec;
    const ttft = this.firstTokenAt - s.arrival;
    if (s.slo?.ttftMs !== undefined && !(ttft * 1000 <= s.slo.ttftMs)) return false;
    if (s.slo?.tpotMs !== undefined && this.generated > 1 && ((this.finishedAt - this.firstTokenAt) / (this.generated - 1)) * 1000 > s.slo.tpotMs) return false;
    if (s.deadlineMs !== undefined && (this.finishedAt - s.arrival) * 1000 > s.deadlineMs) return false;
    return true;
  }

  /** Its counted value if it met its SLO, else 0: what the server's metrics and responses report as realized. */
  valueRealized(): number {
    return this.metSlo() ? this.valueAt(this.generated) : 0;
  }

  /** Expected output tokens still to come, given those generated so far. */
  remainingOutput(): number {
    if (this.generated === 0) return Math.max(1, this.expectedOutput);
    // Priced several times per step for every running stream: computed once per token.
    if (this.remainingAt !== this.generated) {
      this.remainingAt = this.generated;
      this.remaining = Math.max(1, Math.min(this.spec.maxTokens - this.generated, expectedRemaining(this.lengthDist, this.generated, this.spec.maxTokens)));
    }
    return this.remaining;
  }

  private remainingAt = -1;
  private remaining = 1;
}
