import { InvalidArgumentError, ModelFormatError } from '../errors.js';
import { IO } from '../models/llama/graph.js';
import { ElementType, OrtRunner, RunnerStat } from '../native/ort-runner.js';
import type { KvGeometry } from './js-kv-backend.js';
import type { FastRun, FastRunOutput, KvBackend } from './kv-backend.js';
import type { ExecutionProvider } from './types.js';

const F32 = ElementType.float32;
const I64 = ElementType.int64;

export interface BoundKvOptions {
  vocab: number;
  /** Largest k a ranked run fetches, given the graph's inputs (0: no in-graph top-k, or disabled). */
  rankedLimit: (inputs: ReadonlySet<string>) => number;
}

/**
 * The cache as one buffer in the session's memory — device memory under CUDA, host memory
 * under CPU — laid out [layer][k|v][slot][kvHead][capacity][headDim], and the fast graph run
 * over it through an OrtRunner (ONNX Runtime's C API with I/O binding). Every run binds views
 * of that buffer as the past keys and values, so the cache is read where it lives and never
 * copied; the step's inputs go in as one small upload, logits (or each row's k best) come out
 * into host buffers, and the graph's new keys and values land in a device scratch buffer from
 * which one batched strided copy writes them at each sequence's end. Prefix-cache blocks are
 * kept in device buffers and swapped-out sequences in host (pinned) buffers, all copied where
 * the memory lives. The runner counts every byte read out of those buffers: kvBytesCopied.
 */
export class BoundKvBackend implements KvBackend {
  readonly path = 'io-binding' as const;
  readonly memory: 'device' | 'host';
  readonly inputNames: ReadonlySet<string>;
  readonly provider: ExecutionProvider;
  private readonly slotStride: number;
  private readonly lane: number;
  private readonly pool: number;
  private readonly logitsBuf: number;
  private readonly logitsView: Float32Array;
  private readonly valuesBuf: number;
  private readonly valuesView: Float32Array;
  private readonly idsBuf: number;
  private readonly idsView: BigInt64Array;
  private small = -1;
  private smallCap = 0;
  private staging = new BigInt64Array(0);
  private fresh = -1;
  private freshTokens = 0;
  private regions = new Float64Array(0);
  private readonly dims = new Float64Array(4);
  private ranked: boolean | undefined;
  private readonly blocks = new Map<number, number>();
  private readonly swapped = new Map<number, number>();
  private nextSwap = 0;
  // Input and output indices, resolved once.
  private readonly inIds: number;
  private readonly inPos: number;
  private readonly inLengths: number;
  private readonly inRows: number;
  private readonly inTopK: number;
  private readonly inPastK: number[];
  private readonly inPastV: number[];
  private readonly outLogits: number;
  private readonly outTopValues: number;
  private readonly outTopIds: number;
  private readonly outNewK: number[];
  private readonly outNewV: number[];
  private readonly maxRanked: number;

  private constructor(
    private readonly runner: OrtRunner,
    private readonly g: KvGeometry,
    private readonly o: BoundKvOptions,
  ) {
    this.provider = runner.provider;
    this.memory = runner.provider === 'cuda' ? 'device' : 'host';
    this.inputNames = new Set(runner.inputs.map((v) => v.name));
    const needed = [IO.inputIds, IO.positionIds, IO.pastLengths, IO.logitsRows, ...Array.from({ length: g.layers }, (_, l) => [IO.pastKey(l), IO.pastValue(l)]).flat()];
    const missing = needed.filter((n) => !runner.hasInput(n));
    if (missing.length > 0) throw new ModelFormatError(`the fast graph lacks the inputs ${missing.join(', ')}`);
    this.inIds = runner.input(IO.inputIds);
    this.inPos = runner.input(IO.positionIds);
    this.inLengths = runner.input(IO.pastLengths);
    this.inRows = runner.input(IO.logitsRows);
    this.inTopK = runner.hasInput(IO.topK) ? runner.input(IO.topK) : -1;
    this.inPastK = Array.from({ length: g.layers }, (_, l) => runner.input(IO.pastKey(l)));
    this.inPastV = Array.from({ length: g.layers }, (_, l) => runner.input(IO.pastValue(l)));
    this.maxRanked = o.rankedLimit(this.inputNames);
    this.outLogits = runner.output(IO.logits);
    this.outTopValues = this.maxRanked > 0 ? runner.output(IO.topKValues) : -1;
    this.outTopIds = this.maxRanked > 0 ? runner.output(IO.topKIndices) : -1;
    this.outNewK = Array.from({ length: g.layers }, (_, l) => runner.output(IO.newKey(l)));
    this.outNewV = Array.from({ length: g.layers }, (_, l) => runner.output(IO.newValue(l)));

    this.slotStride = g.kvHeads * g.capacity * g.headDim;
    this.lane = g.slots * this.slotStride;
    this.pool = runner.allocate(g.layers * 2 * this.lane * 4, 'device', { kv: true });
    this.logitsBuf = runner.allocate(g.slots * o.vocab * 4, 'host');
    this.logitsView = new Float32Array(runner.view(this.logitsBuf) as ArrayBuffer);
    const ranked = Math.max(1, this.maxRanked);
    this.valuesBuf = runner.allocate(g.slots * ranked * 4, 'host');
    this.valuesView = new Float32Array(runner.view(this.valuesBuf) as ArrayBuffer);
    this.idsBuf = runner.allocate(g.slots * ranked * 8, 'host');
    this.idsView = new BigInt64Array(runner.view(this.idsBuf) as ArrayBuffer);
    this.growSmall(g.slots * 4 + 1);
    this.growFresh(g.slots);
  }

