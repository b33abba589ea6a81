import * as ort from 'onnxruntime-node';
import { performance } from 'node:perf_hooks';
import { ContextLengthError, InvalidArgumentError, ModelFormatError } from '../errors.js';
import { HostKvStorage, blockBytes, type KvPoolShape, type KvStorage } from '../kv/pool.js';
import { BoundFastGraph } from './bound-fast.js';
import { openEngineSession, type EngineSession } from './open-session.js';
import type { Flavour, LoadedModel } from '../models/modeldir.js';
import { IO } from '../models/llama/graph.js';
import { BatchSampler } from '../native/sampling.js';
import { Sampler } from '../sampling/sampler.js';
import { applyTokenMask, rowLogprobs, type TokenLogprobs } from '../sampling/logprobs.js';
import type { Rng } from '../sampling/rng.js';
import type { SamplingParams } from '../sampling/params.js';
import type { SessionConfig } from './session.js';
import { KvOp, type Engine, type EngineInfo, type ExecutionProvider, type SequenceOpen, type StepItem, type StepPlan, type StepResult } from './types.js';

export interface OnnxEngineOptions extends SessionConfig {
  /** Graph flavour; default `fast` where the model has it. */
  flavour?: Flavour;
  /** Sequences the default pool holds at full context (and the scheduler's default). */
  maxSequences?: number;
  /** Positions per sequence; default the model's context. */
  maxContext?: number;
  /** Positions per KV block: the unit the scheduler allocates and prices. */
  blockSize?: number;
  /** Blocks in the KV pool; default maxSequences × ⌈maxContext / blockSize⌉. */
  kvBlocks?: number;
  /** Host blocks swapped-out sequences move to (allocated as used); default kvBlocks. 0 disables swap. */
  hostBlocks?: number;
  /**
   * Largest k fetched from the graph's in-graph top-k; steps whose sampled rows are all greedy
   * or top-k ≤ this skip copying full logits. 0 disables it.
   */
  rankedCandidates?: number;
  /**
   * Hand the graph a compact copy of the blocks each run uses instead of the whole pool. The
   * default where the pool is host memory but the provider is not the CPU (ONNX Runtime would
   * otherwise copy the whole pool to the device every run); settable to test that path on CPU.
   * Only the onnxruntime-node session stages: the I/O-binding runner keeps the pool where its
   * provider computes.
   */
  stagePool?: boolean;
  /**
   * Run the fast graph through ONNX Runtime's C API with I/O binding (the native addon), the
   * KV pool in the provider's memory and bound in place: true requires it, false uses
   * onnxruntime-node's JavaScript session; default (or MARGINAL_IO_BINDING=1/0): I/O binding
   * wherever the addon can open it.
   */
  ioBinding?: boolean;
}

/**
 * A run's output for sampling: full logits rows, or each row's k best (values and ids, best
 * first). Item k of the run samples from row `lastRow[k]`; with prompt logprobs its fed
 * positions are rows lastRow[k] - count + 1 .. lastRow[k] (full logits only).
 */
interface RunOutput {
  logits?: Float32Array;
  values?: Float32Array;
  ids?: BigInt64Array;
  k: number;
  lastRow: Int32Array;
}

/** What a step reports besides its tokens, filled in as its runs are sampled. */
interface StepExtras {
  logits: Float32Array | undefined;
  logprobs: (TokenLogprobs | undefined)[] | undefined;
  promptLogprobs: (TokenLogprobs[] | undefined)[] | undefined;
  sampleMs: number;
}

interface SequenceState {
  sampling: SamplingParams;
  rng: Rng;
}

/** Distinct feed shapes kept before the tensor caches start over (bounded memory, no per-step wrappers). */
const TENSOR_CACHE_LIMIT = 1024;

/**
 * A grow-only int64 input written through an Int32Array alias of its buffer, so no BigInt is
 * made per value (values are non-negative and below 2^31: the high word is 0), with one
 * ort.Tensor per shape kept across steps.
 */
class Int64Feed {
  private buf = new BigInt64Array(0);
  private words = new Int32Array(0);
  private readonly tensors = new Map<number, ort.Tensor>();

  reserve(n: number): void {
    if (this.buf.length >= n) return;
    this.buf = new BigInt64Array(Math.max(n, 2 * this.buf.length, 16));
    this.words = new Int32Array(this.buf.buffer);
    this.tensors.clear();
  }

  set(i: number, v: number): void {
    this.words[2 * i] = v;
    this.words[2 * i + 1] = 0;
  }

  fill(v: number, n: number): void {
    for (let i = 0; i < n; i++) this.set(i, v);
  }

  /** [d0] when d1 is 0, else [d0, d1]. */
  tensor(d0: number, d1 = 0): ort.Tensor {
    const key = d0 * 65536 + d1;
    let t = this.tensors.get(key);
    if (t === undefined) {
      if (this.tensors.size >= TENSOR_CACHE_LIMIT) this.tensors.clear();
      const n = d1 === 0 ? d0 : d0 * d1;
      t = new ort.Tensor('int64', this.buf.subarray(0, n), d1 === 0 ? [d0] : [d0, d1]);
      this.tensors.set(key, t);
    }
    return t;
  }
}

