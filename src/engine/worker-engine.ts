/**
 * The ONNX engine on its own thread. onnxruntime-node runs `session.run` synchronously on the
 * calling thread (its JS wrapper only defers the call with setImmediate), so an engine on the
 * server's thread freezes every socket for the length of each step. WorkerEngine keeps an
 * OnnxEngine in a worker_thread (engine-worker.ts) and implements the same Engine interface on
 * the main thread, where no call ever waits on a step.
 *
 * Semantics that differ from calling an OnnxEngine directly:
 *
 * - The synchronous methods (open, close, storeBlock, loadBlocks, swapOut, swapIn) return at
 *   once: they are queued and travel with the next execute, and the worker applies them in call
 *   order before that step. They are checked here first against a mirror of the engine's
 *   bookkeeping and throw the same typed errors the OnnxEngine would, so a bad call still fails
 *   at the call. A command the worker rejects anyway (which means the mirror and the engine
 *   disagree) fails the next execute instead, and that step's plan is not run.
 * - contextLength, blocksHeld and freeBlocks answer from that mirror: commands count when
 *   called, a step's growth when its execute settles.
 * - Each sequence's Rng is copied to the worker when its open (or swapIn's reopen) is sent; the
 *   copy here is advanced by one draw per step in which the worker drew from it (the Sampler
 *   draws exactly once per non-greedy sample), so reopening a sequence with the same Rng after a
 *   close continues its stream as it would in-process. After a failed step the copy here is not
 *   advanced, since the step's requests are failed. Rngs shared between open sequences are not
 *   supported (the scheduler gives each request its own).
 * - A failed step (or command) rejects execute with an Error carrying the original code,
 *   statusCode and message (isMarginalError still recognizes it) and the worker's stack. The
 *   engine keeps working afterwards.
 * - StepTiming.totalMs is the wall time seen by the caller, message passing included; runMs and
 *   sampleMs are the worker's, so the round trip shows up in glueMs.
 * - If the worker thread dies, the step in flight and every later execute reject with
 *   EngineWorkerError (MARGINAL_ENGINE_WORKER).
 * - An idle WorkerEngine does not keep the process alive (as an in-process session would not);
 *   a step, create or dispose in progress does.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import { ContextLengthError, EngineCapacityError, EngineWorkerError, InvalidArgumentError } from '../errors.js';
import { BlockPool } from '../kv/blocks.js';
import type { OnnxEngineOptions } from './onnx-engine.js';
import { Rng } from '../sampling/rng.js';
import type { SamplingParams } from '../sampling/params.js';
import type { Engine, EngineInfo, StepItem, StepPlan, StepResult, StepTiming } from './types.js';
import type { LogitAdjust } from '../sampling/penalties.js';
import type { TokenLogprobs } from '../sampling/logprobs.js';

/** Re-exported from the error registry, where it is defined. */
export { EngineWorkerError };

// --- protocol shared with engine-worker.ts ---------------------------------------------------

export interface WorkerInit {
  modelDir: string;
  /** Everything but `log`, which is a function and cannot cross threads: lines come back as messages. */
  opts: Omit<OnnxEngineOptions, 'log'>;
}

export type WorkerCommand =
  | { op: 'open'; seq: number; sampling: SamplingParams; rng: Rng }
  | { op: 'close'; seq: number }
  | { op: 'storeBlock'; seq: number; index: number; blockId: number }
  | { op: 'loadBlocks'; seq: number; blockIds: number[] }
  | { op: 'swapOut'; seq: number }
  | { op: 'swapIn'; seq: number };

/** Fields per item in StepRequest.items: seq, offset into `tokens`, count, sample (1 or 0). */
export const ITEM_FIELDS = 4;

export interface StepRequest {
  type: 'step';
  commands: WorkerCommand[];
  items: Float64Array;
  /** Every item's tokens back to back: Int32Array unless some token does not fit one (then it is invalid, and the worker must see the exact value to reject it as the OnnxEngine would). */
  tokens: Int32Array | Float64Array;
  keepLogits: boolean;
  /** Per item, the optional StepItem fields that travel as structured clones (absent when no item has any). */
  extras?: (ItemExtras | undefined)[];
}

/**
 * StepItem's optional sampling inputs. promptEnd is relative to the item's first fed token, and
 * `next` is the prompt token after the item's chunk (the worker sees only the chunk's tokens).
 */
export interface ItemExtras {
  adjust?: LogitAdjust | undefined;
  mask?: Int32Array | undefined;
  promptLogprobs?: number;
  promptEnd?: number;
  next?: number;
}

