import type { Rng, SamplingParams } from './sampling.js';

export type ExecutionProvider = 'cuda' | 'cpu';

export interface EngineInfo {
  flavour: string;
  provider: ExecutionProvider;
  maxSequences: number;
  maxContext: number;
  blockSize: number;
  totalBlocks: number;
  vocabSize: number;
}

/**
 * One sequence's share of a step: tokens[offset, offset + count) to feed (a prefill chunk, or
 * the last sampled token when decoding) and whether to sample after them. Offset and count
 * let the scheduler hand over its own token array without a view per item per step.
 */
export interface StepItem {
  seq: number;
  tokens: ArrayLike<number>;
  offset: number;
  count: number;
  /** False for prefill chunks that are not a prompt's last: their logits are not needed. */
  sample: boolean;
}

export interface StepPlan {
  items: StepItem[];
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
   * Bytes of cached keys and values the step copied (moved to the device, packed, or
   * concatenated): 0 where the cache is read in place, as on the I/O-binding path. The new
   * tokens' own keys and values, written once into their positions, are not counted. Absent
   * where an engine does not measure it (the cost model).
   */
  kvBytesCopied?: number;
}

export interface StepResult {
  /** Parallel to plan.items: the sampled token, or -1 where the item did not sample. */
  tokens: Int32Array;
  timing: StepTiming;
  /** Present when plan.keepLogits: vocabSize floats per item, in item order (NaN-filled when not sampled). */
  logits?: Float32Array;
}

/**
 * What the scheduler drives. The real engine runs ONNX Runtime; the cost-model engine advances
 * simulated time. Both hold per-sequence sampling state so a sequence's random stream depends
 * only on its own seed.
 */
export interface Engine {
  readonly info: EngineInfo;
  open(seq: number, sampling: SamplingParams, rng: Rng): void;
  execute(plan: StepPlan): Promise<StepResult>;
  /** Tokens whose keys and values are held for `seq`. */
  contextLength(seq: number): number;
  /** KV blocks held by `seq`. */
  blocksHeld(seq: number): number;
  readonly freeBlocks: number;
  close(seq: number): void;
  dispose(): Promise<void>;
  /**
   * Prefix-cache support: keep a copy of `seq`'s block `index` under `blockId`, and start an
   * empty sequence from such copies. Engines without it get no prefix reuse.
   */
  storeBlock?(seq: number, index: number, blockId: number): void;
  loadBlocks?(seq: number, blockIds: readonly number[]): void;
  /**
   * Swap support: move `seq`'s keys and values out of its slot to host memory (freeing the
   * slot), and back. `close` also discards a swapped-out sequence.
   */
  swapOut?(seq: number): void;
  swapIn?(seq: number): void;
  /** Seconds to move one token's keys and values one way, for the swap-or-recompute choice. */
  readonly swapSecondsPerToken?: number;
}
