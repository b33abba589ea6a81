import * as ort from 'onnxruntime-node';
import { InvalidArgumentError } from '../errors.js';
import { IO } from '../models/llama/graph.js';
import { kvCopy, type KvShape } from '../native/kv-copy.js';
import type { FastRun, FastRunOutput, KvBackend } from './kv-backend.js';
import type { ExecutionProvider } from './types.js';

/** The cache's geometry, shared by both backends. */
export interface KvGeometry {
  layers: number;
  kvHeads: number;
  headDim: number;
  /** Positions per slot. */
  capacity: number;
  slots: number;
}

/**
 * The cache in host arrays (one per layer and per K/V), run through onnxruntime-node's
 * JavaScript session: views of the slot range go in as input tensors (no copy under CPU; under
 * CUDA ONNX Runtime copies each view to the device every run), and the graph's new keys and
 * values come back as host tensors that are written at each sequence's end. The `hf` flavour's
 * packing code reads `keys` and `values` directly.
 */
export class JsKvBackend implements KvBackend {
  readonly path = 'onnxruntime-node' as const;
  readonly memory = 'host' as const;
  readonly inputNames: ReadonlySet<string>;
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  private readonly shape: KvShape;
  private readonly slotStride: number;
  /** Prefix-cache copies by block id: [layer][k|v][kvHead][n][headDim]. */
  private readonly blocks = new Map<number, Float32Array>();
  private readonly swapped = new Map<number, Float32Array>();
  private nextSwap = 0;
  private copied = 0;
  private readonly kBuf = new BigInt64Array(1);

  constructor(
    readonly session: ort.InferenceSession,
    readonly provider: ExecutionProvider,
    private readonly g: KvGeometry,
  ) {
    this.inputNames = new Set(session.inputNames);
    this.slotStride = g.kvHeads * g.capacity * g.headDim;
    this.keys = Array.from({ length: g.layers }, () => new Float32Array(g.slots * this.slotStride));
    this.values = Array.from({ length: g.layers }, () => new Float32Array(g.slots * this.slotStride));
    this.shape = { kvHeads: g.kvHeads, capacity: g.capacity, headDim: g.headDim };
  }

  kvBytesCopied(): number {
    return this.copied;
  }

  /** Counts cache bytes an `hf` run copies (its packing, and the graph's concatenated present). */
  countCopied(bytes: number): void {
    this.copied += bytes;
  }

  async runFast(r: FastRun): Promise<FastRunOutput> {
    const { g } = this;
    const feeds: Record<string, ort.Tensor> = {
      [IO.inputIds]: new ort.Tensor('int64', r.ids, [r.b, r.width]),
      [IO.positionIds]: new ort.Tensor('int64', r.pos, [r.b, r.width]),
      [IO.pastLengths]: new ort.Tensor('int64', r.lengths, [r.b]),
      [IO.logitsRows]: new ort.Tensor('int64', r.rows, [r.rows.length]),
    };
    const dims = [r.b, g.kvHeads, g.capacity, g.headDim];
    const from = r.lo * this.slotStride;
    const to = (r.lo + r.b) * this.slotStride;
    for (let l = 0; l < g.layers; l++) {
      feeds[IO.pastKey(l)] = new ort.Tensor('float32', (this.keys[l] as Float32Array).subarray(from, to), dims);
      feeds[IO.pastValue(l)] = new ort.Tensor('float32', (this.values[l] as Float32Array).subarray(from, to), dims);
    }
    // Under CUDA every cache view handed over is copied to the device by ONNX Runtime.
    if (this.provider === 'cuda') this.copied += 2 * g.layers * (to - from) * 4;
    if (this.inputNames.has(IO.topK)) {
      this.kBuf[0] = BigInt(r.k);
      feeds[IO.topK] = new ort.Tensor('int64', this.kBuf, [1]);
    }
    const fetches: string[] = r.ranked ? [IO.topKValues, IO.topKIndices] : [IO.logits];
    for (let l = 0; l < g.layers; l++) fetches.push(IO.newKey(l), IO.newValue(l));
    const out = await this.session.run(feeds, fetches);
    const hd = g.headDim;
    const span = r.width * hd;
    for (let l = 0; l < g.layers; l++) {
      const newK = out[IO.newKey(l)]?.data as Float32Array;
      const newV = out[IO.newValue(l)]?.data as Float32Array;
      const keys = this.keys[l] as Float32Array;
      const values = this.values[l] as Float32Array;
      for (let j = 0; j < r.writes; j++) {
        const s = r.writeRow[j] as number;
        const len = r.writeAt[j] as number;
        for (let h = 0; h < g.kvHeads; h++) {
          const src = (s * g.kvHeads + h) * span;
          const dst = (r.lo + s) * this.slotStride + (h * g.capacity + len) * hd;
          keys.set(newK.subarray(src, src + span), dst);
          values.set(newV.subarray(src, src + span), dst);
        }
      }
    }
    if (r.ranked) return { values: out[IO.topKValues]?.data as Float32Array, ids: out[IO.topKIndices]?.data as BigInt64Array, k: r.k };
    return { logits: out[IO.logits]?.data as Float32Array, k: 0 };
  }

  private packedFloats(n: number): number {
    return this.g.layers * 2 * this.g.kvHeads * n * this.g.headDim;
  }

  storeBlock(slot: number, from: number, n: number, blockId: number): void {
    let copy = this.blocks.get(blockId);
    if (copy === undefined || copy.length !== this.packedFloats(n)) {
      copy = new Float32Array(this.packedFloats(n));
      this.blocks.set(blockId, copy);
    }
    kvCopy('gather', this.keys, this.values, this.shape, slot, from, n, [copy]);
    this.copied += copy.length * 4;
  }

  hasBlock(blockId: number): boolean {
    return this.blocks.has(blockId);
  }

  loadBlocks(slot: number, blockIds: readonly number[], n: number): void {
    const copies = blockIds.map((id) => {
      const copy = this.blocks.get(id);
      if (copy === undefined) throw new InvalidArgumentError(`block ${id} was never stored`);
      return copy;
    });
    kvCopy('scatter', this.keys, this.values, this.shape, slot, 0, n, copies);
    this.copied += copies.length * this.packedFloats(n) * 4;
  }

  swapOut(slot: number, len: number): number {
    const data = new Float32Array(this.packedFloats(len));
    if (len > 0) kvCopy('gather', this.keys, this.values, this.shape, slot, 0, len, [data]);
    this.copied += data.length * 4;
    const handle = this.nextSwap++;
    this.swapped.set(handle, data);
    return handle;
  }

  swapIn(handle: number, slot: number, len: number): void {
    const data = this.swapped.get(handle);
    if (data === undefined) throw new InvalidArgumentError(`no swapped-out cache ${handle}`);
    if (len > 0) kvCopy('scatter', this.keys, this.values, this.shape, slot, 0, len, [data]);
    this.copied += data.length * 4;
    this.swapped.delete(handle);
  }

  dropSwap(handle: number): void {
    this.swapped.delete(handle);
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}