export type ToWorker = StepRequest | { type: 'dispose' };

export interface SerializedError {
  name: string;
  message: string;
  stack: string | undefined;
  /** Own enumerable primitive properties: code, statusCode, param. */
  props: Record<string, string | number | boolean>;
}

/** Per item after the step, failed or not: the sequence's [contextLength, blocksHeld] in the worker. */
type Held = Int32Array;

export type StepReply =
  | {
      type: 'step';
      ok: true;
      tokens: Int32Array;
      logits?: Float32Array;
      logprobs?: (TokenLogprobs | undefined)[];
      promptLogprobs?: (TokenLogprobs[] | undefined)[];
      timing: StepTiming;
      held: Held;
    }
  | { type: 'step'; ok: false; error: SerializedError; held: Held };

export type FromWorker =
  | { type: 'ready'; info: EngineInfo; swapSecondsPerToken: number }
  | { type: 'initFailed'; error: SerializedError }
  | { type: 'log'; line: string }
  | StepReply
  | { type: 'disposed'; error?: SerializedError };

export function serializeError(e: unknown): SerializedError {
  if (!(e instanceof Error)) return { name: 'Error', message: String(e), stack: undefined, props: {} };
  const props: Record<string, string | number | boolean> = {};
  for (const [k, v] of Object.entries(e)) {
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') props[k] = v;
  }
  return { name: e.name, message: e.message, stack: e.stack, props };
}

export function reviveError(s: SerializedError): Error {
  const e = new Error(s.message);
  Object.assign(e, s.props);
  e.name = s.name;
  // The worker's stack is the one that says where the step failed.
  if (s.stack !== undefined) e.stack = s.stack;
  return e;
}

/**
 * An Rng's state is its own data properties, which structured clone copies; only the prototype
 * is lost on the way. checkRngCloneable guards that assumption.
 */
export function reviveRng(clone: Rng): Rng {
  return Object.setPrototypeOf(clone, Rng.prototype) as Rng;
}

let rngCloneable = false;
function checkRngCloneable(): void {
  if (rngCloneable) return;
  const a = new Rng(0x5eed);
  a.next();
  const b = reviveRng(structuredClone(a));
  if (a.nextUint32() !== b.nextUint32() || a.nextUint32() !== b.nextUint32()) {
    throw new Error('WorkerEngine: an Rng no longer survives structured clone, so seeded streams cannot move to the worker');
  }
  rngCloneable = true;
}

/**
 * Starts engine-worker: dist/engine/engine-worker.js when this module is compiled. From source
 * (this file is .ts, so we run under tsx) the worker cannot simply be given engine-worker.ts: on
 * Node 20 loader hooks registered on the main thread do not reach workers, and tsx's
 * `--import tsx`, although workers inherit it through execArgv, registers itself only on the
 * main thread there. So the worker starts from a line of JavaScript that has tsx import the
 * TypeScript entry (tsImport scopes its hooks to that import tree, so it cannot clash with hooks
 * a newer Node does pass on).
 */
function startWorker(init: WorkerInit): Worker {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./engine-worker.js', import.meta.url), { workerData: init });
  const api = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./engine-worker.ts', import.meta.url).href;
  const code = `import(${JSON.stringify(api)}).then((tsx) => tsx.tsImport(${JSON.stringify(entry)}, ${JSON.stringify(entry)}));`;
  return new Worker(code, { eval: true, workerData: init });
}

// --- main-thread side ------------------------------------------------------------------------

interface SeqState {
  len: number;
  sampling: SamplingParams;
  rng: Rng;
}

interface Waiter<T> {
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}

const defaultLog = (line: string): void => {
  process.stderr.write(line + '\n');
};

export class WorkerEngine implements Engine {
  readonly swapSecondsPerToken: number;
  private readonly log: (line: string) => void;
  /** Commands called since the last step was sent, in call order. */
  private queue: WorkerCommand[] = [];
  // The mirror of the worker's OnnxEngine bookkeeping (same rules, same BlockPool).
  private readonly opened = new Map<number, SeqState>();
  private readonly swapped = new Map<number, SeqState>();
  private readonly stored = new Set<number>();
  private readonly pool: BlockPool;
  private stepWaiter: Waiter<StepReply> | undefined;
  private disposeWaiter: Waiter<void> | undefined;
  private disposing: Promise<void> | undefined;
  private failure: Error | undefined;
  private exited = false;
  /** Operations waiting on the worker: while any is, the worker keeps the process alive. */
  private holds = 0;

