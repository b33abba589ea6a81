import * as ort from 'onnxruntime-node';
import { performance } from 'node:perf_hooks';
import { ContextLengthError, EngineCapacityError, InvalidArgumentError, ModelFormatError } from '../errors.js';
import { BlockPool } from '../kv/blocks.js';
import type { Flavour, LoadedModel } from '../models/modeldir.js';
import { IO } from '../models/llama/graph.js';
import { BatchSampler } from '../native/sampling.js';
import { JsKvBackend, type KvGeometry } from './js-kv-backend.js';
import type { FastRunOutput, KvBackend } from './kv-backend.js';
import { openKvBackend, type KvBackendChoice } from './open-kv-backend.js';
import { Sampler, type Rng, type SamplingParams } from './sampling.js';
import type { SessionConfig } from './session.js';
import type { Engine, EngineInfo, StepItem, StepPlan, StepResult } from './types.js';

export interface OnnxEngineOptions extends SessionConfig {
  /** Graph flavour; default `fast` where the model has it. */
  flavour?: Flavour;
  /** Sequences resident at once (KV slots). */
  maxSequences?: number;
  /** Tokens per sequence; default the model's context. */
  maxContext?: number;
  /** Tokens per KV block: the accounting unit the scheduler prices. */
  blockSize?: number;
  /**
   * Largest k fetched from the graph's in-graph top-k; steps whose sampled rows are all greedy
   * or top-k ≤ this skip copying full logits. 0 disables it.
   */
  rankedCandidates?: number;
  /**
   * Run the fast graph through ONNX Runtime's C API with I/O binding (the native addon), the
   * KV cache bound in place where the provider keeps memory: true requires it, false uses
   * onnxruntime-node's JavaScript session; default (or MARGINAL_IO_BINDING=1/0): I/O binding
   * wherever the addon can open it.
   */
  ioBinding?: KvBackendChoice;
}

const FREE = -1;

interface EngineGeometry {
  maxSequences: number;
  maxContext: number;
  blockSize: number;
}

function engineGeometry(model: LoadedModel, opts: OnnxEngineOptions): EngineGeometry {
  const maxSequences = opts.maxSequences ?? 32;
  const maxContext = Math.min(opts.maxContext ?? model.kv.maxContext, model.kv.maxContext);
  const blockSize = opts.blockSize ?? 16;
  if (!Number.isInteger(maxSequences) || maxSequences < 1) throw new InvalidArgumentError(`maxSequences must be a positive integer`);
  if (!Number.isInteger(maxContext) || maxContext < 2) throw new InvalidArgumentError(`maxContext must be an integer >= 2`);
  if (!Number.isInteger(blockSize) || blockSize < 1) throw new InvalidArgumentError(`blockSize must be a positive integer`);
  return { maxSequences, maxContext, blockSize };
}

/** The largest k fetched from the graph's in-graph top-k (0 where the graph has none). */
function rankedLimit(inputs: ReadonlySet<string>, opts: OnnxEngineOptions): number {
  return inputs.has(IO.topK) ? (opts.rankedCandidates ?? 64) : 0;
}

type RunOutput = FastRunOutput;

/**
 * The token loop on ONNX Runtime. KV memory is, per layer and per K/V, [maxSequences, kvHeads,
 * capacity, headDim]; a sequence owns one slot of it while open. Where that memory lives and
 * how a graph runs over it is the KvBackend's (kv-backend.ts): device memory bound in place
 * through the native addon's I/O binding, or host arrays through onnxruntime-node.
 *
 * - `fast` graphs read that memory in place (no copy) and return only the new tokens' keys and
 *   values, which are written at each sequence's end: a step's decodes run as one batch over
 *   the slot range they occupy, and prefill chunks of equal length share a run.
 * - `hf` graphs take packed past tensors and return the concatenated present: the engine
 *   packs each step's sequences (left-padded, masked) and copies the new positions back. This
 *   is what serving a Hugging Face / Optimum export costs, and the benchmark shows by how much.
 *   It always runs on onnxruntime-node's session over host arrays.
 */