/** The same for an int32 [d0, d1] input (block tables). */
class Int32Feed {
  buf = new Int32Array(0);
  private readonly tensors = new Map<number, ort.Tensor>();

  reserve(n: number): void {
    if (this.buf.length >= n) return;
    this.buf = new Int32Array(Math.max(n, 2 * this.buf.length, 16));
    this.tensors.clear();
  }

  tensor(d0: number, d1: number): ort.Tensor {
    const key = d0 * 65536 + d1;
    let t = this.tensors.get(key);
    if (t === undefined) {
      if (this.tensors.size >= TENSOR_CACHE_LIMIT) this.tensors.clear();
      t = new ort.Tensor('int32', this.buf.subarray(0, d0 * d1), [d0, d1]);
      this.tensors.set(key, t);
    }
    return t;
  }
}

/**
 * The token loop on ONNX Runtime over a paged KV pool: per layer, one key and one value buffer
 * of N blocks (`KvStorage`), each sequence a block table the scheduler owns and sends with
 * every item. The engine keeps no per-sequence KV bookkeeping: an item's offset is its length,
 * its table says where its positions live; what the engine holds per sequence is sampling
 * state (opened and closed by the plan).
 *
 * - `fast` graphs read the pool in place (an in-graph Gather of the blocks the batch's tables
 *   name) and return only the new tokens' keys and values, which the engine writes into their
 *   blocks: a step's decodes run as one batch, and prefill chunks of equal length share a run.
 * - `hf` graphs take packed past tensors and return the concatenated present: the engine packs
 *   each run's sequences from their blocks (left-padded, masked) and writes the new positions
 *   back. This is what serving a Hugging Face / Optimum export costs.
 *
 * Two sessions can run the graph (open-session.ts). The native addon's I/O-binding runner keeps
 * the pool in the provider's memory (device memory under CUDA) and binds it in place, so no
 * step copies the cache (bound-fast.ts, kv/device-pool.ts); onnxruntime-node's JavaScript
 * session, the fallback and the `hf` path, gets the pool as host arrays every run.
 */
export class OnnxEngine implements Engine {
  readonly info: EngineInfo;
  private readonly layers: number;
  private readonly kvHeads: number;
  private readonly headDim: number;
  private readonly blockSize: number;
  private readonly pool: KvStorage;
  /** The I/O-binding runner's fast graph, when the session is the runner. */
  private readonly bound: BoundFastGraph | undefined;
  private readonly session: ort.InferenceSession | undefined;
  /** Cache bytes copied to run the graph this step (staged, packed, concatenated, moved to a device). */
  private cacheBytes = 0;
  private readonly sequences = new Map<number, SequenceState>();
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
  private readonly stage: boolean;
  // Reused across steps: a step builds no tensor wrapper, BigInt or view per token.
  private readonly idsFeed = new Int64Feed();
  private readonly posFeed = new Int64Feed();
  private readonly lengthsFeed = new Int64Feed();
  private readonly rowsFeed = new Int64Feed();
  private boundRows = new Int32Array(0);
  private readonly kFeed = new Int64Feed();
  private readonly tablesFeed = new Int32Feed();
  private readonly feeds: Record<string, ort.Tensor> = {};
  private readonly poolTensors: { key: ort.Tensor; value: ort.Tensor }[] = [];
  private readonly names: { poolKey: string; poolValue: string; newKey: string; newValue: string; pastKey: string; pastValue: string; presentKey: string; presentValue: string }[];
  private readonly fetchRanked: string[];
  private readonly fetchLogits: string[];
  private decodeIdx = new Int32Array(0);
  /** RunOutput.lastRow of fast runs: each run's rows are sampled before the next run starts. */
  private lastRowBuf = new Int32Array(0);
  /** Raw rows of sampled items that report logprobs, kept while their row is adjusted and sampled. */
  private rawRows = new Float32Array(0);
  private readonly topHeap = new Int32Array(64);
  /** A run's new keys and values by layer (ORT's output buffers), reused. */
  private readonly newKeys: Float32Array[] = [];
  private readonly newValues: Float32Array[] = [];
  /** Per-step scratch: sequences seen, opened and closed by the plan being checked. */
  private readonly seenSeqs = new Set<number>();
  private readonly planOpens = new Set<number>();
  private readonly planCloses = new Set<number>();
  private staging: { keys: Float32Array[]; values: Float32Array[]; blocks: number } | undefined;
  private readonly stageMap = new Map<number, number>();