  /** Opens the graph on `provider`; rejects with the runner's error (code ORT_PROVIDER when the provider cannot load). */
  static async open(graphPath: string, provider: ExecutionProvider, g: KvGeometry, o: BoundKvOptions, threads: { intraOpThreads?: number; interOpThreads?: number }): Promise<BoundKvBackend> {
    const runner = await OrtRunner.open(graphPath, { provider, ...threads });
    try {
      return new BoundKvBackend(runner, g, o);
    } catch (e) {
      runner.release();
      throw e;
    }
  }

  /** ONNX Runtime's version, for the log line. */
  get version(): string {
    return this.runner.version;
  }

  /** The runner's own counters (RunnerStat), for tests and benchmarks. */
  stat(which: number): number {
    return this.runner.stat(which);
  }

  kvBytesCopied(): number {
    return this.runner.stat(RunnerStat.kvCopiedBytes);
  }

  // Grown, never shrunk. A buffer that inputs (outputs) are bound to is freed only after
  // they are bound to its replacement, which the run that needed the room does first.
  private growSmall(int64s: number): number {
    if (int64s <= this.smallCap) return -1;
    const cap = Math.max(int64s, this.smallCap * 2);
    const old = this.small;
    this.small = this.runner.allocate(cap * 8, 'device');
    this.smallCap = cap;
    this.staging = new BigInt64Array(cap);
    return old;
  }

  private growFresh(tokens: number): number {
    if (tokens <= this.freshTokens) return -1;
    const cap = Math.max(tokens, this.freshTokens * 2);
    const old = this.fresh;
    this.fresh = this.runner.allocate(this.g.layers * 2 * cap * this.g.kvHeads * this.g.headDim * 4, 'device');
    this.freshTokens = cap;
    return old;
  }

  private bindIn(index: number, buffer: number, byteOffset: number, type: number, rank: number): void {
    this.runner.bindInputAt(index, buffer, byteOffset, type, this.dims, rank);
  }

  private bindOut(index: number, buffer: number, byteOffset: number, type: number, rank: number): void {
    this.runner.bindOutputAt(index, buffer, byteOffset, type, this.dims, rank);
  }

  async runFast(r: FastRun): Promise<FastRunOutput> {
    const { g, runner, dims } = this;
    const bw = r.b * r.width;
    const rowCount = r.rows.length;
    // [ids | positions | lengths | rows | k], one upload.
    const total = 2 * bw + r.b + rowCount + 1;
    const oldSmall = this.growSmall(total);
    const st = this.staging;
    st.set(r.ids, 0);
    st.set(r.pos, bw);
    st.set(r.lengths, 2 * bw);
    st.set(r.rows, 2 * bw + r.b);
    st[total - 1] = BigInt(r.k);
    runner.write(this.small, 0, st.subarray(0, total));
    dims[0] = r.b;
    dims[1] = r.width;
    this.bindIn(this.inIds, this.small, 0, I64, 2);
    this.bindIn(this.inPos, this.small, bw * 8, I64, 2);
    this.bindIn(this.inLengths, this.small, 2 * bw * 8, I64, 1);
    dims[0] = rowCount;
    this.bindIn(this.inRows, this.small, (2 * bw + r.b) * 8, I64, 1);
    if (this.inTopK >= 0) {
      dims[0] = 1;
      this.bindIn(this.inTopK, this.small, (total - 1) * 8, I64, 1);
    }
    if (oldSmall >= 0) runner.free(oldSmall);

    dims[0] = r.b;
    dims[1] = g.kvHeads;
    dims[2] = g.capacity;
    dims[3] = g.headDim;
    for (let l = 0; l < g.layers; l++) {
      this.bindIn(this.inPastK[l] as number, this.pool, ((2 * l) * this.lane + r.lo * this.slotStride) * 4, ElementType.float32, 4);
      this.bindIn(this.inPastV[l] as number, this.pool, ((2 * l + 1) * this.lane + r.lo * this.slotStride) * 4, ElementType.float32, 4);
    }

    // Outputs: an output left bound from the other mode would still be computed (and its shape
    // checked), so switching between full logits and ranked rows clears them all first.
    if (this.ranked !== r.ranked) {
      runner.clearOutputs();
      this.ranked = r.ranked;
    }
    dims[0] = rowCount;
    if (r.ranked) {
      dims[1] = r.k;
      this.bindOut(this.outTopValues, this.valuesBuf, 0, F32, 2);
      this.bindOut(this.outTopIds, this.idsBuf, 0, I64, 2);
    } else {
      dims[1] = this.o.vocab;
      this.bindOut(this.outLogits, this.logitsBuf, 0, F32, 2);
    }
    const oldFresh = this.growFresh(bw);
    const freshLane = bw * g.kvHeads * g.headDim;
    dims[0] = r.b;
    dims[1] = g.kvHeads;
    dims[2] = r.width;
    dims[3] = g.headDim;
    for (let l = 0; l < g.layers; l++) {
      this.bindOut(this.outNewK[l] as number, this.fresh, 2 * l * freshLane * 4, F32, 4);
      this.bindOut(this.outNewV[l] as number, this.fresh, (2 * l + 1) * freshLane * 4, F32, 4);
    }
    if (oldFresh >= 0) runner.free(oldFresh);

    await runner.run();

    // New keys and values, [b][kvHead][width][headDim] per layer and K/V, to their positions:
    // one strided region per (sequence, layer, K/V), every head a row.
    const count = r.writes * g.layers * 2;
    if (this.regions.length < count * 6) this.regions = new Float64Array(count * 6);
    const reg = this.regions;
    const span = r.width * g.headDim * 4;
    const cachePitch = g.capacity * g.headDim * 4;
    let at = 0;
    for (let j = 0; j < r.writes; j++) {
      const s = r.writeRow[j] as number;
      const len = r.writeAt[j] as number;
      for (let lk = 0; lk < g.layers * 2; lk++) {
        reg[at++] = (lk * this.lane + (r.lo + s) * this.slotStride) * 4 + len * g.headDim * 4;
        reg[at++] = cachePitch;
        reg[at++] = lk * freshLane * 4 + s * g.kvHeads * span;
        reg[at++] = span;
        reg[at++] = span;
        reg[at++] = g.kvHeads;
      }
    }
    runner.copy(this.pool, this.fresh, reg, count);
    if (r.ranked) return { values: this.valuesView, ids: this.idsView, k: r.k };
    return { logits: this.logitsView, k: 0 };
  }

