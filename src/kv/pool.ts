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
 * - `writePositions`: a run's new keys and values into their blocks (a device runner may
 *   instead let the graph write them, e.g. ONNX Runtime's com.microsoft.PagedAttention, whose
 *   cache is updated in place — its token-major [blocks, blockSize, kvHeads, headDim] layout
 *   and float16 cache would be that runner's own pool layout);
 * - `readPositions`: a sequence's positions packed out (the `hf` interface's past tensors).
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
   * `table`, for one layer. Head h's position start + t comes from src[at + h·headStride + t·headDim …].
   */
  writePositions(layer: number, srcKeys: Float32Array, srcValues: Float32Array, at: number, headStride: number, table: ArrayLike<number>, start: number, count: number): void;
  /** The reverse: positions [start, start + count) into dst[at + h·headStride + t·headDim …]. */
  readPositions(layer: number, table: ArrayLike<number>, start: number, count: number, dstKeys: Float32Array, dstValues: Float32Array, at: number, headStride: number): void;
  /** Bytes moved by the operations above since the last call (then reset). */
  takeBytesCopied(): number;
}

/** Runs shorter than this many floats are copied element by element: cheaper than a subarray view. */
const VIEW_THRESHOLD = 256;

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

  writePositions(layer: number, srcKeys: Float32Array, srcValues: Float32Array, at: number, headStride: number, table: ArrayLike<number>, start: number, count: number): void {
    this.move(true, layer, srcKeys, srcValues, at, headStride, table, start, count);
  }

  readPositions(layer: number, table: ArrayLike<number>, start: number, count: number, dstKeys: Float32Array, dstValues: Float32Array, at: number, headStride: number): void {
    this.move(false, layer, dstKeys, dstValues, at, headStride, table, start, count);
  }

  /** Position runs that stay inside one block are contiguous on both sides: one copy per run and head. */
  private move(write: boolean, layer: number, bufK: Float32Array, bufV: Float32Array, at: number, headStride: number, table: ArrayLike<number>, start: number, count: number): void {
    const { kvHeads: H, blockSize: bs, headDim: hd } = this.shape;
    const poolK = this.keys[layer] as Float32Array;
    const poolV = this.values[layer] as Float32Array;
    let t = 0;
    while (t < count) {
      const pos = start + t;
      const within = pos % bs;
      const run = Math.min(bs - within, count - t);
      const base = ((table[(pos - within) / bs] as number) * bs + within) * hd;
      const n = run * hd;
      for (let h = 0; h < H; h++) {
        const p = base + h * this.headSpan;
        const b = at + h * headStride + t * hd;
        if (n >= VIEW_THRESHOLD) {
          if (write) {
            poolK.set(bufK.subarray(b, b + n), p);
            poolV.set(bufV.subarray(b, b + n), p);
          } else {
            bufK.set(poolK.subarray(p, p + n), b);
            bufV.set(poolV.subarray(p, p + n), b);
          }
        } else if (write) {
          for (let i = 0; i < n; i++) {
            poolK[p + i] = bufK[b + i] as number;
            poolV[p + i] = bufV[b + i] as number;
          }
        } else {
          for (let i = 0; i < n; i++) {
            bufK[b + i] = poolK[p + i] as number;
            bufV[b + i] = poolV[p + i] as number;
          }
        }
      }
      t += run;
    }
    this.bytes += count * H * hd * 8;
  }
}
