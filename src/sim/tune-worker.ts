/**
 * Piscina worker for `tune` (src/sim/tune.ts): simulates one (candidate curves, load) pair per
 * task. The trace arrives once per thread, msgpack-packed in a SharedArrayBuffer in workerData,
 * so the main thread packs it once instead of structured-cloning every request into every
 * worker; tasks carry only the curve specs as JSON-able objects and the arrival rate scale.
 *
 * Runs compiled (dist/sim/tune-worker.js, loaded with import()) or from source under
 * `node --import tsx`: the worker inherits that flag through execArgv, and on Node 20, where
 * tsx installs its ESM hooks on the main thread only, piscina's require() of this file goes
 * through tsx's CommonJS hook. So nothing this file imports may need ESM-only features (no
 * top-level await; dependencies must offer a require entry).
 */
import { workerData } from 'node:worker_threads';
import { unpack } from 'msgpackr';
import { parseCurveFile } from '../economy/curves.js';
import { loadTf } from '../economy/tfjs.js';
import type { Summary } from './metrics.js';
import { simulate, type SimOptions } from './simulator.js';
import type { TraceRequest } from './trace.js';

/** The simulator options every task shares: SimOptions without curves, policy or callbacks. */
export type TuneSimOptions = Omit<SimOptions, 'curves' | 'policy' | 'onProgress' | 'checkInvariants'>;

export interface TuneWorkerData {
  /** One per replicate (the trace under another workload seed): msgpackr.pack(trace) copied into a SharedArrayBuffer. */
  traces: SharedArrayBuffer[];
  sim: TuneSimOptions;
}

export interface TuneTask {
  /** Echoed back so results can be put in candidate order whatever order they finish in. */
  candidate: number;
  load: number;
  replicate: number;
  policy: string;
  /** Arrival times are divided by this, as `marginal sim --rate-scale` does. */
  rateScale: number;
  /** A curve file's JSON (parseCurveFile's input). */
  curves: { tokens: object; kv: object };
}

export type TuneTaskResult = { candidate: number; load: number; replicate: number; summary: Summary } | { candidate: number; load: number; replicate: number; error: string };

const bases: (TraceRequest[] | undefined)[] = [];
let scaled: { rateScale: number; replicate: number; trace: TraceRequest[] } | undefined;

/** Tasks come (load, replicate)-major from the pool, so one cached scaling serves long runs of them. */
function traceAt(replicate: number, rateScale: number): TraceRequest[] {
  // A private copy first: msgpackr's native string extractor refuses shared memory.
  const base = (bases[replicate] ??= unpack(new Uint8Array((workerData as TuneWorkerData).traces[replicate] as SharedArrayBuffer).slice()) as TraceRequest[]);
  if (scaled?.rateScale !== rateScale || scaled.replicate !== replicate) scaled = { rateScale, replicate, trace: base.map((r) => ({ ...r, t: r.t / rateScale })) };
  return scaled.trace;
}

export default async function runTuneTask(task: TuneTask): Promise<TuneTaskResult> {
  const { sim } = workerData as TuneWorkerData;
  try {
    // The learned length model's TensorFlow.js, once per thread (its line was logged by the main thread).
    if (sim.lengthModel === 'learned') await loadTf(() => {});
    const curves = parseCurveFile(task.curves, `candidate ${task.candidate}`);
    const { summary } = simulate(traceAt(task.replicate, task.rateScale), { ...sim, policy: task.policy, curves });
    return { candidate: task.candidate, load: task.load, replicate: task.replicate, summary };
  } catch (e) {
    // One candidate that stalls the simulator must not sink the sweep: it is reported and
    // left off the frontier.
    return { candidate: task.candidate, load: task.load, replicate: task.replicate, error: e instanceof Error ? e.message : String(e) };
  }
}