export class OnnxEngine implements Engine {
  readonly info: EngineInfo;
  private readonly layers: number;
  private readonly kvHeads: number;
  private readonly headDim: number;
  /** Positions per slot. The fast graph attends over all of them (masked), so it is the engine's context, not the model's. */
  private readonly capacity: number;
  private readonly slotStride: number;
  private readonly slotOf = new Map<number, number>();
  private readonly slotSeq: Int32Array;
  private readonly slotLen: Int32Array;
  private readonly slotParams: (SamplingParams | undefined)[];
  private readonly slotRng: (Rng | undefined)[];
  private readonly pool: BlockPool;
  private readonly sampler: Sampler;
  /** Full-logits rows go through the native batch sampler when the addon is built (identical results). */
  private readonly batchSampler: BatchSampler;
  private batchRows = new Int32Array(0);
  private batchOut = new Int32Array(0);
  private readonly batchParams: SamplingParams[] = [];
  private readonly batchRngs: Rng[] = [];
  private readonly batchItems: number[] = [];
  private readonly vocab: number;
  private readonly inputNames: Set<string>;
  private readonly maxRanked: number;
  // Reused across steps: a step allocates tensors' wrappers, never their data.
  private readonly idsBuf: BigInt64Array;
  private readonly rowsBuf: BigInt64Array;
  private readonly posBuf: BigInt64Array;
  private readonly lengthsBuf: BigInt64Array;
  private readonly writeRow: Int32Array;
  private readonly writeAt: Int32Array;
  private hfScratch: { k: Float32Array[]; v: Float32Array[] } = { k: [], v: [] };
  /**
   * Swapped-out sequences: the backend's handle on their keys and values, their length and
   * sampling state. Prefix-cache copies live in the backend, keyed by the scheduler's block id.
   */
  private readonly swappedOut = new Map<number, { len: number; handle: number; sampling: SamplingParams; rng: Rng }>();
  /** memcpy-bound: bytes per token over a conservative 4 GB/s. */
  readonly swapSecondsPerToken: number;

  private constructor(
    private readonly model: LoadedModel,
    private readonly backend: KvBackend,
    readonly flavour: Flavour,
    geometry: EngineGeometry,
    opts: OnnxEngineOptions,
  ) {
    const { maxSequences, maxContext, blockSize } = geometry;
    this.layers = model.kv.layers;
    this.kvHeads = model.kv.kvHeads;
    this.headDim = model.kv.headDim;
    this.vocab = model.vocabSize;
    this.capacity = maxContext;
    this.slotStride = this.kvHeads * this.capacity * this.headDim;
    this.slotSeq = new Int32Array(maxSequences).fill(FREE);
    this.slotLen = new Int32Array(maxSequences);
    this.slotParams = new Array(maxSequences).fill(undefined);
    this.slotRng = new Array(maxSequences).fill(undefined);
    const blocksPerSeq = Math.ceil(maxContext / blockSize);
    this.pool = new BlockPool(maxSequences * blocksPerSeq, blockSize);
    this.sampler = new Sampler(this.vocab);
    this.batchSampler = new BatchSampler(this.vocab);
    this.inputNames = new Set(backend.inputNames);
    this.maxRanked = rankedLimit(this.inputNames, opts);
    this.idsBuf = new BigInt64Array(maxSequences);
    this.rowsBuf = new BigInt64Array(maxSequences);
    this.posBuf = new BigInt64Array(maxSequences);
    this.lengthsBuf = new BigInt64Array(maxSequences);
    this.writeRow = new Int32Array(maxSequences);
    this.writeAt = new Int32Array(maxSequences);
    this.swapSecondsPerToken = (this.layers * 2 * this.kvHeads * this.headDim * 4) / 4e9;
    this.info = {
      flavour,
      provider: backend.provider,
      maxSequences,
      maxContext,
      blockSize,
      totalBlocks: this.pool.totalBlocks,
      vocabSize: this.vocab,
    };
  }

