/**
 * The native addon against its TypeScript twin, side by side in one run: per-step time to
 * sample a batch (default 64 rows × a 32000 vocab) greedy, top-k 50 and top-p 0.9, on peaked
 * logits (a Gaussian floor with a few dominant tokens, as a trained model's look) and on flat
 * ones (the worst case for top-p: the nucleus is most of the vocab); then the engine's KV block
 * copies. Every native result is checked against the TypeScript one before it is timed.
 *
 *   node --import tsx bench/native.ts [--batch 64] [--vocab 32000] [--seconds 1] [--threads N] [--json FILE]
 */
import { Command } from 'commander';
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { performance } from 'node:perf_hooks';
import { Rng } from '../src/sampling/rng.js';
import type { SamplingParams } from '../src/sampling/params.js';
import { native, nativeStatus } from '../src/native/index.js';
import { kvCopyNative, kvCopyTs, type KvCopy, type KvShape } from '../src/native/kv-copy.js';
import { BatchSampler } from '../src/native/sampling.js';

const program = new Command()
  .option('--batch <n>', 'rows per step', '64')
  .option('--vocab <n>', 'vocabulary size', '32000')
  .option('--seconds <s>', 'minimum measuring time per cell', '1')
  .option('--threads <n>', 'threads for the multi-threaded native column (default: hardware threads)')
  .option('--json <file>', 'write the results as JSON')
  .parse();
const o = program.opts<{ batch: string; vocab: string; seconds: string; threads?: string; json?: string }>();
const B = Number(o.batch);
const V = Number(o.vocab);
const seconds = Number(o.seconds);

if (!native) {
  console.error(`bench/native.ts needs the addon: ${nativeStatus()}`);
  process.exit(1);
}
const threads = o.threads ? Number(o.threads) : native.hardwareThreads;

/**
 * Rng state access for the native path: Rng's own saveState/loadState when it has them, else a
 * subclass reading its private words (the bench must not depend on which).
 */
class StateRng extends Rng {
  saveState(into: Uint32Array, at: number): void {
    const w = this as unknown as { s0: number; s1: number; s2: number; s3: number };
    into.set([w.s0 >>> 0, w.s1 >>> 0, w.s2 >>> 0, w.s3 >>> 0], at);
  }

  loadState(from: Uint32Array, at: number): void {
    const w = this as unknown as { s0: number; s1: number; s2: number; s3: number };
    w.s0 = from[at]! | 0;
    w.s1 = from[at + 1]! | 0;
    w.s2 = from[at + 2]! | 0;
    w.s3 = from[at + 3]! | 0;
  }
}
const rngHasState = typeof (Rng.prototype as { saveState?: unknown }).saveState === 'function';
const makeRng = (seed: number): Rng => (rngHasState ? new Rng(seed) : new StateRng(seed));

function gaussian(g: Rng): number {
  const u = g.next() || 2 ** -24;
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * g.next());
}

function makeLogits(kind: 'peaked' | 'flat', seed: number): Float32Array {
  const g = new Rng(seed);
  const logits = new Float32Array(B * V);
  for (let r = 0; r < B; r++) {
    const row = logits.subarray(r * V, (r + 1) * V);
    if (kind === 'flat') {
      for (let i = 0; i < V; i++) row[i] = g.next() * 0.1;
    } else {
      for (let i = 0; i < V; i++) row[i] = 2 * gaussian(g);
      for (const boost of [14, 11, 10, 8]) row[Math.floor(g.next() * V)] = boost + gaussian(g);
    }
  }
  return logits;
}

const modes: Array<[string, SamplingParams]> = [
  ['greedy', { temperature: 0, topP: 1, topK: 0, seed: undefined, maxTokens: 1, stop: [] }],
  ['top-k 50', { temperature: 1, topP: 1, topK: 50, seed: undefined, maxTokens: 1, stop: [] }],
  ['top-p 0.9', { temperature: 1, topP: 0.9, topK: 0, seed: undefined, maxTokens: 1, stop: [] }],
  ['full softmax', { temperature: 1, topP: 1, topK: 0, seed: undefined, maxTokens: 1, stop: [] }],
];

/** Median ms per call of `f`, over at least `seconds` and 5 calls, after one warm-up call. */
function time(f: () => void): number {
  f();
  const samples: number[] = [];
  const end = performance.now() + seconds * 1000;
  while (samples.length < 5 || performance.now() < end) {
    const t0 = performance.now();
    f();
    samples.push(performance.now() - t0);
  }
  samples.sort((a, b) => a - b);
  return samples[samples.length >> 1]!;
}

interface SampleRow {
  logits: string;
  mode: string;
  tsMs: number;
  nativeMs: number;
  nativeThreadsMs: number;
}

