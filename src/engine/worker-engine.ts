/**
 * The ONNX engine on its own thread. onnxruntime-node runs `session.run` synchronously on the
 * calling thread (its JS wrapper only defers the call with setImmediate), so an engine on the
 * server's thread freezes every socket for the length of each step. WorkerEngine keeps an
 * OnnxEngine in a worker_thread (engine-worker.ts) and implements the same Engine interface on
 * the main thread, where no call ever waits on a step.
 *
 * The boundary is data, so the worker engine is a pipe: each execute sends the plan (opens
 * with their sampling state, closes, block moves, items with their block tables) and the
 * worker's OnnxEngine checks and runs it. Nothing of the engine's state is mirrored here.
 *
 * - Each opened sequence's Rng is copied to the worker with its open and lives on there; the
 *   copy on this side is not advanced.
 * - A failed step (a plan the engine rejects, or a failure inside ONNX Runtime) rejects
 *   execute with an Error carrying the original code, statusCode and message (isMarginalError
 *   still recognizes it) and the worker's stack. The engine keeps working afterwards.
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
import createError from '@fastify/error';
import type { OnnxEngineOptions } from './onnx-engine.js';
import { Rng } from './sampling.js';
import type { Engine, EngineInfo, SequenceOpen, StepItem, StepPlan, StepResult, StepTiming } from './types.js';

/** The engine's worker thread failed or exited: nothing can run until a new engine is created. */
export const EngineWorkerError = createError<[string]>('MARGINAL_ENGINE_WORKER', 'engine worker: %s', 500);

// --- protocol shared with engine-worker.ts ---------------------------------------------------

export interface WorkerInit {
  modelDir: string;
  /** Everything but `log`, which is a function and cannot cross threads: lines come back as messages. */
  opts: Omit<OnnxEngineOptions, 'log'>;
}

/**
 * Fields per item in StepRequest.items: seq, where its tokens start in `tokens` (-1 when its
 * bounds are invalid: the worker hands the engine an empty array so it rejects the item with its
 * own message), count, sample (1 or 0), offset (its position), where its table starts in
 * `tables`, and the table's length.
 */
export const ITEM_FIELDS = 7;

export interface StepRequest {
  type: 'step';
  opens: SequenceOpen[];
  closes: Int32Array;
  /** Block moves; Float64Array so a malformed one reaches the engine's check unchanged. */
  kvOps: Float64Array;
  items: Float64Array;
  /** Every item's fed tokens back to back; Float64Array so an invalid token reaches the engine's check exactly. */
  tokens: Float64Array;
  /** Every item's block table back to back. */
  tables: Float64Array;
  keepLogits: boolean;
}

export type ToWorker = StepRequest | { type: 'dispose' };

export interface SerializedError {
  name: string;
  message: string;
  stack: string | undefined;
  /** Own enumerable primitive properties: code, statusCode, param. */
  props: Record<string, string | number | boolean>;
}

export type StepReply =
  | { type: 'step'; ok: true; tokens: Int32Array; logits?: Float32Array; timing: StepTiming }
  | { type: 'step'; ok: false; error: SerializedError };

export type FromWorker =
  | { type: 'ready'; info: EngineInfo }
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

interface Waiter<T> {
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}

const defaultLog = (line: string): void => {
  process.stderr.write(line + '\n');
};

export class WorkerEngine implements Engine {
  private readonly log: (line: string) => void;
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
    log: (line: string) => void,
  ) {
    this.log = log;
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
          resolvePromise(new WorkerEngine(worker, m.info, log));
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

  async execute(plan: StepPlan): Promise<StepResult> {
    const t0 = performance.now();
    if (this.disposing !== undefined) throw new EngineWorkerError('the engine has been disposed');
    if (this.failure !== undefined) throw this.failure;
    assert.ok(this.stepWaiter === undefined, 'WorkerEngine.execute: a step is already in flight (the scheduler runs one at a time)');
    const request = packPlan(plan);
    const reply = await new Promise<StepReply>((resolvePromise, reject) => {
      try {
        this.worker.postMessage(request, [request.closes.buffer, request.kvOps.buffer, request.items.buffer, request.tokens.buffer, request.tables.buffer] as ArrayBuffer[]);
      } catch (e) {
        // Nothing was sent (e.g. a sampling object that cannot be cloned).
        reject(e);
        return;
      }
      this.stepWaiter = { resolve: resolvePromise, reject };
      this.hold();
    });
    if (!reply.ok) throw reviveError(reply.error);
    const totalMs = performance.now() - t0;
    const w = reply.timing;
    const result: StepResult = { tokens: reply.tokens, timing: { ...w, totalMs, glueMs: totalMs - w.runMs - w.sampleMs } };
    if (reply.logits) result.logits = reply.logits;
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

/** The plan as transferable arrays (opens go by structured clone). */
function packPlan(plan: StepPlan): StepRequest {
  const items = plan.items;
  let tokenTotal = 0;
  let tableTotal = 0;
  for (const item of items) {
    if (validBounds(item)) tokenTotal += item.count;
    tableTotal += item.blocks.length;
  }
  const packed = new Float64Array(items.length * ITEM_FIELDS);
  const tokens = new Float64Array(tokenTotal);
  const tables = new Float64Array(tableTotal);
  let p = 0;
  let q = 0;
  for (let i = 0; i < items.length; i++) {
    const item = items[i] as StepItem;
    const f = i * ITEM_FIELDS;
    const ok = validBounds(item);
    packed[f] = item.seq;
    packed[f + 1] = ok ? p : -1;
    packed[f + 2] = item.count;
    packed[f + 3] = item.sample ? 1 : 0;
    packed[f + 4] = item.offset;
    packed[f + 5] = q;
    packed[f + 6] = item.blocks.length;
    if (ok) {
      for (let k = 0; k < item.count; k++) tokens[p + k] = item.tokens[item.offset + k] as number;
      p += item.count;
    }
    for (let b = 0; b < item.blocks.length; b++) tables[q + b] = item.blocks[b] as number;
    q += item.blocks.length;
  }
  return {
    type: 'step',
    opens: plan.opens,
    closes: Int32Array.from(plan.closes),
    kvOps: Float64Array.from(plan.kvOps),
    items: packed,
    tokens,
    tables,
    keepLogits: plan.keepLogits === true,
  };
}

function validBounds(item: StepItem): boolean {
  const c = item.count;
  return Number.isInteger(c) && c >= 1 && Number.isInteger(item.offset) && item.offset >= 0 && item.offset + c <= item.tokens.length;
}