  private constructor(
    private readonly model: LoadedModel,
    private readonly engineSession: EngineSession,
    readonly flavour: Flavour,
    opts: OnnxEngineOptions,
  ) {
    const provider = engineSession.provider;
    const maxSequences = opts.maxSequences ?? 32;
    const maxContext = Math.min(opts.maxContext ?? model.kv.maxContext, model.kv.maxContext);
    const blockSize = opts.blockSize ?? 16;
    if (!Number.isInteger(maxSequences) || maxSequences < 1) throw new InvalidArgumentError(`maxSequences must be a positive integer`);
    if (!Number.isInteger(maxContext) || maxContext < 2) throw new InvalidArgumentError(`maxContext must be an integer >= 2`);
    if (!Number.isInteger(blockSize) || blockSize < 1 || blockSize > 4096) throw new InvalidArgumentError(`blockSize must be an integer from 1 to 4096`);
    const kvBlocks = opts.kvBlocks ?? maxSequences * Math.ceil(maxContext / blockSize);
    if (!Number.isInteger(kvBlocks) || kvBlocks < 1) throw new InvalidArgumentError(`kvBlocks must be a positive integer`);
    const hostBlocks = opts.hostBlocks ?? kvBlocks;
    if (!Number.isInteger(hostBlocks) || hostBlocks < 0) throw new InvalidArgumentError(`hostBlocks must be a non-negative integer`);
    this.layers = model.kv.layers;
    this.kvHeads = model.kv.kvHeads;
    this.headDim = model.kv.headDim;
    this.blockSize = blockSize;
    this.vocab = model.vocabSize;
    const shape: KvPoolShape = { layers: this.layers, kvHeads: this.kvHeads, headDim: this.headDim, blockSize, blocks: kvBlocks, hostBlocks };
    if (engineSession.kind === 'io-binding') {
      this.inputNames = new Set(engineSession.runner.inputs.map((v) => v.name));
      this.maxRanked = this.inputNames.has(IO.topK) ? (opts.rankedCandidates ?? 64) : 0;
      this.bound = new BoundFastGraph(engineSession.runner, shape, this.vocab, this.maxRanked);
      this.pool = this.bound.pool;
      this.session = undefined;
      this.stage = false;
    } else {
      this.inputNames = new Set(engineSession.session.inputNames);
      this.maxRanked = this.inputNames.has(IO.topK) ? (opts.rankedCandidates ?? 64) : 0;
      this.bound = undefined;
      this.pool = new HostKvStorage(shape);
      this.session = engineSession.session;
      this.stage = opts.stagePool ?? provider !== 'cpu';
    }
    this.sampler = new Sampler(this.vocab);
    this.batchSampler = new BatchSampler(this.vocab);
    this.names = Array.from({ length: this.layers }, (_, l) => ({
      poolKey: IO.poolKey(l),
      poolValue: IO.poolValue(l),
      newKey: IO.newKey(l),
      newValue: IO.newValue(l),
      pastKey: IO.pastKey(l),
      pastValue: IO.pastValue(l),
      presentKey: IO.presentKey(l),
      presentValue: IO.presentValue(l),
    }));
    this.fetchRanked = [IO.topKValues, IO.topKIndices];
    this.fetchLogits = [IO.logits];
    for (const n of this.names) {
      this.fetchRanked.push(n.newKey, n.newValue);
      this.fetchLogits.push(n.newKey, n.newValue);
    }
    const bytes = blockBytes(shape);
    this.info = {
      flavour,
      provider,
      maxSequences,
      maxContext,
      blockSize,
      totalBlocks: kvBlocks,
      hostBlocks,
      blockBytes: bytes,
      // memcpy-bound: a token's keys and values over a conservative 4 GB/s.
      swapSecondsPerToken: bytes / blockSize / 4e9,
      vocabSize: this.vocab,
    };
  }

  static async create(model: LoadedModel, opts: OnnxEngineOptions = {}): Promise<OnnxEngine> {
    const flavour = opts.flavour ?? (model.flavours.includes('fast') ? 'fast' : 'hf');
    if (!model.flavours.includes(flavour)) {
      throw new ModelFormatError(`model ${model.name} has no ${flavour} graph (it has ${model.flavours.join(', ')})`);
    }
    const session = await openEngineSession(model.graphPath(flavour), flavour, opts);
    try {
      const engine = new OnnxEngine(model, session, flavour, opts);
      engine.checkGraph();
      return engine;
    } catch (e) {
      if (session.kind === 'io-binding') session.runner.release();
      else await session.session.release();
      throw e;
    }
  }

  /** Which session runs the graph ('io-binding' or 'onnxruntime-node') and where the KV pool lives. */
  get kvPath(): { path: EngineSession['kind']; memory: 'device' | 'host' } {
    return { path: this.engineSession.kind, memory: this.bound !== undefined && this.info.provider === 'cuda' ? 'device' : 'host' };
  }

  /**
   * The I/O-binding runner's cumulative counters (RunnerStat: runs, bytes uploaded to and
   * downloaded from device buffers, local copies, cache bytes copied), or undefined on the
   * onnxruntime-node session.
   */
  runnerStat(which: number): number | undefined {
    return this.bound?.stat(which);
  }

  private checkGraph(): void {
    const needed = this.flavour === 'fast'
      ? [IO.inputIds, IO.positionIds, IO.pastLengths, IO.logitsRows, IO.blockTables, IO.poolKey(0)]
      : [IO.inputIds, IO.attentionMask, IO.pastKey(0)];
    const missing = needed.filter((n) => !this.inputNames.has(n));
    if (missing.length > 0) {
      throw new ModelFormatError(`${this.model.graphPath(this.flavour)} lacks the ${this.flavour} interface's inputs: ${missing.join(', ')} (a model written by an older marginal: import or synthesize it again)`);
    }
  }

