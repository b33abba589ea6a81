/**
 * Event-loop delay while prompts are tokenized: inline on the main thread versus through
 * TokenizePool's piscina workers, side by side in one run, with the Llama 2 tokenizer (a
 * synthetic stories15m-shaped model directory, cached in models/bench-stories15m).
 *
 * 1. Crossover: one prompt at a time on an idle server, per prompt size: inline encode time
 *    (a stall every other stream waits out) against what the pool adds (its round trip's extra
 *    latency for this request, plus the main-thread time a pooled prompt still costs). The size
 *    where they meet sets TokenizePool's DEFAULT_INLINE_BELOW_CHARS.
 * 2. Load: N concurrent clients, each sending a K-character prompt as soon as its previous one
 *    is tokenized; each prompt arrives in its own macrotask, as a request body would. Reports
 *    monitorEventLoopDelay p50/p99/max (1 ms timer, so ~1 ms is an idle loop), main-thread
 *    utilisation and prompts/s, both ways.
 * 3. Transport: main-thread cost of receiving a worker's token ids as a structured-clone
 *    number[], a transferred Int32Array (+ Array.from or a copy loop) or msgpackr bytes (+ unpack).
 * 4. Detokenization: a whole sequence decoded inline, against encoding the same text.
 *
 *   node --import tsx bench/eventloop.ts [--threads N] [--seconds S] [--sizes 1024,16384,65536] [--clients 8,32] [--json FILE]
 */
import { Command } from 'commander';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { findLlama2Tokenizer, packageRoot, synthesize } from '../src/models/importers.js';
import { loadModelDir } from '../src/models/modeldir.js';
import type { Tokenizer } from '../src/models/tokenizer/types.js';
import { DEFAULT_INLINE_BELOW_CHARS, defaultTokenizeThreads, TokenizePool } from '../src/server/tokenize-pool.js';

const o = new Command()
  .option('--threads <n>', 'pool worker threads (default: the pool default for this machine)')
  .option('--seconds <s>', 'seconds per load cell and mode', '2')
  .option('--sizes <list>', 'prompt sizes (characters) under load', '1024,16384,65536')
  .option('--clients <list>', 'concurrent clients under load', '8,32')
  .option('--sweep <list>', 'prompt sizes (characters) for the crossover', '128,256,384,512,768,1024,2048,4096,16384,65536')
  .option('--json <file>', 'write the results as JSON')
  .parse()
  .opts<{ threads?: string; seconds: string; sizes: string; clients: string; sweep: string; json?: string }>();
const threads = o.threads ? Number(o.threads) : defaultTokenizeThreads();
const seconds = Number(o.seconds);
const list = (s: string): number[] => s.split(',').filter(Boolean).map(Number);
const loadSizes = list(o.sizes);
const clientCounts = list(o.clients);
const sweepSizes = list(o.sweep);

// --- model and text ---------------------------------------------------------------------------

function modelDir(): string {
  if (findLlama2Tokenizer() === undefined) {
    throw new Error('the Llama 2 tokenizer was not found (../shared/models/llama2-tokenizer or MARGINAL_LLAMA2_TOKENIZER)');
  }
  const dir = join(packageRoot(), 'models', 'bench-stories15m');
  const config = join(dir, 'marginal.json');
  // Shared with bench/engine.ts; regenerate if it was written without the Llama 2 tokenizer.
  if (!existsSync(config) || !readFileSync(config, 'utf8').includes('Llama 2 tokenizer')) synthesize('stories15m', dir);
  return dir;
}

const WORDS = (
  'the of and to a in is was that he for it with as his on be at by had not are but from or have an they which one you ' +
  'were her all she there would their we him been has when who will more no if out so said what up its about into than ' +
  'them can only other new some could time these two may then do first any my now such like our over man me even most ' +
  'made after also did many before must through back years where much your way well down should because each just those ' +
  'people how too little state good very make world still own see men work long get here between both life being under ' +
  'never day same another know while last might us great old year off come since against go came right used take three ' +
  'himself few house use during without again place American around however home small found thought went say part once ' +
  'general high upon school every large system government number although development company interest important question'
).split(' ');

