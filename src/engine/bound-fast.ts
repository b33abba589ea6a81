import { ModelFormatError } from '../errors.js';
import { aligned, DeviceKvStorage, type PositionsOwner } from '../kv/device-pool.js';
import type { KvPoolShape } from '../kv/pool.js';
import { IO } from '../models/llama/graph.js';
import { ElementType, OrtRunner, RunnerStat } from '../native/ort-runner.js';

const F32 = ElementType.float32;
const I64 = ElementType.int64;
const I32 = ElementType.int32;

/** A run's output for sampling: full logits rows, or each row's k best (values and ids, best first). */
export interface BoundRunOutput {
  logits?: Float32Array;
  values?: Float32Array;
  ids?: BigInt64Array;
  k: number;
}

/** What a run needs of each item: tokens to feed and where its positions live. */
export interface BoundItem extends PositionsOwner {
  readonly tokens: ArrayLike<number>;
}

/**
 * The fast graph on an OrtRunner (ONNX Runtime's C API with I/O binding), over the paged pool
 * in the session's memory (DeviceKvStorage): every run binds each layer's whole key and value
 * pool as the graph's pool inputs — read in place, the graph gathers the blocks the tables
 * name — uploads the step's small inputs (ids, positions, lengths, rows, k, block tables) in
 * one write, fetches logits (or each row's k best) into host buffers, and writes the graph's
 * new keys and values from a device buffer into their blocks with one batch of copies. No
 * byte of the cache leaves the pool's memory.
 */
export class BoundFastGraph {
  readonly pool: DeviceKvStorage;
  private small = -1;
  private smallBytes = 0;
  private staging = new ArrayBuffer(0);
  private words = new Int32Array(0);
  private fresh = -1;
  private freshBytes = 0;
  private logitsBuf = -1;
  private logitsView = new Float32Array(0);
  private valuesBuf = -1;
  private valuesView = new Float32Array(0);
  private idsBuf = -1;
  private idsView = new BigInt64Array(0);
  private readonly dims = new Float64Array(4);
  private ranked: boolean | undefined;
  private readonly inIds: number;
  private readonly inPos: number;
  private readonly inLengths: number;
  private readonly inRows: number;
  private readonly inTables: number;
  private readonly inTopK: number;
  private readonly inPoolK: number[];
  private readonly inPoolV: number[];
  private readonly outLogits: number;
  private readonly outTopValues: number;
  private readonly outTopIds: number;
  private readonly outNewK: number[];
  private readonly outNewV: number[];

  constructor(
    readonly runner: OrtRunner,
    private readonly shape: KvPoolShape,
    private readonly vocab: number,
    maxRanked: number,
  ) {
    const needed: string[] = [IO.inputIds, IO.positionIds, IO.pastLengths, IO.logitsRows, IO.blockTables];
    for (let l = 0; l < shape.layers; l++) needed.push(IO.poolKey(l), IO.poolValue(l));
    const missing = needed.filter((n) => !runner.hasInput(n));
    if (missing.length > 0) throw new ModelFormatError(`the fast graph lacks the inputs ${missing.join(', ')} (a model written by an older marginal: import or synthesize it again)`);
    this.inIds = runner.input(IO.inputIds);
    this.inPos = runner.input(IO.positionIds);
    this.inLengths = runner.input(IO.pastLengths);
    this.inRows = runner.input(IO.logitsRows);
    this.inTables = runner.input(IO.blockTables);
    this.inTopK = runner.hasInput(IO.topK) ? runner.input(IO.topK) : -1;
    this.inPoolK = Array.from({ length: shape.layers }, (_, l) => runner.input(IO.poolKey(l)));
    this.inPoolV = Array.from({ length: shape.layers }, (_, l) => runner.input(IO.poolValue(l)));
    this.outLogits = runner.output(IO.logits);
    this.outTopValues = maxRanked > 0 ? runner.output(IO.topKValues) : -1;
    this.outTopIds = maxRanked > 0 ? runner.output(IO.topKIndices) : -1;
    this.outNewK = Array.from({ length: shape.layers }, (_, l) => runner.output(IO.newKey(l)));
    this.outNewV = Array.from({ length: shape.layers }, (_, l) => runner.output(IO.newValue(l)));
    this.pool = new DeviceKvStorage(runner, shape);
  }