  /** Sequences whose sampling state the engine holds (opened and not yet closed). */
  get openSequences(): number {
    return this.sequences.size;
  }

  /** The pool's storage (tests and benchmarks read block contents through it). */
  get storage(): KvStorage {
    return this.pool;
  }

  async dispose(): Promise<void> {
    if (this.bound !== undefined) this.bound.dispose();
    else await this.session?.release();
  }

  async execute(plan: StepPlan): Promise<StepResult> {
    const t0 = performance.now();
    this.check(plan);
    // Checked as a whole above: from here on the plan applies in full.
    for (const seq of plan.closes) this.sequences.delete(seq);
    for (const o of plan.opens) this.sequences.set(o.seq, { sampling: o.sampling, rng: o.rng });
    this.applyKvOps(plan.kvOps);

    const items = plan.items;
    const n = items.length;
    const tokens = new Int32Array(n).fill(-1);
    const extras: StepExtras = { logits: plan.keepLogits ? new Float32Array(n * this.vocab).fill(NaN) : undefined, logprobs: undefined, promptLogprobs: undefined, sampleMs: 0 };
    let decodes = 0;
    let prefills: number[] | undefined;
    if (this.decodeIdx.length < n) this.decodeIdx = new Int32Array(Math.max(n, 2 * this.decodeIdx.length));
    for (let i = 0; i < n; i++) {
      if ((items[i] as StepItem).count === 1) this.decodeIdx[decodes++] = i;
      else (prefills ??= []).push(i);
    }
    const timing = { runMs: 0, runs: 0 };
    const fullLogits = plan.keepLogits === true;
    if (this.flavour === 'fast') {
      if (decodes > 0) {
        const r0 = performance.now();
        const out = await this.runFast(items, this.decodeIdx, decodes, 1, fullLogits);
        timing.runMs += performance.now() - r0;
        timing.runs++;
        this.sampleRows(items, this.decodeIdx, decodes, out, tokens, extras);
      }
      if (prefills !== undefined) {
        for (const group of prefillGroups(items, prefills)) {
          const r0 = performance.now();
          const width = (items[group[0] as number] as StepItem).count;
          const out = await this.runFast(items, group, group.length, width, fullLogits);
          timing.runMs += performance.now() - r0;
          timing.runs++;
          this.sampleRows(items, group, group.length, out, tokens, extras);
        }
      }
    } else {
      const groups: number[][] = [];
      if (decodes > 0) groups.push(Array.from(this.decodeIdx.subarray(0, decodes)));
      for (const i of prefills ?? []) groups.push([i]);
      for (const group of groups) {
        const r0 = performance.now();
        const { logits: out, seqLen } = await this.runHf(items, group);
        timing.runMs += performance.now() - r0;
        timing.runs++;
        // Left-padded new tokens end at the last column, so each sequence's last token is row S-1.
        this.sampleRows(items, group, group.length, { logits: out, k: 0, lastRow: Int32Array.from(group, (_, k) => k * seqLen + seqLen - 1) }, tokens, extras);
      }
    }
    let batchTokens = 0;
    for (let i = 0; i < n; i++) batchTokens += (items[i] as StepItem).count;
    const totalMs = performance.now() - t0;
    const result: StepResult = {
      tokens,
      timing: {
        totalMs,
        runMs: timing.runMs,
        sampleMs: extras.sampleMs,
        glueMs: totalMs - timing.runMs - extras.sampleMs,
        runs: timing.runs,
        batchTokens,
        kvBytesCopied: this.pool.takeBytesCopied() + this.takeStagedBytes(),
        cacheBytesCopied: this.takeCacheBytes(),
      },
    };
    if (extras.logits) result.logits = extras.logits;
    if (extras.logprobs) result.logprobs = extras.logprobs;
    if (extras.promptLogprobs) result.promptLogprobs = extras.promptLogprobs;
    return result;
  }

