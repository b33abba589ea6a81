/**
 * Piscina worker for TokenizePool: loads the model directory's tokenizer once per thread and
 * encodes the prompts the pool sends it. Runs compiled (dist/server/tokenize-worker.js, loaded
 * with import()) or from source under `node --import tsx`: the worker inherits that flag through
 * execArgv, and on Node 20, where tsx installs its ESM hooks on the main thread only, piscina's
 * require() of this file goes through tsx's CommonJS hook, so nothing here may need ESM-only
 * features (no top-level await; dependencies must offer a require entry).
 */
import { workerData } from 'node:worker_threads';
import { move } from 'piscina';
import { loadModelDir } from '../models/modeldir.js';
import type { Tokenizer } from '../models/tokenizer/types.js';

export interface TokenizeWorkerData {
  modelDir: string;
}

export interface EncodeTask {
  text: string;
  bos: boolean;
}

/** What a task resolves to on the main thread: the ids, transferred rather than cloned. */
export type EncodeResult = Int32Array;

export type EncodeHandler = (task: EncodeTask) => ReturnType<typeof move>;

async function init(): Promise<EncodeHandler> {
  const { modelDir } = workerData as TokenizeWorkerData;
  let tokenizer: Tokenizer;
  try {
    // loadModelDir, not a tokenizer-only shortcut: it is what builds the main thread's
    // tokenizer (marginal dirs and Hugging Face folders, addBos/post-processor rules alike), so
    // the ids cannot drift apart. It reads configs and the tokenizer, never the graphs' weights.
    tokenizer = (await loadModelDir(modelDir)).tokenizer;
    // The llama2.c tokenizer builds its merge table on first use: pay for it at startup, not
    // inside the first request that lands on this thread.
    tokenizer.encode('warm up', { bos: true });
  } catch (e) {
    // Failing the module instead would make piscina report a bootstrap error with no task to
    // carry it (under tsx even masked as "Unknown file extension .ts", from its import()
    // fallback); this way every task, TokenizePool.create()'s warm-up first, rejects with it.
    const error = e instanceof Error ? e : new Error(String(e));
    return () => {
      throw error;
    };
  }
  return (task: EncodeTask) => {
    // The pool never sends anything else; a caller that bypassed the types gets a clear
    // rejection instead of String(x) being tokenized.
    if (task === null || typeof task !== 'object' || typeof task.text !== 'string') {
      throw new TypeError(`tokenize worker: text must be a string, got ${task === null || typeof task !== 'object' ? typeof task : typeof task.text}`);
    }
    // Receiving a cloned number[] costs the main thread ~45 ns a token; a transferred Int32Array
    // ~9 ns a token, copy back into an array included (bench/eventloop.ts, transport table;
    // msgpackr does no better). The copy into it is paid here, off the main thread.
    return move(Int32Array.from(tokenizer.encode(task.text, { bos: task.bos === true })));
  };
}

// Piscina awaits a promised default export, so the tokenizer loads once, before the first task.
export default init();