  static async create(model: LoadedModel, opts: OnnxEngineOptions = {}): Promise<OnnxEngine> {
    const flavour = opts.flavour ?? (model.flavours.includes('fast') ? 'fast' : 'hf');
    if (!model.flavours.includes(flavour)) {
      throw new ModelFormatError(`model ${model.name} has no ${flavour} graph (it has ${model.flavours.join(', ')})`);
    }
    const geometry = engineGeometry(model, opts);
    const kv: KvGeometry = {
      layers: model.kv.layers,
      kvHeads: model.kv.kvHeads,
      headDim: model.kv.headDim,
      capacity: geometry.maxContext,
      slots: geometry.maxSequences,
    };
    const backend = await openKvBackend(model.graphPath(flavour), flavour, kv, {
      ...opts,
      vocab: model.vocabSize,
      rankedLimit: (inputs) => rankedLimit(inputs, opts),
    });
    try {
      const engine = new OnnxEngine(model, backend, flavour, geometry, opts);
      engine.checkGraph();
      return engine;
    } catch (e) {
      await backend.dispose();
      throw e;
    }
  }

  /** Which session runs the graph ('io-binding' or 'onnxruntime-node') and where the cache lives. */
  get kvPath(): { path: KvBackend['path']; memory: KvBackend['memory'] } {
    return { path: this.backend.path, memory: this.backend.memory };
  }

  /** Bytes of cached keys and values copied so far, by steps and by block operations (cumulative). */
  kvBytesCopied(): number {
    return this.backend.kvBytesCopied();
  }

  private checkGraph(): void {
    const needed = this.flavour === 'fast'
      ? [IO.inputIds, IO.positionIds, IO.pastLengths, IO.logitsRows, IO.pastKey(0)]
      : [IO.inputIds, IO.attentionMask, IO.pastKey(0)];
    const missing = needed.filter((n) => !this.inputNames.has(n));
    if (missing.length > 0) {
      throw new ModelFormatError(`${this.model.graphPath(this.flavour)} lacks the ${this.flavour} interface's inputs: ${missing.join(', ')}`);
    }
  }

  get freeBlocks(): number {
    return this.pool.freeBlocks;
  }

  open(seq: number, sampling: SamplingParams, rng: Rng): void {
    if (this.slotOf.has(seq)) throw new InvalidArgumentError(`sequence ${seq} is already open`);
    const slot = this.slotSeq.indexOf(FREE);
    if (slot < 0) throw new EngineCapacityError(`all ${this.info.maxSequences} sequence slots are in use`);
    this.slotSeq[slot] = seq;
    this.slotLen[slot] = 0;
    this.slotParams[slot] = sampling;
    this.slotRng[slot] = rng;
    this.slotOf.set(seq, slot);
  }

  swapOut(seq: number): void {
    const slot = this.slotOf.get(seq);
    if (slot === undefined) throw new InvalidArgumentError(`sequence ${seq} is not open`);
    const len = this.slotLen[slot] as number;
    const handle = this.backend.swapOut(slot, len);
    const state = { len, handle, sampling: this.slotParams[slot] as SamplingParams, rng: this.slotRng[slot] as Rng };
    this.close(seq);
    this.swappedOut.set(seq, state);
  }

  swapIn(seq: number): void {
    const state = this.swappedOut.get(seq);
    if (state === undefined) throw new InvalidArgumentError(`sequence ${seq} is not swapped out`);
    this.open(seq, state.sampling, state.rng);
    this.swappedOut.delete(seq);
    const slot = this.slotOf.get(seq) as number;
    this.backend.swapIn(state.handle, slot, state.len);
    this.slotLen[slot] = state.len;
    this.pool.ensure(seq, state.len);
  }