  /** Every check a plan must pass, before any of it is applied. */
  private check(plan: StepPlan): void {
    const { planCloses, planOpens, seenSeqs } = this;
    planCloses.clear();
    planOpens.clear();
    seenSeqs.clear();
    for (const seq of plan.closes) planCloses.add(seq);
    for (const o of plan.opens as SequenceOpen[]) {
      if ((this.sequences.has(o.seq) && !planCloses.has(o.seq)) || planOpens.has(o.seq)) throw new InvalidArgumentError(`sequence ${o.seq} is already open`);
      if (o.sampling === null || typeof o.sampling !== 'object' || o.rng === null || typeof o.rng !== 'object') throw new InvalidArgumentError(`sequence ${o.seq} opens without sampling state`);
      planOpens.add(o.seq);
    }
    const ops = plan.kvOps;
    const N = this.info.totalBlocks;
    const host = this.info.hostBlocks;
    if (ops.length % 3 !== 0) throw new InvalidArgumentError(`kvOps holds ${ops.length} numbers, not (op, src, dst) triples`);
    for (let i = 0; i < ops.length; i += 3) {
      const op = ops[i] as number;
      const src = ops[i + 1] as number;
      const dst = ops[i + 2] as number;
      const srcLimit = op === KvOp.swapIn ? host : N;
      const dstLimit = op === KvOp.swapOut ? host : N;
      if (op !== KvOp.copy && op !== KvOp.swapOut && op !== KvOp.swapIn) throw new InvalidArgumentError(`kvOps: unknown operation ${op}`);
      if (!isIndex(src, srcLimit) || !isIndex(dst, dstLimit)) throw new InvalidArgumentError(`kvOps: block move ${src} -> ${dst} is outside the pool (${N} blocks, ${host} host blocks)`);
    }
    const bs = this.blockSize;
    for (const item of plan.items) {
      const seq = item.seq;
      if (!((this.sequences.has(seq) && !planCloses.has(seq)) || planOpens.has(seq))) throw new InvalidArgumentError(`sequence ${seq} is not open`);
      if (seenSeqs.has(seq)) throw new InvalidArgumentError(`sequence ${seq} appears twice in one step`);
      seenSeqs.add(seq);
      const count = item.count;
      if (!Number.isInteger(count) || count < 1 || !Number.isInteger(item.offset) || item.offset < 0 || item.offset + count > item.tokens.length) {
        throw new InvalidArgumentError(`sequence ${seq}: a step item needs 1 or more tokens inside its array`);
      }
      for (let k = 0; k < count; k++) {
        const t = item.tokens[item.offset + k] as number;
        if (!Number.isInteger(t) || t < 0 || t >= this.vocab) throw new InvalidArgumentError(`token ${t} is outside the vocabulary (0..${this.vocab - 1})`);
      }
      const after = item.offset + count;
      if (after > this.info.maxContext) {
        throw new ContextLengthError(`sequence ${seq} would reach ${after} tokens, beyond the context of ${this.info.maxContext}`);
      }
      const need = Math.ceil(after / bs);
      if (item.blocks.length < need) throw new InvalidArgumentError(`sequence ${seq}: its block table has ${item.blocks.length} blocks, ${need} needed for ${after} positions`);
      for (let b = 0; b < need; b++) {
        if (!isIndex(item.blocks[b] as number, N)) throw new InvalidArgumentError(`sequence ${seq}: block ${item.blocks[b]} is outside the pool of ${N}`);
      }
    }
  }

  private applyKvOps(ops: number[]): void {
    for (let i = 0; i < ops.length; i += 3) {
      const op = ops[i] as number;
      const src = ops[i + 1] as number;
      const dst = ops[i + 2] as number;
      if (op === KvOp.copy) this.pool.copyBlock(src, dst);
      else if (op === KvOp.swapOut) this.pool.swapOut(src, dst);
      else this.pool.swapIn(src, dst);
    }
  }

  /** Samples the rows of one run: item group[j] draws from row out.lastRow[j]. */
  private sampleRows(items: StepItem[], group: ArrayLike<number>, count: number, out: RunOutput, tokens: Int32Array, x: StepExtras): void {
    const s0 = performance.now();
    const V = this.vocab;
    const rowOf = out.lastRow;
    if (out.logits) {
      const full = out.logits;
      // Log probabilities read the model's own logits, so they come before any adjustment.
      let raw = 0;
      for (let k = 0; k < count; k++) {
        const i = group[k] as number;
        const item = items[i] as StepItem;
        const row = rowOf[k] as number;
        if (item.promptLogprobs !== undefined) (x.promptLogprobs ??= new Array(items.length).fill(undefined))[i] = this.promptLogprobsOf(item, full, row);
        if (!item.sample) continue;
        if (x.logits) x.logits.set(full.subarray(row * V, (row + 1) * V), i * V);
        const params = (this.sequences.get(item.seq) as SequenceState).sampling;
        if (params.logprobs !== undefined) {
          if (this.rawRows.length < (raw + 1) * V) {
            const grown = new Float32Array(Math.max((raw + 1) * V, 2 * this.rawRows.length));
            grown.set(this.rawRows);
            this.rawRows = grown;
          }
          this.rawRows.set(full.subarray(row * V, (row + 1) * V), raw * V);
          raw++;
        }
        if (item.adjust !== undefined) this.batchSampler.adjust(full, row, item.adjust);
        if (item.mask !== undefined) applyTokenMask(full, row * V, V, item.mask);
      }
      // One call for the whole batch: the native sampler when built, else the same loop in TypeScript.
      let n = 0;
      if (this.batchRows.length < count) {
        this.batchRows = new Int32Array(count);
        this.batchOut = new Int32Array(count);
      }
      this.batchParams.length = 0;
      this.batchRngs.length = 0;
      this.batchItems.length = 0;
      for (let k = 0; k < count; k++) {
        const i = group[k] as number;
        const item = items[i] as StepItem;
        if (!item.sample) continue;
        const state = this.sequences.get(item.seq) as SequenceState;
        this.batchRows[n++] = rowOf[k] as number;
        this.batchParams.push(state.sampling);
        this.batchRngs.push(state.rng);
        this.batchItems.push(i);
      }
      this.batchSampler.sample(full, this.batchRows, this.batchParams, this.batchRngs, this.batchOut, n);
      raw = 0;
      for (let j = 0; j < n; j++) {
        const i = this.batchItems[j] as number;
        const token = this.batchOut[j] as number;
        tokens[i] = token;
        const top = (this.batchParams[j] as SamplingParams).logprobs;
        if (top !== undefined) (x.logprobs ??= new Array(items.length).fill(undefined))[i] = rowLogprobs(this.rawRows, V * raw++, V, token, top, this.topHeap);
      }
    } else {
      for (let k = 0; k < count; k++) {
        const i = group[k] as number;
        const item = items[i] as StepItem;
        if (!item.sample) continue;
        const state = this.sequences.get(item.seq) as SequenceState;
        tokens[i] = this.sampler.sampleRanked(out.values as Float32Array, out.ids as BigInt64Array, (rowOf[k] as number) * out.k, out.k, state.sampling, state.rng, item.adjust);
      }
    }
    x.sampleMs += performance.now() - s0;
  }