/** Deterministic English-like prose: Zipf-ish word choice, sentences, commas, paragraphs. */
function corpus(chars: number): string {
  let seed = 12345;
  const rand = (): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed / 2 ** 32;
  };
  const parts: string[] = [];
  let length = 0;
  while (length < chars) {
    const n = 6 + Math.floor(rand() * 14);
    const sentence: string[] = [];
    for (let i = 0; i < n; i++) {
      let w = WORDS[Math.floor(WORDS.length * rand() ** 2.5)]!;
      if (i === 0) w = w[0]!.toUpperCase() + w.slice(1);
      if (rand() < 0.03) w = String(Math.floor(rand() * 2000));
      sentence.push(w + (i < n - 1 && rand() < 0.08 ? ',' : ''));
    }
    const s = sentence.join(' ') + (rand() < 0.1 ? '?' : '.') + (rand() < 0.15 ? '\n\n' : ' ');
    parts.push(s);
    length += s.length;
  }
  return parts.join('');
}

const TEXT = corpus(1 << 20);

/** Distinct prompts of exactly `chars` characters, cut from different places in the corpus. */
function prompts(chars: number, count: number): string[] {
  return Array.from({ length: count }, (_, i) => {
    const start = (i * 7919 * 13) % (TEXT.length - chars);
    return TEXT.slice(start, start + chars);
  });
}

// --- measurement helpers ----------------------------------------------------------------------

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};
// A full GC between measured blocks, without asking for --expose-gc on the command line.
v8.setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const macrotask = (): Promise<void> => new Promise((r) => setImmediate(r));
const fmt = (x: number, digits = 2): string => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(digits));
const ratio = (a: number, b: number): string => `${fmt(a / b)}×`;

interface SweepRow {
  chars: number;
  tokens: number;
  inlineMs: number;
  poolMs: number;
  poolMainMs: number;
}

/**
 * Idle latency per size, one prompt at a time, medians over enough repetitions for ~0.3 s each
 * way. The modes run as separate blocks with a full GC before each: interleaved, the garbage of
 * a large inline encode is collected on the main thread while a pooled prompt is being timed.
 */
async function sweep(tok: Tokenizer, pool: TokenizePool, chars: number): Promise<SweepRow> {
  const ps = prompts(chars, 16);
  const t0 = performance.now();
  const tokens = tok.encode(ps[0]!, { bos: true }).length;
  const reps = Math.max(30, Math.min(3000, Math.ceil(300 / Math.max(performance.now() - t0, 0.01))));
  for (let i = 0; i < 50; i++) await pool.encode(ps[i % ps.length]!, true);

  gc();
  const inline: number[] = [];
  for (let i = 0; i < reps; i++) {
    await macrotask();
    const s = performance.now();
    tok.encode(ps[i % ps.length]!, { bos: true });
    inline.push(performance.now() - s);
  }
  gc();
  const round: number[] = [];
  const elu0 = performance.eventLoopUtilization();
  for (let i = 0; i < reps; i++) {
    await macrotask();
    const s = performance.now();
    await pool.encode(ps[i % ps.length]!, true);
    round.push(performance.now() - s);
  }
  const elu = performance.eventLoopUtilization(elu0);
  return { chars, tokens, inlineMs: median(inline), poolMs: median(round), poolMainMs: elu.active / reps };
}

/**
 * What a pooled prompt costs beyond its encode: the latency its request gains (round trip minus
 * inline time) plus the main-thread time it still takes. Inline, the encode itself stalls the
 * loop for everyone. Inline is cheaper while the encode is shorter than that overhead.
 */
// Clamped: at large sizes the round trip's extra latency drowns in noise and can read negative.
const pooledOverhead = (r: SweepRow): number => Math.max(0, r.poolMs - r.inlineMs) + r.poolMainMs;

/** Size where inline encode time meets the pool's overhead, interpolated on log size. */
function crossover(rows: SweepRow[]): number | undefined {
  for (let i = 1; i < rows.length; i++) {
    const a = rows[i - 1]!;
    const b = rows[i]!;
    const da = Math.log(pooledOverhead(a) / a.inlineMs);
    const db = Math.log(pooledOverhead(b) / b.inlineMs);
    if (da > 0 && db <= 0) {
      const f = da / (da - db);
      return Math.exp(Math.log(a.chars) + f * (Math.log(b.chars) - Math.log(a.chars)));
    }
  }
  return undefined;
}

interface LoadResult {
  p50: number;
  p99: number;
  max: number;
  elu: number;
  perSecond: number;
}

