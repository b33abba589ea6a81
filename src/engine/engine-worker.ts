/**
 * Worker-thread entry for WorkerEngine: opens the OnnxEngine, then rebuilds each step's plan
 * from the arrays it arrives in and executes it. Runs compiled (dist/engine/engine-worker.js),
 * or from source imported through tsx's tsImport (see startWorker in worker-engine.ts for why
 * not execArgv).
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { loadModelDir } from '../models/modeldir.js';
import { OnnxEngine } from './onnx-engine.js';
import type { StepItem, StepPlan, StepResult } from './types.js';
import { ITEM_FIELDS, reviveRng, serializeError, type FromWorker, type StepRequest, type ToWorker, type WorkerInit } from './worker-engine.js';

function requirePort(): MessagePort {
  if (parentPort === null) throw new Error('engine-worker runs as a worker thread started by WorkerEngine');
  return parentPort;
}

const port = requirePort();

function post(m: FromWorker, transfer: ArrayBuffer[] = []): void {
  port.postMessage(m, transfer);
}

const EMPTY = new Float64Array(0);

/**
 * Reused across steps: item k's object, and its token array, indexed by position (tokens are
 * written at [offset, offset + count), which is where the engine reads them).
 */
const itemPool: StepItem[] = [];
const tokenArrays: Float64Array[] = [];

function unpack(m: StepRequest): StepPlan {
  const n = m.items.length / ITEM_FIELDS;
  const items: StepItem[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const f = i * ITEM_FIELDS;
    const at = m.items[f + 1] as number;
    const count = m.items[f + 2] as number;
    const offset = m.items[f + 4] as number;
    const tableAt = m.items[f + 5] as number;
    let tokens: Float64Array = EMPTY;
    if (at >= 0) {
      let buf = tokenArrays[i];
      if (buf === undefined || buf.length < offset + count) {
        buf = new Float64Array(Math.max(offset + count, 2 * (buf?.length ?? 0)));
        tokenArrays[i] = buf;
      }
      buf.set(m.tokens.subarray(at, at + count), offset);
      tokens = buf;
    }
    const item = (itemPool[i] ??= { seq: 0, tokens: EMPTY, offset: 0, count: 0, sample: false, blocks: EMPTY });
    item.seq = m.items[f] as number;
    item.tokens = tokens;
    item.offset = offset;
    item.count = count;
    item.sample = m.items[f + 3] === 1;
    item.blocks = m.tables.subarray(tableAt, tableAt + (m.items[f + 6] as number));
    items[i] = item;
  }
  const plan: StepPlan = {
    items,
    opens: m.opens.map((o) => ({ seq: o.seq, sampling: o.sampling, rng: reviveRng(o.rng) })),
    closes: Array.from(m.closes),
    kvOps: Array.from(m.kvOps),
  };
  if (m.keepLogits) plan.keepLogits = true;
  return plan;
}

async function step(engine: OnnxEngine, m: StepRequest): Promise<void> {
  let result: StepResult;
  try {
    result = await engine.execute(unpack(m));
  } catch (e) {
    post({ type: 'step', ok: false, error: serializeError(e) });
    return;
  }
  // The engine allocates both arrays per step and keeps no reference: moving them costs nothing.
  const transfer: ArrayBuffer[] = [result.tokens.buffer as ArrayBuffer];
  if (result.logits) transfer.push(result.logits.buffer as ArrayBuffer);
  post({ type: 'step', ok: true, tokens: result.tokens, ...(result.logits ? { logits: result.logits } : {}), timing: result.timing }, transfer);
}

async function main(): Promise<void> {
  const { modelDir, opts } = workerData as WorkerInit;
  let engine: OnnxEngine;
  try {
    const model = await loadModelDir(modelDir);
    engine = await OnnxEngine.create(model, { ...opts, log: (line) => post({ type: 'log', line }) });
  } catch (e) {
    post({ type: 'initFailed', error: serializeError(e) });
    return;
  }
  post({ type: 'ready', info: engine.info });
  let disposed = false;
  // OnnxEngine.execute awaits inside (ORT defers run with setImmediate), so a message handled
  // as it arrives could land in the middle of a step: the chain keeps them in order.
  let chain = Promise.resolve();
  port.on('message', (m: ToWorker) => {
    chain = chain.then(async () => {
      if (disposed) return;
      if (m.type === 'step') {
        await step(engine, m);
        return;
      }
      disposed = true;
      try {
        await engine.dispose();
        post({ type: 'disposed' });
      } catch (e) {
        post({ type: 'disposed', error: serializeError(e) });
      }
    });
  });
}

void main();