  /** Log probabilities of the prompt's next tokens at the item's fed positions (rows ending at lastRow). */
  private promptLogprobsOf(item: StepItem, logits: Float32Array, lastRow: number): TokenLogprobs[] {
    const entries: TokenLogprobs[] = [];
    const end = item.promptEnd ?? item.tokens.length;
    const first = lastRow - item.count + 1;
    for (let t = 0; t < item.count; t++) {
      const p = item.offset + t;
      if (p + 1 >= end) break;
      entries.push(rowLogprobs(logits, (first + t) * this.vocab, this.vocab, item.tokens[p + 1] as number, item.promptLogprobs as number, this.topHeap));
    }
    return entries;
  }

  /**
   * One fast-graph run over `count` items of equal width: their tokens, positions, past lengths
   * and block tables (padded to the longest past in the run with block 0, masked), the pool
   * itself (or a compact copy of the blocks used, see stagePool), then the new keys and values
   * written into each sequence's blocks.
   */
  private async runFast(items: StepItem[], group: ArrayLike<number>, count: number, width: number, fullLogits: boolean): Promise<RunOutput> {
    const bs = this.blockSize;
    let nb = 1;
    for (let k = 0; k < count; k++) {
      const past = Math.ceil((items[group[k] as number] as StepItem).offset / bs);
      if (past > nb) nb = past;
    }
    // Prompt logprobs need every fed position's logits, not only the last one's.
    let rowCount = 0;
    for (let j = 0; j < count; j++) rowCount += (items[group[j] as number] as StepItem).promptLogprobs !== undefined ? width : 1;
    // Rank in the graph when every sampled row can be served from its k best logits.
    let k = 1;
    let ranked = this.maxRanked > 0 && !fullLogits && rowCount === count;
    for (let j = 0; j < count && ranked; j++) {
      const item = items[group[j] as number] as StepItem;
      if (!item.sample) continue;
      const params = (this.sequences.get(item.seq) as SequenceState).sampling;
      // A grammar mask or logprobs need the whole row; adjustments fit while they only lower logits.
      if (item.mask !== undefined || params.logprobs !== undefined || !Sampler.rankedSuffices(params, this.maxRanked, item.adjust)) ranked = false;
      else k = Math.max(k, Sampler.rankedNeeds(params, item.adjust));
    }
    if (this.lastRowBuf.length < count) this.lastRowBuf = new Int32Array(Math.max(count, 2 * this.lastRowBuf.length));
    const lastRow = this.lastRowBuf;
    if (this.bound !== undefined) {
      // The logits rows the run computes: item j's last position, or all its positions.
      if (this.boundRows.length < rowCount) this.boundRows = new Int32Array(Math.max(rowCount, 2 * this.boundRows.length));
      let row = 0;
      for (let j = 0; j < count; j++) {
        const item = items[group[j] as number] as StepItem;
        for (let t = item.promptLogprobs !== undefined ? 0 : width - 1; t < width; t++) this.boundRows[row++] = j * width + t;
        lastRow[j] = row - 1;
      }
      // Measured, not assumed: a run on this path reads no byte out of the pool's buffers.
      const before = this.bound.kvCopiedBytes();
      const out = await this.bound.run(items, group, count, width, nb, this.boundRows, rowCount, ranked, k);
      this.cacheBytes += this.bound.kvCopiedBytes() - before;
      const result: RunOutput = { k: out.k, lastRow };
      if (out.logits !== undefined) result.logits = out.logits;
      if (out.values !== undefined) result.values = out.values;
      if (out.ids !== undefined) result.ids = out.ids;
      return result;
    }
    const rowsN = count * width;
    this.idsFeed.reserve(rowsN);
    this.posFeed.reserve(rowsN);
    this.lengthsFeed.reserve(count);
    this.rowsFeed.reserve(rowCount);
    this.tablesFeed.reserve(count * nb);
    let row = 0;
    const tables = this.tablesFeed.buf;
    for (let k = 0; k < count; k++) {
      const item = items[group[k] as number] as StepItem;
      const len = item.offset;
      for (let t = 0; t < width; t++) {
        this.idsFeed.set(k * width + t, item.tokens[item.offset + t] as number);
        this.posFeed.set(k * width + t, len + t);
      }
      this.lengthsFeed.set(k, len);
      for (let t = item.promptLogprobs !== undefined ? 0 : width - 1; t < width; t++) this.rowsFeed.set(row++, k * width + t);
      lastRow[k] = row - 1;
      const used = Math.ceil(len / bs);
      for (let b = 0; b < nb; b++) tables[k * nb + b] = b < used ? (item.blocks[b] as number) : 0;
    }
    const feeds = this.feeds;
    feeds[IO.inputIds] = this.idsFeed.tensor(count, width);
    feeds[IO.positionIds] = this.posFeed.tensor(count, width);
    feeds[IO.pastLengths] = this.lengthsFeed.tensor(count);
    feeds[IO.logitsRows] = this.rowsFeed.tensor(rowCount);
    if (this.stage) this.stagePool(count * nb, feeds);
    else this.bindPool(feeds);
    feeds[IO.blockTables] = this.tablesFeed.tensor(count, nb);
    if (this.inputNames.has(IO.topK)) {
      this.kFeed.reserve(1);
      this.kFeed.set(0, k);
      feeds[IO.topK] = this.kFeed.tensor(1);
    }
    const out = await (this.session as ort.InferenceSession).run(feeds, ranked ? this.fetchRanked : this.fetchLogits);
    const headStride = width * this.headDim;
    for (let l = 0; l < this.layers; l++) {
      const names = this.names[l] as OnnxEngine['names'][number];
      this.newKeys[l] = (out[names.newKey] as ort.Tensor).data as Float32Array;
      this.newValues[l] = (out[names.newValue] as ort.Tensor).data as Float32Array;
    }
    for (let j = 0; j < count; j++) {
      const item = items[group[j] as number] as StepItem;
      this.pool.writePositions(this.newKeys, this.newValues, j * this.kvHeads * headStride, headStride, item.blocks, item.offset, width);
    }
    if (ranked) return { values: (out[IO.topKValues] as ort.Tensor).data as Float32Array, ids: (out[IO.topKIndices] as ort.Tensor).data as BigInt64Array, k, lastRow };
    return { logits: (out[IO.logits] as ort.Tensor).data as Float32Array, k: 0, lastRow };
  }