  close(seq: number): void {
    const swapped = this.swappedOut.get(seq);
    if (swapped !== undefined) {
      this.backend.dropSwap(swapped.handle);
      this.swappedOut.delete(seq);
    }
    const slot = this.slotOf.get(seq);
    if (slot === undefined) return;
    this.slotOf.delete(seq);
    this.slotSeq[slot] = FREE;
    this.slotLen[slot] = 0;
    this.slotParams[slot] = undefined;
    this.slotRng[slot] = undefined;
    this.pool.release(seq);
  }

  storeBlock(seq: number, index: number, blockId: number): void {
    const slot = this.slotOf.get(seq);
    if (slot === undefined) throw new InvalidArgumentError(`sequence ${seq} is not open`);
    const bs = this.info.blockSize;
    if ((index + 1) * bs > (this.slotLen[slot] as number)) throw new InvalidArgumentError(`block ${index} of sequence ${seq} is not computed yet`);
    this.backend.storeBlock(slot, index * bs, bs, blockId);
  }

  loadBlocks(seq: number, blockIds: readonly number[]): void {
    const slot = this.slotOf.get(seq);
    if (slot === undefined) throw new InvalidArgumentError(`sequence ${seq} is not open`);
    if ((this.slotLen[slot] as number) !== 0) throw new InvalidArgumentError(`sequence ${seq} is not empty`);
    const bs = this.info.blockSize;
    if (blockIds.length * bs > this.info.maxContext) throw new ContextLengthError(`${blockIds.length} blocks exceed the context`);
    for (const id of blockIds) if (!this.backend.hasBlock(id)) throw new InvalidArgumentError(`block ${id} was never stored`);
    this.backend.loadBlocks(slot, blockIds, bs);
    this.slotLen[slot] = blockIds.length * bs;
    this.pool.ensure(seq, blockIds.length * bs);
  }

  contextLength(seq: number): number {
    const slot = this.slotOf.get(seq);
    return slot === undefined ? 0 : (this.slotLen[slot] as number);
  }

  blocksHeld(seq: number): number {
    return this.pool.heldBy(seq);
  }

  async dispose(): Promise<void> {
    await this.backend.dispose();
  }

