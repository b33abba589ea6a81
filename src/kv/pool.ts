import { kvCopy, type KvShape } from '../native/kv-copy.js';

/** The geometry of a paged KV pool. */
export interface KvPoolShape {
  layers: number;
  kvHeads: number;
  headDim: number;
  /** Positions per block. */
  blockSize: number;
  /** Blocks in the pool: the blocks the scheduler's block manager hands out. */
  blocks: number;
  /** Blocks of host memory that swapped-out sequences' blocks move to. */
  hostBlocks: number;
}

/** Bytes one block holds: every layer's keys and values for blockSize positions, float32. */
export function blockBytes(s: Omit<KvPoolShape, 'blocks' | 'hostBlocks'>): number {
  return s.layers * 2 * s.kvHeads * s.blockSize * s.headDim * 4;
}

/**
 * Where the KV pool's memory lives, and the block operations, executed where it lives. The
 * engine never touches pool memory except through this interface and, on the JavaScript
 * path, through `keys`/`values` (which ONNX Runtime's CPU provider reads in place), so a
 * native runner that keeps the pool in device memory (ONNX Runtime's C API with I/O binding:
 * per-layer key and value buffers bound as the graph's pool inputs) supplies its own
 * implementation and leaves `keys`/`values` undefined:
 *
 * - per layer, one key and one value buffer of shape [kvHeads, blocks, blockSize, headDim]
 *   (head-major: gathering a batch's blocks along axis 1 yields [kvHeads, batch, positions,
 *   headDim], the layout attention multiplies without a transpose);
 * - `copyBlock`, `swapOut`, `swapIn`: whole blocks (every layer, keys and values), within the
 *   pool or between it and host memory (on a device: cudaMemcpyAsync on the session's stream);
 * - `writePositions`: a run's new keys and values, every layer's, into their blocks (a device
 *   runner may instead let the graph write them, e.g. ONNX Runtime's com.microsoft.PagedAttention,
 *   whose cache is updated in place — its token-major [blocks, blockSize, kvHeads, headDim]
 *   layout and float16 cache would be that runner's own pool layout);
 * - `readPositions`: a sequence's positions packed out, one layer (the `hf` interface's past tensors).
 *
 * Block ids are checked by the engine before any operation runs.
 */
export interface KvStorage {
  readonly shape: KvPoolShape;
  /** Per-layer pool buffers in host memory, when the pool lives there. */
  readonly keys?: readonly Float32Array[];
  readonly values?: readonly Float32Array[];
  copyBlock(src: number, dst: number): void;
  swapOut(block: number, hostBlock: number): void;
  swapIn(hostBlock: number, block: number): void;
  /**
   * Writes `count` positions starting at position `start` of the sequence whose block table is
   * `table`, for every layer: layer l's head h, position start + t comes from
   * srcKeys[l][at + h·headStride + t·headDim …] (and srcValues[l] likewise).
   */
  writePositions(srcKeys: readonly Float32Array[], srcValues: readonly Float32Array[], at: number, headStride: number, table: ArrayLike<number>, start: number, count: number): void;
  /** The reverse for one layer: positions [start, start + count) into dst[at + h·headStride + t·headDim …]. */
  readPositions(layer: number, table: ArrayLike<number>, start: number, count: number, dstKeys: Float32Array, dstValues: Float32Array, at: number, headStride: number): void;
  /** Bytes moved by the operations above since the last call (then reset). */
  takeBytesCopied(): number;
}

/** Runs shorter than this many floats are copied element by element: cheaper than a subarray view. */
const VIEW_THRESHOLD = 256;

/** For each of `heads` heads, n floats from src[from + h·srcStride …] to dst[to + h·dstStride …]. */
function copyHeads(src: Float32Array, from: number, srcStride: number, dst: Float32Array, to: number, dstStride: number, heads: number, n: number): void {
  if (n >= VIEW_THRESHOLD) {
    for (let h = 0; h < heads; h++) dst.set(src.subarray(from + h * srcStride, from + h * srcStride + n), to + h * dstStride);
    return;
  }
  for (let h = 0; h < heads; h++) {
    const a = from + h * srcStride;
    const b = to + h * dstStride;
    for (let i = 0; i < n; i++) dst[b + i] = src[a + i] as number;
  }
}

/**
 * The pool in host memory: one Float32Array per layer for keys and one for values, each
 * [kvHeads][blocks][blockSize][headDim], plus host blocks for swapped-out sequences, allocated
 * on first use and reused ([layer][k|v][kvHead][blockSize][headDim] each). Block copies use
 * the native addon's kvCopy when it is built (the pool is, to it, one slot of capacity
 * blocks × blockSize).
 */