  /**
   * Regions between positions [from, from + n) of a slot in the pool and a packed copy
   * ([layer][k|v][kvHead][n][headDim], starting at packedFrom positions into a copy of
   * `packedN` positions), with the pool on the `poolIsDst` side.
   */
  private packedRegions(slot: number, from: number, n: number, poolIsDst: boolean): number {
    const { g } = this;
    const count = g.layers * 2;
    if (this.regions.length < count * 6) this.regions = new Float64Array(count * 6);
    const reg = this.regions;
    const row = n * g.headDim * 4;
    let at = 0;
    for (let lk = 0; lk < count; lk++) {
      const poolOff = (lk * this.lane + slot * this.slotStride + from * g.headDim) * 4;
      const packedOff = lk * g.kvHeads * row;
      reg[at++] = poolIsDst ? poolOff : packedOff;
      reg[at++] = poolIsDst ? g.capacity * g.headDim * 4 : row;
      reg[at++] = poolIsDst ? packedOff : poolOff;
      reg[at++] = poolIsDst ? row : g.capacity * g.headDim * 4;
      reg[at++] = row;
      reg[at++] = g.kvHeads;
    }
    return count;
  }

  private packedBytes(n: number): number {
    return this.g.layers * 2 * this.g.kvHeads * n * this.g.headDim * 4;
  }

  storeBlock(slot: number, from: number, n: number, blockId: number): void {
    let buf = this.blocks.get(blockId);
    if (buf === undefined) {
      buf = this.runner.allocate(this.packedBytes(n), 'device', { kv: true });
      this.blocks.set(blockId, buf);
    }
    this.runner.copy(buf, this.pool, this.regions, this.packedRegions(slot, from, n, false));
  }

  hasBlock(blockId: number): boolean {
    return this.blocks.has(blockId);
  }

  loadBlocks(slot: number, blockIds: readonly number[], n: number): void {
    const bufs = blockIds.map((id) => {
      const buf = this.blocks.get(id);
      if (buf === undefined) throw new InvalidArgumentError(`block ${id} was never stored`);
      return buf;
    });
    for (let i = 0; i < bufs.length; i++) {
      this.runner.copy(this.pool, bufs[i] as number, this.regions, this.packedRegions(slot, i * n, n, true));
    }
  }

  swapOut(slot: number, len: number): number {
    const buf = this.runner.allocate(this.packedBytes(len), 'host', { kv: true });
    if (len > 0) this.runner.copy(buf, this.pool, this.regions, this.packedRegions(slot, 0, len, false));
    const handle = this.nextSwap++;
    this.swapped.set(handle, buf);
    return handle;
  }

  swapIn(handle: number, slot: number, len: number): void {
    const buf = this.swapped.get(handle);
    if (buf === undefined) throw new InvalidArgumentError(`no swapped-out cache ${handle}`);
    if (len > 0) this.runner.copy(this.pool, buf, this.regions, this.packedRegions(slot, 0, len, true));
    this.dropSwap(handle);
  }

  dropSwap(handle: number): void {
    const buf = this.swapped.get(handle);
    if (buf === undefined) return;
    this.swapped.delete(handle);
    this.runner.free(buf);
  }

  async dispose(): Promise<void> {
    this.runner.release();
  }
}