  /** The pool's own buffers as the graph's pool inputs: read in place, nothing copied. */
  private bindPool(feeds: Record<string, ort.Tensor>): void {
    const keys = this.pool.keys;
    const values = this.pool.values;
    if (keys === undefined || values === undefined) throw new ModelFormatError('the KV pool is not in host memory: its runner binds the pool itself');
    if (this.poolTensors.length === 0) {
      const dims = [this.kvHeads, this.info.totalBlocks, this.blockSize, this.headDim];
      for (let l = 0; l < this.layers; l++) {
        this.poolTensors.push({ key: new ort.Tensor('float32', keys[l] as Float32Array, dims), value: new ort.Tensor('float32', values[l] as Float32Array, dims) });
      }
    }
    for (let l = 0; l < this.layers; l++) {
      const names = this.names[l] as OnnxEngine['names'][number];
      const t = this.poolTensors[l] as { key: ort.Tensor; value: ort.Tensor };
      feeds[names.poolKey] = t.key;
      feeds[names.poolValue] = t.value;
    }
    // A device provider gets host inputs copied to it: the whole pool, every run.
    if (this.info.provider !== 'cpu') this.cacheBytes += this.info.totalBlocks * this.info.blockBytes;
  }

  private stagedBytes = 0;

  private takeStagedBytes(): number {
    const b = this.stagedBytes;
    this.stagedBytes = 0;
    return b;
  }

  private takeCacheBytes(): number {
    const b = this.cacheBytes;
    this.cacheBytes = 0;
    return b;
  }

  /**
   * Copies the distinct blocks named in the first `entries` table entries into a compact pool
   * and renumbers the tables to it, so a provider that copies its inputs to a device copies
   * only the blocks this run reads.
   */
  private stagePool(entries: number, feeds: Record<string, ort.Tensor>): void {
    const keys = this.pool.keys;
    const values = this.pool.values;
    if (keys === undefined || values === undefined) throw new ModelFormatError('the KV pool is not in host memory: its runner binds the pool itself');
    const tables = this.tablesFeed.buf;
    const map = this.stageMap;
    map.clear();
    for (let e = 0; e < entries; e++) {
      const id = tables[e] as number;
      let at = map.get(id);
      if (at === undefined) {
        at = map.size;
        map.set(id, at);
      }
      tables[e] = at;
    }
    const used = map.size;
    const { kvHeads: H, headDim: hd, blockSize: bs } = this;
    const span = bs * hd;
    if (this.staging === undefined || this.staging.blocks < used) {
      const blocks = Math.max(used, 2 * (this.staging?.blocks ?? 0));
      this.staging = {
        keys: Array.from({ length: this.layers }, () => new Float32Array(H * blocks * span)),
        values: Array.from({ length: this.layers }, () => new Float32Array(H * blocks * span)),
        blocks,
      };
    }
    const st = this.staging;
    const N = this.info.totalBlocks;
    for (let l = 0; l < this.layers; l++) {
      const srcK = keys[l] as Float32Array;
      const srcV = values[l] as Float32Array;
      const dstK = st.keys[l] as Float32Array;
      const dstV = st.values[l] as Float32Array;
      for (const [id, at] of map) {
        for (let h = 0; h < H; h++) {
          const src = (h * N + id) * span;
          const dst = (h * used + at) * span;
          dstK.set(srcK.subarray(src, src + span), dst);
          dstV.set(srcV.subarray(src, src + span), dst);
        }
      }
      const dims = [H, used, bs, hd];
      const names = this.names[l] as OnnxEngine['names'][number];
      feeds[names.poolKey] = new ort.Tensor('float32', dstK.subarray(0, H * used * span), dims);
      feeds[names.poolValue] = new ort.Tensor('float32', dstV.subarray(0, H * used * span), dims);
    }
    this.stagedBytes += used * this.info.blockBytes;
    // Copied once here, and once more by ONNX Runtime to a device provider.
    this.cacheBytes += used * this.info.blockBytes * (this.info.provider === 'cpu' ? 1 : 2);
  }