export class HostKvStorage implements KvStorage {
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  private readonly host = new Map<number, Float32Array>();
  private readonly scratch: Float32Array[];
  private readonly copyShape: KvShape;
  private readonly blockFloats: number;
  private readonly headSpan: number;
  private bytes = 0;

  constructor(readonly shape: KvPoolShape) {
    const { layers, kvHeads, blocks, blockSize, headDim } = shape;
    const floats = kvHeads * blocks * blockSize * headDim;
    this.keys = Array.from({ length: layers }, () => new Float32Array(floats));
    this.values = Array.from({ length: layers }, () => new Float32Array(floats));
    this.blockFloats = layers * 2 * kvHeads * blockSize * headDim;
    this.scratch = [new Float32Array(this.blockFloats)];
    this.copyShape = { kvHeads, capacity: blocks * blockSize, headDim };
    this.headSpan = blocks * blockSize * headDim;
  }

  takeBytesCopied(): number {
    const b = this.bytes;
    this.bytes = 0;
    return b;
  }

  copyBlock(src: number, dst: number): void {
    const bs = this.shape.blockSize;
    kvCopy('gather', this.keys, this.values, this.copyShape, 0, src * bs, bs, this.scratch);
    kvCopy('scatter', this.keys, this.values, this.copyShape, 0, dst * bs, bs, this.scratch);
    this.bytes += this.blockFloats * 4;
  }

  swapOut(block: number, hostBlock: number): void {
    let h = this.host.get(hostBlock);
    if (h === undefined) {
      h = new Float32Array(this.blockFloats);
      this.host.set(hostBlock, h);
    }
    const bs = this.shape.blockSize;
    kvCopy('gather', this.keys, this.values, this.copyShape, 0, block * bs, bs, [h]);
    this.bytes += this.blockFloats * 4;
  }

  swapIn(hostBlock: number, block: number): void {
    const h = this.host.get(hostBlock);
    if (h === undefined) throw new RangeError(`host block ${hostBlock} holds nothing`);
    const bs = this.shape.blockSize;
    kvCopy('scatter', this.keys, this.values, this.copyShape, 0, block * bs, bs, [h]);
    this.bytes += this.blockFloats * 4;
  }

  writePositions(srcKeys: readonly Float32Array[], srcValues: readonly Float32Array[], at: number, headStride: number, table: ArrayLike<number>, start: number, count: number): void {
    const layers = this.shape.layers;
    let t = 0;
    // Position runs that stay inside one block are contiguous on both sides: one copy per run, layer and head.
    while (t < count) {
      const pos = start + t;
      const within = pos % this.shape.blockSize;
      const run = Math.min(this.shape.blockSize - within, count - t);
      const base = ((table[(pos - within) / this.shape.blockSize] as number) * this.shape.blockSize + within) * this.shape.headDim;
      const from = at + t * this.shape.headDim;
      for (let l = 0; l < layers; l++) {
        copyHeads(srcKeys[l] as Float32Array, from, headStride, this.keys[l] as Float32Array, base, this.headSpan, this.shape.kvHeads, run * this.shape.headDim);
        copyHeads(srcValues[l] as Float32Array, from, headStride, this.values[l] as Float32Array, base, this.headSpan, this.shape.kvHeads, run * this.shape.headDim);
      }
      t += run;
    }
    this.bytes += count * layers * this.shape.kvHeads * this.shape.headDim * 8;
  }

  readPositions(layer: number, table: ArrayLike<number>, start: number, count: number, dstKeys: Float32Array, dstValues: Float32Array, at: number, headStride: number): void {
    let t = 0;
    while (t < count) {
      const pos = start + t;
      const within = pos % this.shape.blockSize;
      const run = Math.min(this.shape.blockSize - within, count - t);
      const base = ((table[(pos - within) / this.shape.blockSize] as number) * this.shape.blockSize + within) * this.shape.headDim;
      const to = at + t * this.shape.headDim;
      copyHeads(this.keys[layer] as Float32Array, base, this.headSpan, dstKeys, to, headStride, this.shape.kvHeads, run * this.shape.headDim);
      copyHeads(this.values[layer] as Float32Array, base, this.headSpan, dstValues, to, headStride, this.shape.kvHeads, run * this.shape.headDim);
      t += run;
    }
    this.bytes += count * this.shape.kvHeads * this.shape.headDim * 8;
  }
}