/** N clients in a closed loop for `seconds`; each prompt is encoded in its own macrotask. */
async function load(encode: (text: string) => Promise<number[]>, ps: string[], clients: number): Promise<LoadResult> {
  for (let i = 0; i < clients; i++) await encode(ps[i % ps.length]!);
  gc();
  const h = monitorEventLoopDelay({ resolution: 1 });
  let done = 0;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  const elu0 = performance.eventLoopUtilization();
  h.enable();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let i = c; performance.now() < deadline; i += clients) {
        await macrotask();
        await encode(ps[i % ps.length]!);
        done++;
      }
    }),
  );
  const elapsed = performance.now() - start;
  const elu = performance.eventLoopUtilization(elu0);
  // The last round's stall only shows once the timer gets to run again.
  await new Promise((r) => setTimeout(r, 1));
  h.disable();
  return { p50: h.percentile(50) / 1e6, p99: h.percentile(99) / 1e6, max: h.max / 1e6, elu: elu.utilization, perSecond: (done / elapsed) * 1000 };
}

// --- transport --------------------------------------------------------------------------------

const TRANSPORTS = ['number[] (clone)', 'Int32Array (transfer) + Array.from', 'Int32Array (transfer) + copy loop', 'msgpackr + unpack'];

const SENDER = `
const { parentPort, workerData } = require('node:worker_threads');
const { Packr } = require(workerData.msgpackr);
const packr = new Packr();
parentPort.on('message', ({ kind, ids, count }) => {
  for (let i = 0; i < count; i++) {
    if (kind === 0) parentPort.postMessage(ids);
    else if (kind === 1 || kind === 2) { const a = Int32Array.from(ids); parentPort.postMessage(a, [a.buffer]); }
    else { const b = Uint8Array.from(packr.pack(ids)); parentPort.postMessage(b, [b.buffer]); }
  }
});`;

function copyLoop(a: Int32Array): number[] {
  const out = new Array<number>(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]!;
  return out;
}

/** Main-thread active µs per received result (deserialisation and conversion to number[]). */
async function transport(ids: number[], kind: number, count: number): Promise<number> {
  const { Unpackr } = await import('msgpackr');
  const unpackr = new Unpackr();
  const worker = new Worker(SENDER, { eval: true, workerData: { msgpackr: createRequire(import.meta.url).resolve('msgpackr') } });
  try {
    const run = (n: number): Promise<number> =>
      new Promise((resolve, reject) => {
        let left = n;
        let check = 0;
        const elu0 = performance.eventLoopUtilization();
        const onMessage = (m: unknown): void => {
          const out =
            kind === 0 ? (m as number[]) : kind === 1 ? Array.from(m as Int32Array) : kind === 2 ? copyLoop(m as Int32Array) : (unpackr.unpack(m as Uint8Array) as number[]);
          check += out[out.length - 1]!;
          if (--left === 0) {
            worker.off('message', onMessage);
            const active = performance.eventLoopUtilization(elu0).active;
            if (check !== n * ids[ids.length - 1]!) reject(new Error('transport corrupted the ids'));
            else resolve((active / n) * 1000);
          }
        };
        worker.on('message', onMessage);
        worker.postMessage({ kind, ids, count: n });
      });
    await run(Math.ceil(count / 4));
    return await run(count);
  } finally {
    await worker.terminate();
  }
}

// --- run --------------------------------------------------------------------------------------

const dir = modelDir();
const model = await loadModelDir(dir);
const tok = model.tokenizer;
tok.encode('warm up', { bos: true });
const pool = await TokenizePool.create(dir, { threads, inlineBelowChars: 0, tokenizer: tok });
const cpu = cpus()[0]?.model ?? 'unknown CPU';
console.log(`# Event-loop delay: tokenization inline vs TokenizePool`);
console.log(`\n${model.name} (${model.description}); ${availableParallelism()} cores (${cpu}); pool threads: ${threads}; Node ${process.version}\n`);

console.log(`## Crossover: one prompt at a time, idle server (medians)\n`);
console.log('| prompt chars | tokens | inline ms | pool round trip ms | added latency ms | pool main-thread ms | main-thread saved | inline / (added + main) |');
console.log('|---:|---:|---:|---:|---:|---:|---:|---:|');
const sweepRows: SweepRow[] = [];
for (const chars of sweepSizes) {
  const r = await sweep(tok, pool, chars);
  sweepRows.push(r);
  console.log(
    `| ${chars} | ${r.tokens} | ${fmt(r.inlineMs, 3)} | ${fmt(r.poolMs, 3)} | ${fmt(r.poolMs - r.inlineMs, 3)} | ${fmt(r.poolMainMs, 3)} | ` +
      `${ratio(r.inlineMs, r.poolMainMs)} | ${ratio(r.inlineMs, pooledOverhead(r))} |`,
  );
}
const cross = crossover(sweepRows);
console.log(
  `\nCrossover (inline encode = added latency + pool main-thread time): ${cross === undefined ? 'not within the sizes swept' : `≈ ${Math.round(cross)} chars`}; ` +
    `DEFAULT_INLINE_BELOW_CHARS = ${DEFAULT_INLINE_BELOW_CHARS}.\n`,
);