  private constructor(
    private readonly worker: Worker,
    readonly info: EngineInfo,
    swapSecondsPerToken: number,
    log: (line: string) => void,
  ) {
    this.swapSecondsPerToken = swapSecondsPerToken;
    this.log = log;
    this.pool = new BlockPool(info.totalBlocks, info.blockSize);
    worker.on('message', (m: FromWorker) => this.onMessage(m));
    worker.on('error', (e: Error) => this.fail(Object.assign(new EngineWorkerError(`the worker thread failed: ${e.message}`), { cause: e })));
    worker.on('messageerror', (e: Error) => this.fail(Object.assign(new EngineWorkerError(`a message from the worker could not be read: ${e.message}`), { cause: e })));
    worker.on('exit', (code: number) => {
      this.exited = true;
      this.fail(new EngineWorkerError(`the worker thread exited (code ${code})`));
    });
    worker.unref();
  }

  /**
   * Starts a worker that loads `modelDir` and opens an OnnxEngine on it with `opts`; resolves
   * once the session is open. Load errors reject with their original code (e.g. MARGINAL_MODEL_FORMAT).
   */
  static async create(modelDir: string, opts: OnnxEngineOptions = {}): Promise<WorkerEngine> {
    checkRngCloneable();
    const { log = defaultLog, ...rest } = opts;
    const init: WorkerInit = { modelDir: resolve(modelDir), opts: rest };
    const worker = startWorker(init);
    return new Promise<WorkerEngine>((resolvePromise, reject) => {
      const settle = (): void => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
      };
      const onMessage = (m: FromWorker): void => {
        if (m.type === 'log') log(m.line);
        else if (m.type === 'ready') {
          settle();
          resolvePromise(new WorkerEngine(worker, m.info, m.swapSecondsPerToken, log));
        } else if (m.type === 'initFailed') {
          settle();
          void worker.terminate();
          reject(reviveError(m.error));
        }
      };
      const onError = (e: Error): void => {
        settle();
        void worker.terminate();
        reject(Object.assign(new EngineWorkerError(`the worker thread failed to start: ${e.message}`), { cause: e }));
      };
      const onExit = (code: number): void => {
        settle();
        reject(new EngineWorkerError(`the worker thread exited during start-up (code ${code})`));
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    });
  }

  /** False once the worker thread has exited (after dispose, or when it died). */
  get alive(): boolean {
    return !this.exited;
  }

  get threadId(): number {
    return this.worker.threadId;
  }

  get freeBlocks(): number {
    return this.pool.freeBlocks;
  }

  contextLength(seq: number): number {
    return this.opened.get(seq)?.len ?? 0;
  }

  blocksHeld(seq: number): number {
    return this.pool.heldBy(seq);
  }

  open(seq: number, sampling: SamplingParams, rng: Rng): void {
    this.checkOpen(seq);
    this.opened.set(seq, { len: 0, sampling, rng });
    this.queue.push({ op: 'open', seq, sampling, rng });
  }

  close(seq: number): void {
    this.closeMirror(seq);
    this.queue.push({ op: 'close', seq });
  }

  storeBlock(seq: number, index: number, blockId: number): void {
    const s = this.opened.get(seq);
    if (s === undefined) throw new InvalidArgumentError(`sequence ${seq} is not open`);
    if ((index + 1) * this.info.blockSize > s.len) throw new InvalidArgumentError(`block ${index} of sequence ${seq} is not computed yet`);
    this.stored.add(blockId);
    this.queue.push({ op: 'storeBlock', seq, index, blockId });
  }

  loadBlocks(seq: number, blockIds: readonly number[]): void {
    const s = this.opened.get(seq);
    if (s === undefined) throw new InvalidArgumentError(`sequence ${seq} is not open`);
    if (s.len !== 0) throw new InvalidArgumentError(`sequence ${seq} is not empty`);
    const bs = this.info.blockSize;
    if (blockIds.length * bs > this.info.maxContext) throw new ContextLengthError(`${blockIds.length} blocks exceed the context`);
    for (const id of blockIds) {
      if (!this.stored.has(id)) throw new InvalidArgumentError(`block ${id} was never stored`);
    }
    this.pool.ensure(seq, blockIds.length * bs);
    s.len = blockIds.length * bs;
    this.queue.push({ op: 'loadBlocks', seq, blockIds: Array.from(blockIds) });
  }

