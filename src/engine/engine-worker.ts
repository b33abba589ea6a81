/**
 * Worker-thread entry for WorkerEngine: opens the OnnxEngine, then applies each step's queued
 * commands and runs its plan. Runs compiled (dist/engine/engine-worker.js), or from source
 * imported through tsx's tsImport (see startWorker in worker-engine.ts for why not execArgv).
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { loadModelDir } from '../models/modeldir.js';
import { OnnxEngine } from './onnx-engine.js';
import type { StepItem, StepResult } from './types.js';
import {
  ITEM_FIELDS,
  reviveRng,
  serializeError,
  type FromWorker,
  type StepRequest,
  type ToWorker,
  type WorkerCommand,
  type WorkerInit,
} from './worker-engine.js';

function requirePort(): MessagePort {
  if (parentPort === null) throw new Error('engine-worker runs as a worker thread started by WorkerEngine');
  return parentPort;
}

const port = requirePort();

function post(m: FromWorker, transfer: ArrayBuffer[] = []): void {
  port.postMessage(m, transfer);
}

function apply(engine: OnnxEngine, c: WorkerCommand): void {
  switch (c.op) {
    case 'open':
      engine.open(c.seq, c.sampling, reviveRng(c.rng));
      return;
    case 'close':
      engine.close(c.seq);
      return;
    case 'storeBlock':
      engine.storeBlock(c.seq, c.index, c.blockId);
      return;
    case 'loadBlocks':
      engine.loadBlocks(c.seq, c.blockIds);
      return;
    case 'swapOut':
      engine.swapOut(c.seq);
      return;
    case 'swapIn':
      engine.swapIn(c.seq);
      return;
  }
}

async function step(engine: OnnxEngine, m: StepRequest): Promise<void> {
  let error: unknown;
  let failed = false;
  // Every command is applied even after one fails, as the caller's later calls would have been
  // in-process; the first failure is what the step reports.
  for (const c of m.commands) {
    try {
      apply(engine, c);
    } catch (e) {
      if (!failed) error = e;
      failed = true;
    }
  }
  const n = m.items.length / ITEM_FIELDS;
  const items: StepItem[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const f = i * ITEM_FIELDS;
    const item: StepItem = { seq: m.items[f] as number, tokens: m.tokens, offset: m.items[f + 1] as number, count: m.items[f + 2] as number, sample: m.items[f + 3] === 1 };
    const x = m.extras?.[i];
    if (x !== undefined) {
      item.adjust = x.adjust;
      item.mask = x.mask;
      if (x.promptLogprobs !== undefined && item.offset >= 0) {
        // The item's own tokens plus the prompt token after them, whose log probability the last position reports.
        const own = new Int32Array(item.count + (x.next !== undefined ? 1 : 0));
        for (let t = 0; t < item.count; t++) own[t] = m.tokens[item.offset + t] as number;
        if (x.next !== undefined) own[item.count] = x.next;
        item.tokens = own;
        item.offset = 0;
        item.promptLogprobs = x.promptLogprobs;
        item.promptEnd = x.promptEnd;
      }
    }
    items[i] = item;
  }
  let result: StepResult | undefined;
  if (!failed) {
    try {
      result = await engine.execute(m.keepLogits ? { items, keepLogits: true } : { items });
    } catch (e) {
      error = e;
    }
  }
  const held = new Int32Array(2 * n);
  for (let i = 0; i < n; i++) {
    const seq = (items[i] as StepItem).seq;
    held[2 * i] = engine.contextLength(seq);
    held[2 * i + 1] = engine.blocksHeld(seq);
  }
  if (result === undefined) {
    post({ type: 'step', ok: false, error: serializeError(error), held }, [held.buffer]);
    return;
  }
  // The engine allocates both arrays per step and keeps no reference: moving them costs nothing.
  const transfer: ArrayBuffer[] = [result.tokens.buffer as ArrayBuffer, held.buffer];
  if (result.logits) transfer.push(result.logits.buffer as ArrayBuffer);
  post(
    {
      type: 'step',
      ok: true,
      tokens: result.tokens,
      ...(result.logits ? { logits: result.logits } : {}),
      ...(result.logprobs ? { logprobs: result.logprobs } : {}),
      ...(result.promptLogprobs ? { promptLogprobs: result.promptLogprobs } : {}),
      timing: result.timing,
      held,
    },
    transfer,
  );
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
  post({ type: 'ready', info: engine.info, swapSecondsPerToken: engine.swapSecondsPerToken });
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