console.log(`## Under load: N clients in a closed loop, ${seconds} s per cell and mode\n`);
console.log('Event-loop delay from monitorEventLoopDelay with a 1 ms timer (an idle loop reads ~1 ms); main = main-thread utilisation.\n');
console.log('| chars | N | inline p50 / p99 / max ms | pool p50 / p99 / max ms | p99 inline / pool | max inline / pool | main inline / pool | inline prompts/s | pool prompts/s | pool / inline |');
console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
const loadRows: { chars: number; clients: number; inline: LoadResult; pool: LoadResult }[] = [];
for (const chars of loadSizes) {
  const ps = prompts(chars, 64);
  for (const clients of clientCounts) {
    const inline = await load(async (t) => tok.encode(t, { bos: true }), ps, clients);
    const pooled = await load((t) => pool.encode(t, true), ps, clients);
    loadRows.push({ chars, clients, inline, pool: pooled });
    const d = (r: LoadResult): string => `${fmt(r.p50)} / ${fmt(r.p99)} / ${fmt(r.max)}`;
    console.log(
      `| ${chars} | ${clients} | ${d(inline)} | ${d(pooled)} | ${ratio(inline.p99, pooled.p99)} | ${ratio(inline.max, pooled.max)} | ` +
        `${(inline.elu * 100).toFixed(0)}% / ${(pooled.elu * 100).toFixed(0)}% | ${fmt(inline.perSecond, 1)} | ${fmt(pooled.perSecond, 1)} | ${ratio(pooled.perSecond, inline.perSecond)} |`,
    );
  }
}
await pool.close();

console.log(`\n## Transport: main-thread µs to receive one result from a worker\n`);
console.log(`| prompt chars | tokens | ${TRANSPORTS.join(' | ')} |`);
console.log(`|---:|---:|${TRANSPORTS.map(() => '---:').join('|')}|`);
const transportRows: { chars: number; tokens: number; us: number[] }[] = [];
for (const chars of [4096, 65536]) {
  const ids = tok.encode(prompts(chars, 1)[0]!, { bos: true });
  const us: number[] = [];
  for (let kind = 0; kind < TRANSPORTS.length; kind++) us.push(await transport(ids, kind, chars > 10000 ? 400 : 2000));
  transportRows.push({ chars, tokens: ids.length, us });
  console.log(`| ${chars} | ${ids.length} | ${us.map((u) => fmt(u, 1)).join(' | ')} |`);
}

console.log(`\n## Detokenization: inline decode of a whole sequence (why it stays inline)\n`);
console.log('| tokens | decode ms | ns / token | encode ms (same text) | encode / decode |');
console.log('|---:|---:|---:|---:|---:|');
const decodeRows: { tokens: number; decodeMs: number; encodeMs: number }[] = [];
for (const chars of [4096, 65536]) {
  const text = prompts(chars, 1)[0]!;
  const ids = tok.encode(text, { bos: true });
  const time = (f: () => void): number => {
    for (let i = 0; i < 5; i++) f();
    const reps = 50;
    const s = performance.now();
    for (let i = 0; i < reps; i++) f();
    return (performance.now() - s) / reps;
  };
  const decodeMs = time(() => tok.decode(ids));
  const encodeMs = time(() => tok.encode(text, { bos: true }));
  decodeRows.push({ tokens: ids.length, decodeMs, encodeMs });
  console.log(`| ${ids.length} | ${fmt(decodeMs, 3)} | ${fmt((decodeMs * 1e6) / ids.length, 1)} | ${fmt(encodeMs, 2)} | ${ratio(encodeMs, decodeMs)} |`);
}

if (o.json) {
  writeFileSync(
    o.json,
    JSON.stringify({ model: model.description, cores: availableParallelism(), cpu, threads, node: process.version, seconds, sweep: sweepRows, crossoverChars: cross, load: loadRows, transport: transportRows, decode: decodeRows }, null, 2) + '\n',
  );
}
