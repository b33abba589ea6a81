import type { OrtRunner } from '../native/ort-runner.js';
import type { KvPoolShape, KvStorage } from './pool.js';

/** What writeFromDevice needs of each sequence: its block table and the positions it already holds. */
export interface PositionsOwner {
  readonly blocks: ArrayLike<number>;
  readonly offset: number;
}

/** Host blocks are pinned in chunks of this many, as swap first needs them. */
const HOST_CHUNK = 64;

/** Every view a graph is bound to starts on this boundary, as ONNX Runtime's own allocations do (CUDA kernels may load vectors). */
export const VIEW_ALIGN = 256;

export function aligned(bytes: number): number {
  return Math.ceil(bytes / VIEW_ALIGN) * VIEW_ALIGN;
}

/**
 * The KV pool in the memory of an OrtRunner's session — CUDA device memory under the CUDA
 * provider, host memory under CPU — as one buffer laid out [layer][k|v][kvHead][block]
 * [blockSize][headDim], so that layer l's keys are one [kvHeads, blocks, blockSize, headDim]
 * view the fast graph binds as its pool input, read in place by every run. Every block
 * operation is a batch of strided copies the runner executes where the memory lives
 * (memmove, or cudaMemcpy2D on the device); host blocks for swapped-out sequences are pinned
 * host memory, allocated in chunks on first use. Nothing here passes through JavaScript arrays
 * except `writePositions`/`readPositions`, whose sources and targets are host arrays by
 * contract (the `hf` interface); the fast graph's new keys and values are written from a
 * device buffer with `writeFromDevice`.
 */
export class DeviceKvStorage implements KvStorage {
  /** The pool buffer (runner buffer id): bind views of it with `laneOffset`. */
  readonly buffer: number;
  private readonly blockFloats: number;
  /** Bytes between a head's rows of consecutive blocks: one head of one (layer, k|v) lane. */
  private readonly headBytes: number;
  /** Bytes between (layer, k|v) lanes: a lane, rounded up to VIEW_ALIGN. */
  private readonly laneBytes: number;
  private readonly hostChunks: number[] = [];
  private regions = new Float64Array(6 * 64);
  private scratch = -1;
  private scratchBytes = 0;
  private bytes = 0;

  constructor(
    private readonly runner: OrtRunner,
    readonly shape: KvPoolShape,
  ) {
    const { layers, kvHeads, blocks, blockSize, headDim } = shape;
    this.blockFloats = layers * 2 * kvHeads * blockSize * headDim;
    this.headBytes = blocks * blockSize * headDim * 4;
    this.laneBytes = aligned(kvHeads * this.headBytes);
    this.buffer = runner.allocate(layers * 2 * this.laneBytes, 'device', { kv: true });
  }

  /** Byte offset of layer `layer`'s keys (kv 0) or values (kv 1) in `buffer`. */
  laneOffset(layer: number, kv: 0 | 1): number {
    return (2 * layer + kv) * this.laneBytes;
  }

  takeBytesCopied(): number {
    const b = this.bytes;
    this.bytes = 0;
    return b;
  }

  private reserve(regions: number): Float64Array {
    if (this.regions.length < regions * 6) this.regions = new Float64Array(Math.max(regions * 6, this.regions.length * 2));
    return this.regions;
  }

  /** Regions moving one whole block between the pool and a packed block ([layer][k|v][kvHead][blockSize][headDim]) at `packedOffset`. */
  private blockRegions(block: number, packedOffset: number, poolIsDst: boolean): number {
    const { layers, kvHeads, blockSize, headDim } = this.shape;
    const row = blockSize * headDim * 4;
    const reg = this.reserve(layers * 2);
    let at = 0;
    for (let lane = 0; lane < layers * 2; lane++) {
      const pool = lane * this.laneBytes + block * row;
      const packed = packedOffset + lane * kvHeads * row;
      reg[at++] = poolIsDst ? pool : packed;
      reg[at++] = poolIsDst ? this.headBytes : row;
      reg[at++] = poolIsDst ? packed : pool;
      reg[at++] = poolIsDst ? row : this.headBytes;
      reg[at++] = row;
      reg[at++] = kvHeads;
    }
    return layers * 2;
  }

  copyBlock(src: number, dst: number): void {
    const { layers, kvHeads, blockSize, headDim } = this.shape;
    const row = blockSize * headDim * 4;
    const reg = this.reserve(layers * 2);
    let at = 0;
    for (let lane = 0; lane < layers * 2; lane++) {
      reg[at++] = lane * this.laneBytes + dst * row;
      reg[at++] = this.headBytes;
      reg[at++] = lane * this.laneBytes + src * row;
      reg[at++] = this.headBytes;
      reg[at++] = row;
      reg[at++] = kvHeads;
    }
    this.runner.copy(this.buffer, this.buffer, reg, layers * 2);
    this.bytes += this.blockFloats * 4;
  }

  /** The host chunk holding host block `hostBlock`, allocated on first use, and the block's byte offset in it. */
  private host(hostBlock: number, allocate: boolean): { buffer: number; offset: number } {
    const chunk = Math.floor(hostBlock / HOST_CHUNK);
    let buffer = this.hostChunks[chunk];
    if (buffer === undefined) {
      if (!allocate) throw new RangeError(`host block ${hostBlock} holds nothing`);
      const blocks = Math.min(HOST_CHUNK, this.shape.hostBlocks - chunk * HOST_CHUNK);
      buffer = this.runner.allocate(blocks * this.blockFloats * 4, 'host', { kv: true });
      this.hostChunks[chunk] = buffer;
    }
    return { buffer, offset: (hostBlock - chunk * HOST_CHUNK) * this.blockFloats * 4 };
  }