  swapOut(seq: number): void {
    const s = this.opened.get(seq);
    if (s === undefined) throw new InvalidArgumentError(`sequence ${seq} is not open`);
    this.closeMirror(seq);
    this.swapped.set(seq, s);
    this.queue.push({ op: 'swapOut', seq });
  }

  /**
   * Unlike OnnxEngine, a swapIn that finds too few free blocks leaves the sequence swapped out
   * (OnnxEngine throws after reopening it); the scheduler reserves the blocks first, so it never
   * gets that far.
   */
  swapIn(seq: number): void {
    const s = this.swapped.get(seq);
    if (s === undefined) throw new InvalidArgumentError(`sequence ${seq} is not swapped out`);
    this.checkOpen(seq);
    const need = this.pool.blocksFor(s.len);
    if (need > this.pool.freeBlocks) {
      throw new EngineCapacityError(`KV cache full: need ${need} more blocks, ${this.pool.freeBlocks} free of ${this.pool.totalBlocks}`);
    }
    this.opened.set(seq, s);
    this.swapped.delete(seq);
    this.pool.ensure(seq, s.len);
    this.queue.push({ op: 'swapIn', seq });
  }

  private checkOpen(seq: number): void {
    if (this.opened.has(seq)) throw new InvalidArgumentError(`sequence ${seq} is already open`);
    if (this.opened.size >= this.info.maxSequences) throw new EngineCapacityError(`all ${this.info.maxSequences} sequence slots are in use`);
  }

  private closeMirror(seq: number): void {
    this.swapped.delete(seq);
    if (this.opened.delete(seq)) this.pool.release(seq);
  }

  async execute(plan: StepPlan): Promise<StepResult> {
    const t0 = performance.now();
    if (this.disposing !== undefined) throw new EngineWorkerError('the engine has been disposed');
    if (this.failure !== undefined) throw this.failure;
    assert.ok(this.stepWaiter === undefined, 'WorkerEngine.execute: a step is already in flight (the scheduler runs one at a time)');
    const n = plan.items.length;
    const items = new Float64Array(n * ITEM_FIELDS);
    const tokens = packTokens(plan.items, items);
    // What each item's sequence was when sent: a reply updates only sequences nobody closed or
    // reopened while the step ran.
    const states = plan.items.map((item) => this.opened.get(item.seq));
    const commands = this.queue;
    this.queue = [];
    const request: StepRequest = { type: 'step', commands, items, tokens, keepLogits: plan.keepLogits === true };
    const extras = itemExtras(plan.items);
    if (extras !== undefined) request.extras = extras;
    const reply = await new Promise<StepReply>((resolvePromise, reject) => {
      try {
        this.worker.postMessage(request, [items.buffer, tokens.buffer as ArrayBuffer]);
      } catch (e) {
        // Nothing was sent (e.g. a sampling object that cannot be cloned): the commands stay queued.
        this.queue = commands.concat(this.queue);
        reject(e);
        return;
      }
      this.stepWaiter = { resolve: resolvePromise, reject };
      this.hold();
    });
    for (let i = 0; i < n; i++) {
      const s = states[i];
      const seq = (plan.items[i] as StepItem).seq;
      if (s === undefined || this.opened.get(seq) !== s) continue;
      s.len = reply.held[2 * i] as number;
      const blocks = reply.held[2 * i + 1] as number;
      const more = blocks - this.pool.heldBy(seq);
      // A shortfall means calls made while this step ran claimed the blocks; the worker will
      // reject those commands, and that error surfaces at the next step.
      if (more > 0 && more <= this.pool.freeBlocks) this.pool.ensure(seq, blocks * this.info.blockSize);
    }
    if (!reply.ok) throw reviveError(reply.error);
    for (let i = 0; i < n; i++) {
      const s = states[i];
      if (s !== undefined && (reply.tokens[i] as number) >= 0 && s.sampling.temperature > 0) s.rng.next();
    }
    const totalMs = performance.now() - t0;
    const w = reply.timing;
    const result: StepResult = { tokens: reply.tokens, timing: { ...w, totalMs, glueMs: totalMs - w.runMs - w.sampleMs } };
    if (reply.logits) result.logits = reply.logits;
    if (reply.logprobs) result.logprobs = reply.logprobs;
    if (reply.promptLogprobs) result.promptLogprobs = reply.promptLogprobs;
    return result;
  }

  /**
   * Lets a step in flight finish, releases the ONNX Runtime session in the worker, then
   * terminates the thread. Later executes reject; a second call returns the first's promise.
   */
  dispose(): Promise<void> {
    this.disposing ??= this.shutdown();
    return this.disposing;
  }