  async execute(plan: StepPlan): Promise<StepResult> {
    const t0 = performance.now();
    const copied0 = this.backend.kvBytesCopied();
    const n = plan.items.length;
    const tokens = new Int32Array(n).fill(-1);
    const logits = plan.keepLogits ? new Float32Array(n * this.vocab).fill(NaN) : undefined;
    const decodes: number[] = [];
    const prefills: number[] = [];
    const seen = new Set<number>();
    for (let i = 0; i < n; i++) {
      const item = plan.items[i] as StepItem;
      const slot = this.slotOf.get(item.seq);
      if (slot === undefined) throw new InvalidArgumentError(`sequence ${item.seq} is not open`);
      if (seen.has(item.seq)) throw new InvalidArgumentError(`sequence ${item.seq} appears twice in one step`);
      seen.add(item.seq);
      const count = item.count;
      if (!Number.isInteger(count) || count < 1 || item.offset < 0 || item.offset + count > item.tokens.length) {
        throw new InvalidArgumentError(`sequence ${item.seq}: a step item needs 1 or more tokens inside its array`);
      }
      for (let k = 0; k < count; k++) {
        const t = item.tokens[item.offset + k] as number;
        if (!Number.isInteger(t) || t < 0 || t >= this.vocab) throw new InvalidArgumentError(`token ${t} is outside the vocabulary (0..${this.vocab - 1})`);
      }
      const after = (this.slotLen[slot] as number) + count;
      if (after > this.info.maxContext) {
        throw new ContextLengthError(`sequence ${item.seq} would reach ${after} tokens, beyond the context of ${this.info.maxContext}`);
      }
      this.pool.ensure(item.seq, after);
      (count === 1 ? decodes : prefills).push(i);
    }

    let runMs = 0;
    let sampleMs = 0;
    let runs = 0;
    const sampleRows = (batchItems: number[], rowOf: (k: number) => number, out: RunOutput) => {
      const s0 = performance.now();
      if (out.logits) {
        // One call for the whole batch: the native sampler when built, else the same loop in TypeScript.
        let n = 0;
        if (this.batchRows.length < batchItems.length) {
          this.batchRows = new Int32Array(batchItems.length);
          this.batchOut = new Int32Array(batchItems.length);
        }
        this.batchParams.length = 0;
        this.batchRngs.length = 0;
        this.batchItems.length = 0;
        for (let k = 0; k < batchItems.length; k++) {
          const i = batchItems[k] as number;
          const item = plan.items[i] as StepItem;
          if (!item.sample) continue;
          const slot = this.slotOf.get(item.seq) as number;
          this.batchRows[n++] = rowOf(k);
          this.batchParams.push(this.slotParams[slot] as SamplingParams);
          this.batchRngs.push(this.slotRng[slot] as Rng);
          this.batchItems.push(i);
          if (logits) logits.set(out.logits.subarray(rowOf(k) * this.vocab, (rowOf(k) + 1) * this.vocab), i * this.vocab);
        }
        this.batchSampler.sample(out.logits, this.batchRows, this.batchParams, this.batchRngs, this.batchOut, n);
        for (let j = 0; j < n; j++) tokens[this.batchItems[j] as number] = this.batchOut[j] as number;
      } else {
        for (let k = 0; k < batchItems.length; k++) {
          const i = batchItems[k] as number;
          const item = plan.items[i] as StepItem;
          if (!item.sample) continue;
          const slot = this.slotOf.get(item.seq) as number;
          tokens[i] = this.sampler.sampleRanked(out.values as Float32Array, out.ids as BigInt64Array, rowOf(k) * out.k, out.k, this.slotParams[slot] as SamplingParams, this.slotRng[slot] as Rng);
        }
      }
      sampleMs += performance.now() - s0;
    };

    if (this.flavour === 'fast') {
      if (decodes.length > 0) {
        const r0 = performance.now();
        const out = await this.runFast(plan.items, decodes, plan.keepLogits === true);
        runMs += performance.now() - r0;
        runs++;
        sampleRows(decodes, (k) => k, out);
      }
      for (const group of this.prefillGroups(plan.items, prefills)) {
        const r0 = performance.now();
        const out = await this.runFast(plan.items, group, plan.keepLogits === true);
        runMs += performance.now() - r0;
        runs++;
        sampleRows(group, (k) => k, out);
      }
    } else {
      const groups = decodes.length > 0 ? [decodes, ...prefills.map((i) => [i])] : prefills.map((i) => [i]);
      for (const group of groups) {
        const r0 = performance.now();
        const { logits: out, seqLen } = await this.runHf(plan.items, group);
        runMs += performance.now() - r0;
        runs++;
        // Left-padded new tokens end at the last column, so each sequence's last token is row S-1.
        sampleRows(group, (k) => k * seqLen + seqLen - 1, { logits: out, k: 0 });
      }
    }
    let batchTokens = 0;
    for (const item of plan.items) {
      const slot = this.slotOf.get(item.seq) as number;
      this.slotLen[slot] = (this.slotLen[slot] as number) + item.count;
      batchTokens += item.count;
    }
    const totalMs = performance.now() - t0;
    const kvBytesCopied = this.backend.kvBytesCopied() - copied0;
    const result: StepResult = { tokens, timing: { totalMs, runMs, sampleMs, glueMs: totalMs - runMs - sampleMs, runs, batchTokens, kvBytesCopied } };
    if (logits) result.logits = logits;
    return result;
  }