  swapOut(block: number, hostBlock: number): void {
    const h = this.host(hostBlock, true);
    this.runner.copy(h.buffer, this.buffer, this.regions, this.blockRegions(block, h.offset, false));
    this.bytes += this.blockFloats * 4;
  }

  swapIn(hostBlock: number, block: number): void {
    const h = this.host(hostBlock, false);
    this.runner.copy(this.buffer, h.buffer, this.regions, this.blockRegions(block, h.offset, true));
    this.bytes += this.blockFloats * 4;
  }

  /**
   * Regions between positions [start, start + count) of one sequence (its block table) in
   * lane `lane` of the pool and a buffer holding, per head h, those positions at
   * at + h·headStride + t·headDim floats; written into `reg` from index `first` (regions).
   * Returns how many regions (one per run of positions inside a block, every head a row).
   */
  private positionRegions(reg: Float64Array, first: number, lane: number, table: ArrayLike<number>, start: number, count: number, at: number, headStride: number, poolIsDst: boolean): number {
    const { blockSize: bs, headDim: hd } = this.shape;
    let n = 0;
    let t = 0;
    let i = first * 6;
    while (t < count) {
      const pos = start + t;
      const within = pos % bs;
      const run = Math.min(bs - within, count - t);
      const pool = lane * this.laneBytes + ((table[(pos - within) / bs] as number) * bs + within) * hd * 4;
      const buf = (at + t * hd) * 4;
      reg[i++] = poolIsDst ? pool : buf;
      reg[i++] = poolIsDst ? this.headBytes : headStride * 4;
      reg[i++] = poolIsDst ? buf : pool;
      reg[i++] = poolIsDst ? headStride * 4 : this.headBytes;
      reg[i++] = run * hd * 4;
      reg[i++] = this.shape.kvHeads;
      n++;
      t += run;
    }
    return n;
  }

  /** Most regions positionRegions can emit for `count` positions. */
  private maxRuns(count: number): number {
    return Math.ceil(count / this.shape.blockSize) + 1;
  }

  /**
   * New keys and values already in device buffer `src` — layer l's keys at (2l)·laneBytes and
   * its values at (2l + 1)·laneBytes (laneBytes a multiple of 4), each [count][kvHeads][width][headDim] — written into the
   * blocks of owners[group[j]] from its offset on, in one batch of copies.
   */
  writeFromDevice(src: number, laneBytes: number, owners: readonly PositionsOwner[], group: ArrayLike<number>, count: number, width: number): void {
    const { layers, kvHeads, headDim: hd } = this.shape;
    const reg = this.reserve(count * layers * 2 * this.maxRuns(width));
    let n = 0;
    for (let j = 0; j < count; j++) {
      const owner = owners[group[j] as number] as PositionsOwner;
      for (let lane = 0; lane < layers * 2; lane++) {
        const base = (lane * laneBytes) / 4 + j * kvHeads * width * hd;
        n += this.positionRegions(reg, n, lane, owner.blocks, owner.offset, width, base, width * hd, true);
      }
    }
    this.runner.copy(this.buffer, src, reg, n);
    this.bytes += count * width * kvHeads * hd * 8 * layers;
  }

  /** A device scratch buffer of at least `bytes`, grown as needed. */
  private scratchFor(bytes: number): number {
    if (bytes > this.scratchBytes) {
      if (this.scratch >= 0) this.runner.free(this.scratch);
      this.scratchBytes = Math.max(bytes, 2 * this.scratchBytes);
      this.scratch = this.runner.allocate(this.scratchBytes, 'device');
    }
    return this.scratch;
  }

  writePositions(srcKeys: readonly Float32Array[], srcValues: readonly Float32Array[], at: number, headStride: number, table: ArrayLike<number>, start: number, count: number): void {
    const { layers, kvHeads: H, headDim: hd } = this.shape;
    // Each (layer, k|v) source span goes up into its aligned slot of a scratch buffer, then one
    // batch of copies scatters them all into their blocks.
    const span = (H - 1) * headStride + count * hd;
    const slot = aligned(span * 4);
    const scratch = this.scratchFor(2 * layers * slot);
    const reg = this.reserve(2 * layers * this.maxRuns(count));
    let n = 0;
    for (let lane = 0; lane < 2 * layers; lane++) {
      const src = ((lane & 1) === 0 ? srcKeys : srcValues)[lane >> 1] as Float32Array;
      this.runner.write(scratch, lane * slot, src.subarray(at, at + span));
      n += this.positionRegions(reg, n, lane, table, start, count, (lane * slot) / 4, headStride, true);
    }
    this.runner.copy(this.buffer, scratch, reg, n);
    this.bytes += count * H * hd * 8 * layers;
  }

  readPositions(layer: number, table: ArrayLike<number>, start: number, count: number, dstKeys: Float32Array, dstValues: Float32Array, at: number, headStride: number): void {
    const { kvHeads: H, headDim: hd } = this.shape;
    const span = (H - 1) * headStride + count * hd;
    const scratch = this.scratchFor(2 * span * 4);
    const reg = this.reserve(2 * this.maxRuns(count));
    let n = this.positionRegions(reg, 0, 2 * layer, table, start, count, 0, headStride, false);
    n += this.positionRegions(reg, n, 2 * layer + 1, table, start, count, span, headStride, false);
    // The strides between heads leave gaps the pool does not fill: start from the caller's values.
    this.runner.write(scratch, 0, dstKeys.subarray(at, at + span));
    this.runner.write(scratch, span * 4, dstValues.subarray(at, at + span));
    this.runner.copy(scratch, this.buffer, reg, n);
    this.runner.read(scratch, 0, dstKeys.subarray(at, at + span));
    this.runner.read(scratch, span * 4, dstValues.subarray(at, at + span));
    this.bytes += count * H * hd * 8;
  }
}