  private async shutdown(): Promise<void> {
    this.queue = [];
    let releaseError: Error | undefined;
    if (this.failure === undefined) {
      this.hold();
      try {
        await new Promise<void>((resolvePromise, reject) => {
          this.disposeWaiter = { resolve: resolvePromise, reject };
          this.worker.postMessage({ type: 'dispose' } satisfies ToWorker);
        });
      } catch (e) {
        releaseError = e as Error;
      } finally {
        this.release();
      }
    }
    this.disposeWaiter = undefined;
    await this.worker.terminate();
    if (releaseError !== undefined) throw releaseError;
  }

  private onMessage(m: FromWorker): void {
    switch (m.type) {
      case 'log':
        this.log(m.line);
        return;
      case 'step': {
        const w = this.stepWaiter;
        this.stepWaiter = undefined;
        if (w !== undefined) {
          this.release();
          w.resolve(m);
        }
        return;
      }
      case 'disposed': {
        const w = this.disposeWaiter;
        this.disposeWaiter = undefined;
        if (m.error !== undefined) w?.reject(reviveError(m.error));
        else w?.resolve();
        return;
      }
      default:
        return;
    }
  }

  private hold(): void {
    if (this.holds++ === 0) this.worker.ref();
  }

  private release(): void {
    if (--this.holds === 0) this.worker.unref();
  }

  private fail(e: Error): void {
    this.failure ??= e;
    const step = this.stepWaiter;
    this.stepWaiter = undefined;
    if (step !== undefined) {
      this.release();
      step.reject(this.failure);
    }
    // Nothing left to release: the session went with the thread.
    const d = this.disposeWaiter;
    this.disposeWaiter = undefined;
    d?.resolve();
  }
}

/**
 * Copies each item's tokens[offset, offset + count) into one array (its position goes in
 * `items`). An item whose bounds are invalid is sent with offset -1 so the worker's OnnxEngine
 * rejects it with its own message, at its own turn among the items.
 */
function packTokens(plan: StepItem[], items: Float64Array): Int32Array | Float64Array {
  let total = 0;
  const valid = plan.map((item) => {
    const c = item.count;
    const ok = Number.isInteger(c) && c >= 1 && Number.isInteger(item.offset) && item.offset >= 0 && item.offset + c <= item.tokens.length;
    if (ok) total += c;
    return ok;
  });
  const fill = (out: Int32Array | Float64Array): boolean => {
    let p = 0;
    let exact = true;
    for (let i = 0; i < plan.length; i++) {
      const item = plan[i] as StepItem;
      const f = i * ITEM_FIELDS;
      items[f] = item.seq;
      items[f + 1] = valid[i] ? p : -1;
      items[f + 2] = item.count;
      items[f + 3] = item.sample ? 1 : 0;
      if (!valid[i]) continue;
      const src = item.tokens;
      if (src instanceof Int32Array) {
        out.set(src.subarray(item.offset, item.offset + item.count), p);
      } else {
        for (let k = 0; k < item.count; k++) {
          const t = src[item.offset + k] as number;
          out[p + k] = t;
          if (out[p + k] !== t) exact = false;
        }
      }
      p += item.count;
    }
    return exact;
  };
  const ints = new Int32Array(total);
  if (fill(ints)) return ints;
  const floats = new Float64Array(total);
  fill(floats);
  return floats;
}

/** The items' optional sampling inputs for the worker, or undefined when no item has any (the usual step). */
function itemExtras(plan: StepItem[]): (ItemExtras | undefined)[] | undefined {
  let out: (ItemExtras | undefined)[] | undefined;
  for (let i = 0; i < plan.length; i++) {
    const item = plan[i] as StepItem;
    if (item.adjust === undefined && item.mask === undefined && item.promptLogprobs === undefined) continue;
    out ??= new Array<ItemExtras | undefined>(plan.length).fill(undefined);
    const x: ItemExtras = {};
    if (item.adjust !== undefined) x.adjust = item.adjust;
    if (item.mask !== undefined) x.mask = item.mask;
    if (item.promptLogprobs !== undefined) {
      const end = item.promptEnd ?? item.tokens.length;
      x.promptLogprobs = item.promptLogprobs;
      x.promptEnd = end - item.offset;
      if (item.offset + item.count < end) x.next = item.tokens[item.offset + item.count] as number;
    }
    out[i] = x;
  }
  return out;
}