  /** One hf-interface run: pack the group's caches from their blocks (left-padded), run, write the new positions back. */
  private async runHf(items: StepItem[], group: number[]): Promise<{ logits: Float32Array; seqLen: number }> {
    const b = group.length;
    let P = 0;
    let S = 0;
    for (const i of group) {
      const item = items[i] as StepItem;
      P = Math.max(P, item.offset);
      S = Math.max(S, item.count);
    }
    const T = P + S;
    const hd = this.headDim;
    const H = this.kvHeads;
    const ids = new BigInt64Array(b * S);
    const pos = new BigInt64Array(b * S);
    const mask = new BigInt64Array(b * T);
    for (let k = 0; k < b; k++) {
      const item = items[group[k] as number] as StepItem;
      const len = item.offset;
      const padS = S - item.count;
      mask.fill(1n, k * T + (P - len), k * T + P);
      mask.fill(1n, k * T + P + padS, (k + 1) * T);
      for (let t = 0; t < item.count; t++) {
        ids[k * S + padS + t] = BigInt(item.tokens[item.offset + t] as number);
        pos[k * S + padS + t] = BigInt(len + t);
      }
    }
    const feeds: Record<string, ort.Tensor> = {
      [IO.inputIds]: new ort.Tensor('int64', ids, [b, S]),
      [IO.attentionMask]: new ort.Tensor('int64', mask, [b, T]),
    };
    if (this.inputNames.has(IO.positionIds)) feeds[IO.positionIds] = new ort.Tensor('int64', pos, [b, S]);
    if (this.inputNames.has('use_cache_branch')) feeds.use_cache_branch = new ort.Tensor('bool', [true], [1]);
    const pastSize = b * H * P * hd;
    for (let l = 0; l < this.layers; l++) {
      const pk = new Float32Array(pastSize);
      const pv = new Float32Array(pastSize);
      for (let k = 0; k < b; k++) {
        const item = items[group[k] as number] as StepItem;
        const len = item.offset;
        if (len > 0) this.pool.readPositions(l, item.blocks, 0, len, pk, pv, (k * H * P + (P - len)) * hd, P * hd);
      }
      const names = this.names[l] as OnnxEngine['names'][number];
      feeds[names.pastKey] = new ort.Tensor('float32', pk, [b, H, P, hd]);
      feeds[names.pastValue] = new ort.Tensor('float32', pv, [b, H, P, hd]);
    }
    // The packed past and the present the graph concatenates are both copies of the cache.
    let packed = 0;
    for (const i of group) packed += (items[i] as StepItem).offset;
    this.cacheBytes += (packed + b * T) * H * hd * 8 * this.layers;
    const out = await (this.session as ort.InferenceSession).run(feeds);
    for (let l = 0; l < this.layers; l++) {
      const names = this.names[l] as OnnxEngine['names'][number];
      const presentK = out[names.presentKey]?.data as Float32Array | undefined;
      const presentV = out[names.presentValue]?.data as Float32Array | undefined;
      if (!presentK || !presentV) throw new ModelFormatError(`graph did not return ${names.presentKey}`);
      this.newKeys[l] = presentK;
      this.newValues[l] = presentV;
    }
    for (let k = 0; k < b; k++) {
      const item = items[group[k] as number] as StepItem;
      this.pool.writePositions(this.newKeys, this.newValues, (k * H * T + (T - item.count)) * hd, T * hd, item.blocks, item.offset, item.count);
    }
    const logits = out[IO.logits]?.data as Float32Array | undefined;
    if (!logits) throw new ModelFormatError('graph did not return logits');
    return { logits, seqLen: S };
  }
}

function isIndex(v: number, limit: number): boolean {
  return Number.isInteger(v) && v >= 0 && v < limit;
}

/** Prefill chunks of equal length share one run (requests that arrive together usually have similar prompts); unequal ones run alone, never padded. */
function prefillGroups(items: StepItem[], prefills: number[]): number[][] {
  const byWidth = new Map<number, number[]>();
  for (const i of prefills) {
    const w = (items[i] as StepItem).count;
    const g = byWidth.get(w);
    if (g === undefined) byWidth.set(w, [i]);
    else g.push(i);
  }
  return [...byWidth.values()];
}