  /** The runner's cumulative counter `which` (RunnerStat). */
  stat(which: number): number {
    return this.runner.stat(which);
  }

  /** Bytes of the cache read out of KV buffers so far: block moves, and (never, on this path) runs. */
  kvCopiedBytes(): number {
    return this.runner.stat(RunnerStat.kvCopiedBytes);
  }

  // Buffers grow, never shrink. One that bindings refer to is freed only after the run that
  // needed the room has bound everything to its replacement.
  private grow(current: number, currentBytes: number, bytes: number, where: 'device' | 'host'): { buffer: number; bytes: number; old: number } {
    if (bytes <= currentBytes) return { buffer: current, bytes: currentBytes, old: -1 };
    const size = Math.max(bytes, 2 * currentBytes);
    return { buffer: this.runner.allocate(size, where), bytes: size, old: current };
  }

  private bindIn(index: number, buffer: number, byteOffset: number, type: number, rank: number): void {
    this.runner.bindInputAt(index, buffer, byteOffset, type, this.dims, rank);
  }

  private bindOut(index: number, buffer: number, byteOffset: number, type: number, rank: number): void {
    this.runner.bindOutputAt(index, buffer, byteOffset, type, this.dims, rank);
  }

  /**
   * One run over `count` items of equal `width` (items[group[j]]), their tables padded to `nb`
   * blocks with block 0 (masked by their lengths), computing logits (or their k best) for the
   * `rowCount` flattened positions rows[0 .. rowCount) (item j's positions are rows j·width …
   * j·width + width − 1), then the new keys and values written into their blocks.
   */
  async run(items: readonly BoundItem[], group: ArrayLike<number>, count: number, width: number, nb: number, rows: ArrayLike<number>, rowCount: number, ranked: boolean, k: number): Promise<BoundRunOutput> {
    const { runner, dims, shape } = this;
    const bs = shape.blockSize;
    const cw = count * width;
    // [ids | positions | lengths | rows | k] as int64, then the tables as int32, each section
    // aligned; int64s are written as their two int32 words (values are below 2^31), so no
    // BigInt is made.
    const idsAt = 0;
    const posAt = aligned(cw * 8);
    const lengthsAt = posAt + aligned(cw * 8);
    const rowsAt = lengthsAt + aligned(count * 8);
    const kAt = rowsAt + aligned(rowCount * 8);
    const tablesAt = kAt + aligned(8);
    const bytes = tablesAt + count * nb * 4;
    const small = this.grow(this.small, this.smallBytes, bytes, 'device');
    this.small = small.buffer;
    this.smallBytes = small.bytes;
    if (this.staging.byteLength < bytes) {
      this.staging = new ArrayBuffer(this.smallBytes);
      this.words = new Int32Array(this.staging);
    }
    const w = this.words;
    w.fill(0, 0, tablesAt / 4);
    const ids = idsAt / 4;
    const pos = posAt / 4;
    const lengths = lengthsAt / 4;
    const rowWords = rowsAt / 4;
    const tables = tablesAt / 4;
    for (let j = 0; j < count; j++) {
      const item = items[group[j] as number] as BoundItem;
      const len = item.offset;
      for (let t = 0; t < width; t++) {
        w[ids + 2 * (j * width + t)] = item.tokens[len + t] as number;
        w[pos + 2 * (j * width + t)] = len + t;
      }
      w[lengths + 2 * j] = len;
      const used = Math.ceil(len / bs);
      for (let b = 0; b < nb; b++) w[tables + j * nb + b] = b < used ? (item.blocks[b] as number) : 0;
    }
    for (let r = 0; r < rowCount; r++) w[rowWords + 2 * r] = rows[r] as number;
    w[kAt / 4] = k;
    runner.write(this.small, 0, this.staging, bytes);
    dims[0] = count;
    dims[1] = width;
    this.bindIn(this.inIds, this.small, idsAt, I64, 2);
    this.bindIn(this.inPos, this.small, posAt, I64, 2);
    dims[1] = nb;
    this.bindIn(this.inTables, this.small, tablesAt, I32, 2);
    this.bindIn(this.inLengths, this.small, lengthsAt, I64, 1);
    dims[0] = rowCount;
    this.bindIn(this.inRows, this.small, rowsAt, I64, 1);
    if (this.inTopK >= 0) {
      dims[0] = 1;
      this.bindIn(this.inTopK, this.small, kAt, I64, 1);
    }
    if (small.old >= 0) runner.free(small.old);
    dims[0] = shape.kvHeads;
    dims[1] = shape.blocks;
    dims[2] = bs;
    dims[3] = shape.headDim;
    for (let l = 0; l < shape.layers; l++) {
      this.bindIn(this.inPoolK[l] as number, this.pool.buffer, this.pool.laneOffset(l, 0), F32, 4);
      this.bindIn(this.inPoolV[l] as number, this.pool.buffer, this.pool.laneOffset(l, 1), F32, 4);
    }

    // An output left bound from the other mode would still be computed (and its shape checked),
    // so a switch between full logits and ranked rows unbinds them all first.
    if (this.ranked !== ranked) {
      runner.clearOutputs();
      this.ranked = ranked;
    }
    dims[0] = rowCount;
    if (ranked) {
      const v = this.grow(this.valuesBuf, this.valuesView.byteLength, rowCount * k * 4, 'host');
      const i = this.grow(this.idsBuf, this.idsView.byteLength, rowCount * k * 8, 'host');
      this.valuesBuf = v.buffer;
      this.idsBuf = i.buffer;
      if (v.old >= 0 || this.valuesView.byteLength === 0) this.valuesView = new Float32Array(runner.view(v.buffer) as ArrayBuffer);
      if (i.old >= 0 || this.idsView.byteLength === 0) this.idsView = new BigInt64Array(runner.view(i.buffer) as ArrayBuffer);
      dims[1] = k;
      this.bindOut(this.outTopValues, this.valuesBuf, 0, F32, 2);
      this.bindOut(this.outTopIds, this.idsBuf, 0, I64, 2);
      if (v.old >= 0) runner.free(v.old);
      if (i.old >= 0) runner.free(i.old);
    } else {
      const g = this.grow(this.logitsBuf, this.logitsView.byteLength, rowCount * this.vocab * 4, 'host');
      this.logitsBuf = g.buffer;
      if (g.old >= 0 || this.logitsView.byteLength === 0) this.logitsView = new Float32Array(runner.view(g.buffer) as ArrayBuffer);
      dims[1] = this.vocab;
      this.bindOut(this.outLogits, this.logitsBuf, 0, F32, 2);
      if (g.old >= 0) runner.free(g.old);
    }
    const laneBytes = aligned(cw * shape.kvHeads * shape.headDim * 4);
    const f = this.grow(this.fresh, this.freshBytes, 2 * shape.layers * laneBytes, 'device');
    this.fresh = f.buffer;
    this.freshBytes = f.bytes;
    dims[0] = count;
    dims[1] = shape.kvHeads;
    dims[2] = width;
    dims[3] = shape.headDim;
    for (let l = 0; l < shape.layers; l++) {
      this.bindOut(this.outNewK[l] as number, this.fresh, 2 * l * laneBytes, F32, 4);
      this.bindOut(this.outNewV[l] as number, this.fresh, (2 * l + 1) * laneBytes, F32, 4);
    }
    if (f.old >= 0) runner.free(f.old);

    // On this thread, as onnxruntime-node's session.run runs: a hop to libuv's pool and back
    // costs more than a small model's whole step, and the engine has a thread of its own when
    // serving (WorkerEngine).
    runner.runSync();
    this.pool.writeFromDevice(this.fresh, laneBytes, items, group, count, width);
    if (ranked) return { values: this.valuesView, ids: this.idsView, k };
    return { logits: this.logitsView, k: 0 };
  }

  dispose(): void {
    this.runner.release();
  }
}
