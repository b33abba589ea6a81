import { BillBuilder, type Bill } from '../economy/ledger.js';
import type { Rng, SamplingParams } from '../engine/sampling.js';

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
  /** Treat this many output tokens as the known length; else the estimator's guess. */
  knownOutputTokens?: number;
  /** The caller's own index for this request (the simulator's trace position), untouched here. */
  tag?: number;
}

export type RequestState = 'waiting' | 'running' | 'swapped' | 'done';
export type Outcome = 'completed' | 'rejected' | 'aborted';
export type FinishReason = 'stop' | 'length' | 'abort' | 'rejected';

/** The price quote a rejected request leaves with (HTTP 429 body and headers). */
export interface Quote {
  /** Current clearing price per output token: what a bid must at least cover now. */
  pricePerToken: number;
  /** The least `value` that would clear now for this request's size. */
  minValue: number;
  /** Expected wait before capacity at today's prices, ms. */
  expectedWaitMs: number;
  reason: string;
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
  /** Expected output length at admission (the estimator's guess, or the trace's). */
  expectedOutput: number;
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

  constructor(
    readonly seq: number,
    readonly spec: RequestSpec,
    expectedOutput: number,
    cachedDiscount?: number,
  ) {
    this.promptLength = spec.prompt.length;
    this.tokens = new Int32Array(this.promptLength + spec.maxTokens);
    for (let i = 0; i < this.promptLength; i++) this.tokens[i] = spec.prompt[i] as number;
    this.length = this.promptLength;
    this.expectedOutput = expectedOutput;
    this.bill = new BillBuilder(cachedDiscount === undefined ? {} : { cachedDiscount });
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

  /** Value of the completion if it meets its SLO: `value`, else bid × output tokens. */
  valueAt(outputTokens: number): number {
    if (this.spec.value !== undefined) return this.spec.value;
    return (this.spec.bid ?? 0) * outputTokens;
  }

  remainingOutput(): number {
    return Math.max(1, Math.min(this.spec.maxTokens, this.expectedOutput) - this.generated);
  }
}