  /**
   * Prefill chunks of equal length share one run (requests that arrive together usually have
   * similar prompts), unless their slots are so spread out that the idle slots riding along in
   * between would cost more than separate runs; unequal ones run alone, never padded.
   */
  private prefillGroups(items: StepItem[], prefills: number[]): number[][] {
    const byWidth = new Map<number, number[]>();
    for (const i of prefills) {
      const w = (items[i] as StepItem).count;
      const g = byWidth.get(w);
      if (g === undefined) byWidth.set(w, [i]);
      else g.push(i);
    }
    const groups: number[][] = [];
    for (const g of byWidth.values()) {
      let lo = Infinity;
      let hi = -1;
      for (const i of g) {
        const slot = this.slotOf.get((items[i] as StepItem).seq) as number;
        lo = Math.min(lo, slot);
        hi = Math.max(hi, slot);
      }
      if (g.length > 1 && hi - lo + 1 <= 2 * g.length) groups.push(g);
      else for (const i of g) groups.push([i]);
    }
    return groups;
  }

  /**
   * One fast-graph run over the contiguous slot range holding `group`'s sequences (idle slots in
   * between ride along with a dummy token whose outputs are dropped), then the new keys and
   * values written into the cache at each sequence's end.
   */
  private async runFast(items: StepItem[], group: number[], fullLogits: boolean): Promise<RunOutput> {
    let lo = Infinity;
    let hi = -1;
    for (const i of group) {
      const slot = this.slotOf.get((items[i] as StepItem).seq) as number;
      if (slot < lo) lo = slot;
      if (slot > hi) hi = slot;
    }
    const b = hi - lo + 1;
    const width = (items[group[0] as number] as StepItem).count;
    const ids = width === 1 ? this.idsBuf.subarray(0, b) : new BigInt64Array(b * width);
    const pos = width === 1 ? this.posBuf.subarray(0, b) : new BigInt64Array(b * width);
    const lengths = this.lengthsBuf.subarray(0, b);
    ids.fill(0n);
    pos.fill(0n);
    lengths.fill(0n);
    const rows = this.rowsBuf.subarray(0, group.length);
    for (let k = 0; k < group.length; k++) {
      const item = items[group[k] as number] as StepItem;
      const s = (this.slotOf.get(item.seq) as number) - lo;
      const len = this.slotLen[lo + s] as number;
      for (let t = 0; t < width; t++) {
        ids[s * width + t] = BigInt(item.tokens[item.offset + t] as number);
        pos[s * width + t] = BigInt(len + t);
      }
      lengths[s] = BigInt(len);
      rows[k] = BigInt(s * width + width - 1);
    }
    // Rank in the graph when every sampled row can be served from its k best logits.
    let k = 1;
    let ranked = this.maxRanked > 0 && !fullLogits;
    for (const i of group) {
      const item = items[i] as StepItem;
      if (!item.sample || !ranked) continue;
      const params = this.slotParams[this.slotOf.get(item.seq) as number] as SamplingParams;
      if (!Sampler.rankedSuffices(params, this.maxRanked)) ranked = false;
      else if (params.temperature > 0) k = Math.max(k, params.topK);
    }
    for (let j = 0; j < group.length; j++) {
      const slot = this.slotOf.get((items[group[j] as number] as StepItem).seq) as number;
      this.writeRow[j] = slot - lo;
      this.writeAt[j] = this.slotLen[slot] as number;
    }
    return this.backend.runFast({
      lo,
      b,
      width,
      ids,
      pos,
      lengths,
      rows,
      ranked,
      k,
      writeRow: this.writeRow,
      writeAt: this.writeAt,
      writes: group.length,
    });
  }

