import type { ExecutionProvider } from './types.js';

/**
 * Where the KV cache lives and how the fast graph runs over it. Two implementations:
 *
 * - `BoundKvBackend` (bound-kv-backend.ts): ONNX Runtime's C API through the native addon, with
 *   I/O binding. The cache is one buffer in the session's memory (CUDA device memory, or host
 *   memory under CPU) that every run reads in place; only the step's small inputs go in and
 *   logits (or each row's k best) come out.
 * - `JsKvBackend` (js-kv-backend.ts): onnxruntime-node's JavaScript session over host arrays,
 *   the fallback wherever the addon is absent. Under CUDA, ONNX Runtime copies every cache
 *   view a run is handed to the device, each step.
 *
 * Cache layout, per layer and per K/V: [slot][kvHead][capacity][headDim]. A slot's positions
 * [0, length) hold its sequence's keys and values.
 */
export interface FastRun {
  /** First slot of the contiguous range the run covers, and how many slots (the batch). */
  lo: number;
  b: number;
  /** New tokens per slot. */
  width: number;
  /** Exact-length views: [b*width] ids and positions, [b] past lengths, [rowCount] logits rows. */
  ids: BigInt64Array;
  pos: BigInt64Array;
  lengths: BigInt64Array;
  rows: BigInt64Array;
  /** Fetch each row's k best (values and ids, best first) instead of full logits. */
  ranked: boolean;
  k: number;
  /** writes entries: batch row writeRow[j] (slot lo + writeRow[j]) gets its new keys and values at position writeAt[j]. */
  writeRow: Int32Array;
  writeAt: Int32Array;
  writes: number;
}

/** A run's output for sampling: full logits rows, or each row's k best (values and ids, best first). */
export interface FastRunOutput {
  logits?: Float32Array;
  values?: Float32Array;
  ids?: BigInt64Array;
  k: number;
}

export type KvPath = 'io-binding' | 'onnxruntime-node';

export interface KvBackend {
  readonly path: KvPath;
  readonly provider: ExecutionProvider;
  /** Where the cache lives. */
  readonly memory: 'device' | 'host';
  readonly inputNames: ReadonlySet<string>;
  /** Bytes of cached keys and values copied so far (cumulative): by runs that needed the cache moved, and by block operations. */
  kvBytesCopied(): number;
  /** One fast-graph run, then the new keys and values written at their positions. */
  runFast(run: FastRun): Promise<FastRunOutput>;
  /** Keeps a copy of positions [from, from + n) of `slot` under `blockId` (replacing any earlier one). */
  storeBlock(slot: number, from: number, n: number, blockId: number): void;
  hasBlock(blockId: number): boolean;
  /** Writes stored blocks, n positions each, at positions [0, ids.length * n) of `slot`. */
  loadBlocks(slot: number, blockIds: readonly number[], n: number): void;
  /** Moves positions [0, len) of `slot` to host memory; the handle brings them back. */
  swapOut(slot: number, len: number): number;
  swapIn(handle: number, slot: number, len: number): void;
  dropSwap(handle: number): void;
  dispose(): Promise<void>;
}