const rows = Int32Array.from({ length: B }, (_, i) => i);
const out = new Int32Array(B);
const sampleResults: SampleRow[] = [];
for (const kind of ['peaked', 'flat'] as const) {
  const logits = makeLogits(kind, kind === 'peaked' ? 1 : 2);
  for (const [mode, p] of modes) {
    const params = Array.from({ length: B }, () => p);
    const ts = new BatchSampler(V, { native: false });
    const one = new BatchSampler(V, { native: true, threads: 1 });
    const many = new BatchSampler(V, { native: true, threads });
    // Same seeds and same number of steps on each side, so the streams must stay identical.
    const rngsFor = (): Rng[] => Array.from({ length: B }, (_, i) => makeRng(1000 + i));
    const check = (s: BatchSampler): number[] => {
      const rngs = rngsFor();
      const got: number[] = [];
      for (let step = 0; step < 3; step++) {
        s.sample(logits, rows, params, rngs, out);
        got.push(...out);
      }
      return got.concat(rngs.map((r) => r.nextUint32()));
    };
    const want = check(ts);
    for (const [name, s] of [['native', one], [`native ×${threads}`, many]] as const) {
      if (check(s).join() !== want.join()) throw new Error(`${name} disagrees with TypeScript on ${kind} ${mode}`);
    }
    const rngs = [rngsFor(), rngsFor(), rngsFor()] as const;
    const row: SampleRow = {
      logits: kind,
      mode,
      tsMs: time(() => ts.sample(logits, rows, params, rngs[0], out)),
      nativeMs: time(() => one.sample(logits, rows, params, rngs[1], out)),
      nativeThreadsMs: time(() => many.sample(logits, rows, params, rngs[2], out)),
    };
    sampleResults.push(row);
    console.error(`${kind} ${mode}: TS ${row.tsMs.toFixed(2)} ms, native ${row.nativeMs.toFixed(2)} ms, native ×${threads} ${row.nativeThreadsMs.toFixed(2)} ms`);
  }
}

// KV copies: the engine's four operations on two model shapes.
interface KvRow {
  model: string;
  op: string;
  tsUs: number;
  nativeUs: number;
}
const kvShapes: Array<[string, number, KvShape, number]> = [
  // name, layers, shape (capacity = context), block size
  ['stories110M-like (12 layers × 12 heads × 64)', 12, { kvHeads: 12, capacity: 1024, headDim: 64 }, 16],
  ['Llama-3-8B-like (32 layers × 8 heads × 128)', 32, { kvHeads: 8, capacity: 2048, headDim: 128 }, 16],
];
const kvResults: KvRow[] = [];
for (const [model, layers, shape, bs] of kvShapes) {
  const slots = 2;
  const floats = slots * shape.kvHeads * shape.capacity * shape.headDim;
  const keys = Array.from({ length: layers }, () => new Float32Array(floats).fill(1));
  const values = Array.from({ length: layers }, () => new Float32Array(floats).fill(2));
  const block = new Float32Array(layers * 2 * shape.kvHeads * bs * shape.headDim);
  const blocks = Array.from({ length: 32 }, () => block.slice());
  const len = 512;
  const swapped = new Float32Array(layers * 2 * shape.kvHeads * len * shape.headDim);
  const ops: Array<[string, (c: KvCopy) => void]> = [
    ['storeBlock (1 block)', (c) => c('gather', keys, values, shape, 1, 5 * bs, bs, [block])],
    ['loadBlocks (32 blocks)', (c) => c('scatter', keys, values, shape, 1, 0, bs, blocks)],
    [`swapOut (${len} tokens)`, (c) => c('gather', keys, values, shape, 1, 0, len, [swapped])],
    [`swapIn (${len} tokens)`, (c) => c('scatter', keys, values, shape, 1, 0, len, [swapped])],
  ];
  for (const [op, f] of ops) {
    const row: KvRow = { model, op, tsUs: time(() => f(kvCopyTs)) * 1000, nativeUs: time(() => f(kvCopyNative!)) * 1000 };
    kvResults.push(row);
    console.error(`${model} ${op}: TS ${row.tsUs.toFixed(1)} µs, native ${row.nativeUs.toFixed(1)} µs`);
  }
}

const cpu = cpus()[0]?.model ?? 'unknown CPU';
console.log(`\n### Sampling: batch ${B} × vocab ${V}, ms per step (median), ${cpu}, ${cpus().length} cores\n`);
console.log(`| logits | mode | TypeScript | native | native ×${threads} threads | TS / native | TS / native ×${threads} |`);
console.log('|---|---|---:|---:|---:|---:|---:|');
for (const r of sampleResults) {
  console.log(`| ${r.logits} | ${r.mode} | ${r.tsMs.toFixed(2)} | ${r.nativeMs.toFixed(2)} | ${r.nativeThreadsMs.toFixed(2)} | ${(r.tsMs / r.nativeMs).toFixed(2)}× | ${(r.tsMs / r.nativeThreadsMs).toFixed(2)}× |`);
}
console.log('\n### KV block copies, µs per operation (median)\n');
console.log('| model shape | operation | TypeScript | native | TS / native |');
console.log('|---|---|---:|---:|---:|');
for (const r of kvResults) {
  console.log(`| ${r.model} | ${r.op} | ${r.tsUs.toFixed(1)} | ${r.nativeUs.toFixed(1)} | ${(r.tsUs / r.nativeUs).toFixed(2)}× |`);
}
if (o.json) writeFileSync(o.json, JSON.stringify({ batch: B, vocab: V, threads, cpu, sampling: sampleResults, kv: kvResults }, null, 2));