  /** One hf-interface run: pack the group's caches (left-padded), run, copy the new positions back. */
  private async runHf(items: StepItem[], group: number[]): Promise<{ logits: Float32Array; seqLen: number }> {
    const js = this.backend as JsKvBackend;
    const b = group.length;
    let P = 0;
    let S = 0;
    const slots = group.map((i) => this.slotOf.get((items[i] as StepItem).seq) as number);
    for (let k = 0; k < b; k++) {
      P = Math.max(P, this.slotLen[slots[k] as number] as number);
      S = Math.max(S, (items[group[k] as number] as StepItem).count);
    }
    const T = P + S;
    const hd = this.headDim;
    const H = this.kvHeads;
    const ids = new BigInt64Array(b * S);
    const pos = new BigInt64Array(b * S);
    const mask = new BigInt64Array(b * T);
    for (let k = 0; k < b; k++) {
      const slot = slots[k] as number;
      const len = this.slotLen[slot] as number;
      const item = items[group[k] as number] as StepItem;
      const padS = S - item.count;
      mask.fill(1n, k * T + (P - len), k * T + P);
      mask.fill(1n, k * T + P + padS, (k + 1) * T);
      for (let t = 0; t < item.count; t++) {
        ids[k * S + padS + t] = BigInt(item.tokens[item.offset + t] as number);
        pos[k * S + padS + t] = BigInt(len + t);
      }
    }
    const pastSize = b * H * P * hd;
    if ((this.hfScratch.k[0]?.length ?? -1) < pastSize) {
      this.hfScratch = {
        k: Array.from({ length: this.layers }, () => new Float32Array(pastSize)),
        v: Array.from({ length: this.layers }, () => new Float32Array(pastSize)),
      };
    }
    const feeds: Record<string, ort.Tensor> = {
      [IO.inputIds]: new ort.Tensor('int64', ids, [b, S]),
      [IO.attentionMask]: new ort.Tensor('int64', mask, [b, T]),
    };
    if (this.inputNames.has(IO.positionIds)) feeds[IO.positionIds] = new ort.Tensor('int64', pos, [b, S]);
    if (this.inputNames.has('use_cache_branch')) feeds.use_cache_branch = new ort.Tensor('bool', [true], [1]);
    for (let l = 0; l < this.layers; l++) {
      const pk = (this.hfScratch.k[l] as Float32Array).subarray(0, pastSize);
      const pv = (this.hfScratch.v[l] as Float32Array).subarray(0, pastSize);
      for (let k = 0; k < b; k++) {
        const slot = slots[k] as number;
        const len = this.slotLen[slot] as number;
        for (let h = 0; h < H; h++) {
          const src = slot * this.slotStride + h * this.capacity * hd;
          const dst = ((k * H + h) * P + (P - len)) * hd;
          pk.set((js.keys[l] as Float32Array).subarray(src, src + len * hd), dst);
          pv.set((js.values[l] as Float32Array).subarray(src, src + len * hd), dst);
        }
      }
      feeds[IO.pastKey(l)] = new ort.Tensor('float32', pk, [b, H, P, hd]);
      feeds[IO.pastValue(l)] = new ort.Tensor('float32', pv, [b, H, P, hd]);
    }
    // The packing above and the present the graph concatenates are both copies of the cache.
    let packed = 0;
    for (const slot of slots) packed += this.slotLen[slot] as number;
    js.countCopied((packed + b * T) * 2 * H * hd * 4 * this.layers);
    const out = await js.session.run(feeds);
    for (let l = 0; l < this.layers; l++) {
      const presentK = out[IO.presentKey(l)]?.data as Float32Array | undefined;
      const presentV = out[IO.presentValue(l)]?.data as Float32Array | undefined;
      if (!presentK || !presentV) throw new ModelFormatError(`graph did not return ${IO.presentKey(l)}`);
      for (let k = 0; k < b; k++) {
        const slot = slots[k] as number;
        const len = this.slotLen[slot] as number;
        const count = (items[group[k] as number] as StepItem).count;
        for (let h = 0; h < H; h++) {
          const src = ((k * H + h) * T + (T - count)) * hd;
          const dst = slot * this.slotStride + (h * this.capacity + len) * hd;
          (js.keys[l] as Float32Array).set(presentK.subarray(src, src + count * hd), dst);
          (js.values[l] as Float32Array).set(presentV.subarray(src, src + count * hd), dst);
        }
      }
    }
    const logits = out[IO.logits]?.data as Float32Array | undefined;
    if (!logits) throw new ModelFormatError('graph did not return logits');
    return { logits, seqLen: S };
  }
}
