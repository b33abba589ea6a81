import type { LogitAdjust } from '../sampling/penalties.js';
import type { TokenLogprobs } from '../sampling/logprobs.js';
import type { Rng } from '../sampling/rng.js';
import type { SamplingParams } from '../sampling/params.js';

export type ExecutionProvider = 'cuda' | 'cpu';

export interface EngineInfo {
  flavour: string;
  provider: ExecutionProvider;
  /** Sequences the engine's pool was sized for by default (each at full context); the scheduler's default. */
  maxSequences: number;
  /** Positions a sequence may reach. */
  maxContext: number;
  /** Tokens per KV block. */
  blockSize: number;
  /** Blocks in the engine's KV pool: exactly the blocks the scheduler allocates and prices. */
  totalBlocks: number;
  /** Blocks of host memory sequences can be swapped out to (0: the engine cannot swap). */
  hostBlocks: number;
  /** Bytes one block holds (every layer's keys and values). */
  blockBytes: number;
  /** Seconds to move one token's keys and values one way between the pool and host memory. */
  swapSecondsPerToken: number;
  vocabSize: number;
}

/**
 * One sequence's share of a step: tokens[offset, offset + count) to feed (a prefill chunk, or
 * the last sampled token when decoding) at positions offset, offset + 1, …, and whether to
 * sample after them. `offset` is also how many positions the sequence already holds in its
 * blocks, so the engine keeps no per-sequence length. Offset and count let the scheduler hand
 * over its own token array without a view per item per step.
 */
export interface StepItem {
  seq: number;
  tokens: ArrayLike<number>;
  offset: number;
  count: number;
  /** False for prefill chunks that are not a prompt's last: their logits are not needed. */
  sample: boolean;
  /**
   * The sequence's block table: block i of it holds positions [i·blockSize, (i+1)·blockSize).
   * It covers positions [0, offset + count); the blocks written this step are the sequence's
   * alone (shared ones were copied first, see KvOp.copy).
   */
  blocks: ArrayLike<number>;
  /** Logit changes before this item's draw (penalties, biases, a min_tokens ban). */
  adjust?: LogitAdjust | undefined;
  /** Tokens allowed for this item's draw (structured output): bit i of word i >> 5 set = token i allowed. */
  mask?: Int32Array | undefined;
  /**
   * Prompt log probabilities: report, for each fed position p (offset ≤ p < offset + count, and
   * p + 1 < promptEnd), the log probability of tokens[p + 1] with this many top alternatives.
   */
  promptLogprobs?: number | undefined;
  /** Where the prompt ends in `tokens` (for promptLogprobs). */
  promptEnd?: number | undefined;
}

/** A sequence the engine starts holding sampling state for (its first admission). */
export interface SequenceOpen {
  seq: number;
  sampling: SamplingParams;
  rng: Rng;
}

/**
 * Block moves, applied in plan order before a step runs. Triples (op, src, dst) in
 * `StepPlan.kvOps`: `copy` pool block → pool block (copy-on-write of a shared block a
 * sequence is about to write), `swapOut` pool block → host block, `swapIn` host block → pool
 * block. Order matters: a block a swap-out reads may be handed to another sequence later in
 * the same plan.
 */
export const KvOp = { copy: 0, swapOut: 1, swapIn: 2 } as const;
export type KvOpCode = (typeof KvOp)[keyof typeof KvOp];

/**
 * What one step does, as data (vLLM's SchedulerOutput): the engine applies `closes`, then
 * `opens`, then `kvOps`, then runs `items`. The scheduler calls no engine method, and an engine
 * checks the whole plan before it changes anything, so a plan that fails its checks leaves the
 * engine as it was. A step that fails after that is not committed by the scheduler: its
 * requests are failed and any swap-out it carried is treated as lost (recomputed instead).
 */
export interface StepPlan {
  items: StepItem[];
  opens: SequenceOpen[];
  /** Sequences finished since the last plan: the engine drops their sampling state (unknown ones are ignored). */
  closes: number[];
  /** (op, src, dst) triples, see KvOp. */
  kvOps: number[];
  /** Copy each sampled row's logits into the result (tests and diagnostics; costs a copy). */
  keepLogits?: boolean;
}

export interface StepTiming {
  totalMs: number;
  /** Time inside ONNX Runtime's session.run (or the cost model's predicted step time). */
  runMs: number;
  sampleMs: number;
  /** Everything else: building feeds, copies, bookkeeping. */
  glueMs: number;
  runs: number;
  batchTokens: number;
  /**
   * Bytes of keys and values the engine copied outside the graph this step: new positions
   * written into their blocks, block copies and swaps, and any cache it had to stage or pack
   * for the graph (0 of the cache itself when the graph reads the pool in place).
   */
  kvBytesCopied: number;
  /**
   * Of those, the bytes of keys and values already cached that the step copied in order to run
   * the graph: staged or packed for it, concatenated by it (`hf`), or moved to the device by
   * ONNX Runtime: 0 where the graph reads the pool in place (the I/O-binding path; the
   * onnxruntime-node session on CPU). New positions and plan block moves are not counted.
   * Absent where not measured (the cost model).
   */
  cacheBytesCopied?: number;
}

export interface StepResult {
  /** Parallel to plan.items: the sampled token, or -1 where the item did not sample. */
  tokens: Int32Array;
  timing: StepTiming;
  /** Present when plan.keepLogits: vocabSize floats per item, in item order (NaN-filled when not sampled). */
  logits?: Float32Array;
  /** Parallel to plan.items where some sequence asked for logprobs: the sampled token's (SamplingParams.logprobs). */
  logprobs?: (TokenLogprobs | undefined)[];
  /** Parallel to plan.items where some item asked for promptLogprobs: one entry per reported position, in order. */
  promptLogprobs?: (TokenLogprobs[] | undefined)[];
}

/** A plan with nothing to do: no items, opens, closes or block moves. */
export function emptyPlan(plan: StepPlan): boolean {
  return plan.items.length === 0 && plan.opens.length === 0 && plan.closes.length === 0 && plan.kvOps.length === 0;
}

/**
 * What the scheduler drives. The real engine runs ONNX Runtime over its paged KV pool; the
 * cost-model engine advances simulated time. Each holds the sampling state of the sequences
 * opened on it, so a sequence's random stream depends only on its own seed.
 */
export interface Engine {
  readonly info: EngineInfo;
  execute(plan: StepPlan): Promise<StepResult>;
  dispose(): Promise<void>;
}
