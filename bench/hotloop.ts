/**
 * The engine's own per-step cost outside ONNX Runtime — building feeds, checking the plan,
 * writing new keys and values into their blocks, sampling — at batch 64 on the smallest model
 * (stories260K), where a step is shortest and that cost weighs most. Each step's time inside
 * `session.run` is measured by wrapping the session, so what remains is the engine's
 * JavaScript (and the binding's marshalling of inputs and outputs).
 *
 * With --baseline DIR (a checkout of an older marginal with its dependencies installed, e.g.
 * `git worktree add /tmp/base 45637d6 && (cd /tmp/base && npm ci)`), that tree's engine runs the
 * same decode steps in alternating rounds, so the two are compared side by side.
 *
 * --formats fp32,q8,q4 runs this tree's engine on stories260K imported with each weight format
 * (the engine's JavaScript is the same whatever the weights; this checks it stays small beside
 * the shorter quantized steps).
 *
 *   npm run bench:hotloop -- [--batch 64] [--prompt 16] [--steps 200] [--rounds 5] [--formats fp32] [--baseline DIR]
 */
import { Command } from 'commander';
import { existsSync, mkdirSync } from 'node:fs';
import { cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import type * as ort from 'onnxruntime-node';
import { DirectDriver, type DirectItem } from '../src/engine/direct.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { Rng } from '../src/sampling/rng.js';
import { validateSamplingParams } from '../src/sampling/params.js';
import { importLlama2c, packageRoot } from '../src/models/importers.js';
import { loadModelDir } from '../src/models/modeldir.js';

const o = new Command()
  .option('--batch <n>', 'sequences decoding together', '64')
  .option('--prompt <n>', 'prompt tokens per sequence', '16')
  .option('--steps <n>', 'decode steps timed per round', '200')
  .option('--rounds <n>', 'alternating rounds', '5')
  .option('--threads <n>', 'ONNX Runtime intra-op threads (default: all cores)')
  .option('--baseline <dir>', 'an older marginal checkout to compare against')
  .option('--formats <list>', "this tree's weight formats: fp32, q8, q4", 'fp32')
  .option('--spinning-too', "also run this tree's engine with ONNX Runtime's intra-op spinning on (the baseline's default)")
  .parse()
  .opts<{ batch: string; prompt: string; steps: string; rounds: string; threads?: string; baseline?: string; spinningToo?: boolean; formats: string }>();
const formats = o.formats.split(',').map((f) => f.trim());
for (const f of formats) if (f !== 'fp32' && f !== 'q8' && f !== 'q4') throw new Error(`--formats: unknown weight format ${f} (fp32, q8, q4)`);
const batch = Number(o.batch);
const promptLen = Number(o.prompt);
const steps = Number(o.steps);
const rounds = Number(o.rounds);
const threads = o.threads ? Number(o.threads) : cpus().length;
const shared = join(packageRoot(), '..', 'shared', 'models', 'stories260K');
if (!existsSync(shared)) throw new Error(`stories260K needs ../shared (looked in ${shared})`);

interface Sample {
  engine: string;
  stepMs: number;
  runMs: number;
  outsideUs: number;
}

/** Wraps the (baseline) engine's ONNX Runtime session so the time inside run() is counted. */
function timeRuns(engine: object): { ms: number } {
  const session = (engine as { session: ort.InferenceSession }).session;
  const inside = { ms: 0 };
  const run = session.run.bind(session) as (...a: unknown[]) => Promise<unknown>;
  (session as unknown as { run: (...a: unknown[]) => Promise<unknown> }).run = async (...a: unknown[]) => {
    const t0 = performance.now();
    try {
      return await run(...a);
    } finally {
      inside.ms += performance.now() - t0;
    }
  };
  return inside;
}

function prompt(i: number): number[] {
  return [1, ...Array.from({ length: promptLen - 1 }, (_, k) => 259 + ((i * 131 + k * 17) % 253))];
}

async function current(spinning = false, format = 'fp32'): Promise<Sample> {
  const dir = join(packageRoot(), 'models', format === 'fp32' ? 'bench-stories260K' : `bench-stories260K-${format}`);
  const write = () => importLlama2c(join(shared, 'stories260K.bin'), join(shared, 'tok512.bin'), dir, format === 'fp32' ? {} : { quantize: { weights: format as 'q8' | 'q4' } });
  if (!existsSync(join(dir, 'marginal.json'))) write();
  const model = await loadModelDir(dir).catch(() => {
    write();
    return loadModelDir(dir);
  });
  const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: batch, intraOpThreads: threads, spinning });
  // The engine's own count of time inside ONNX Runtime's run (the I/O-binding runner's or onnxruntime-node's).
  const inside = { ms: 0 };
  const d = new DirectDriver(engine);
  const sampling = validateSamplingParams({ temperature: 0, max_tokens: 512 });
  const last = new Int32Array(batch);
  const pre: DirectItem[] = [];
  for (let i = 0; i < batch; i++) {
    d.open(i, sampling, new Rng(i));
    pre.push([i, prompt(i), true]);
  }
  last.set((await d.step(pre)).tokens);
  // The engine's plan, reused across steps as the scheduler's is: only the fed token and the offset change.
  const plan = {
    items: Array.from({ length: batch }, (_, i) => {
      d.reserve(i, promptLen + steps + 8);
      const tokens = new Int32Array(promptLen + steps + 8);
      tokens.set(d.tokens(i));
      return { seq: i, tokens, offset: promptLen, count: 1, sample: true, blocks: d.blocks(i) };
    }),
    opens: [],
    closes: [],
    kvOps: [],
  };
  const run = async (): Promise<void> => {
    for (let i = 0; i < batch; i++) {
      const it = plan.items[i] as (typeof plan.items)[number];
      it.tokens[it.offset] = last[i] as number;
    }
    const r = await engine.execute(plan);
    inside.ms += r.timing.runMs;
    for (let i = 0; i < batch; i++) (plan.items[i] as (typeof plan.items)[number]).offset++;
    last.set(r.tokens);
  };
  const s = await timed(run, inside);
  await engine.dispose();
  return { engine: `this tree${format === 'fp32' ? '' : `, ${format}`}${spinning ? ', spinning threads' : ''}`, ...s };
}

async function baseline(root: string): Promise<Sample> {
  const imp = async <T>(rel: string) => (await import(pathToFileURL(join(root, rel)).href)) as T;
  const { OnnxEngine: OldEngine } = await imp<{ OnnxEngine: { create(m: unknown, o: object): Promise<OldEngineApi> } }>('src/engine/onnx-engine.ts');
  const samplingMod = await imp<{ Rng: new (s: number) => unknown; validateSamplingParams: (x: object) => unknown }>('src/engine/sampling.ts');
  const { importLlama2c: oldImport } = await imp<{ importLlama2c: (a: string, b: string, c: string) => void }>('src/models/importers.ts');
  const { loadModelDir: oldLoad } = await imp<{ loadModelDir: (d: string) => Promise<unknown> }>('src/models/modeldir.ts');
  const dir = join(root, 'models', 'bench-stories260K-hotloop');
  if (!existsSync(join(dir, 'marginal.json'))) {
    mkdirSync(dir, { recursive: true });
    oldImport(join(shared, 'stories260K.bin'), join(shared, 'tok512.bin'), dir);
  }
  const engine = await OldEngine.create(await oldLoad(dir), { providers: ['cpu'], maxSequences: batch, intraOpThreads: threads });
  const inside = timeRuns(engine);
  const sampling = samplingMod.validateSamplingParams({ temperature: 0, max_tokens: 512 });
  const last = new Int32Array(batch);
  for (let i = 0; i < batch; i++) {
    engine.open(i, sampling, new samplingMod.Rng(i));
    const r = await engine.execute({ items: [{ seq: i, tokens: prompt(i), offset: 0, count: promptLen, sample: true }] });
    last[i] = r.tokens[0] as number;
  }
  const items = Array.from({ length: batch }, (_, i) => ({ seq: i, tokens: [0], offset: 0, count: 1, sample: true }));
  const run = async (): Promise<void> => {
    for (let i = 0; i < batch; i++) (items[i] as { tokens: number[] }).tokens[0] = last[i] as number;
    const r = await engine.execute({ items });
    last.set(r.tokens);
  };
  const s = await timed(run, inside);
  await engine.dispose();
  return { engine: `baseline ${root}`, ...s };
}

interface OldEngineApi {
  open(seq: number, sampling: unknown, rng: unknown): void;
  execute(plan: { items: { seq: number; tokens: number[]; offset: number; count: number; sample: boolean }[] }): Promise<{ tokens: Int32Array }>;
  dispose(): Promise<void>;
}

async function timed(step: () => Promise<void>, inside: { ms: number }): Promise<Omit<Sample, 'engine'>> {
  for (let k = 0; k < 5; k++) await step();
  inside.ms = 0;
  const t0 = performance.now();
  for (let k = 0; k < steps; k++) await step();
  const total = performance.now() - t0;
  return { stepMs: total / steps, runMs: inside.ms / steps, outsideUs: ((total - inside.ms) / steps) * 1000 };
}

process.stderr.write(`hot loop bench: stories260K, batch ${batch}, prompt ${promptLen}, ${steps} decode steps × ${rounds} rounds, ${threads} ORT threads\n`);
const samples: Sample[] = [];
for (let round = 0; round < rounds; round++) {
  const order: (() => Promise<Sample>)[] = formats.map((f) => () => current(false, f));
  if (o.spinningToo) order.push(() => current(true));
  if (o.baseline) order.push(() => baseline(resolve(o.baseline as string)));
  if (round % 2 === 1) order.reverse();
  for (const f of order) {
    const s = await f();
    samples.push(s);
    process.stderr.write(`  round ${round} ${s.engine}: step ${s.stepMs.toFixed(2)} ms, outside session.run ${s.outsideUs.toFixed(0)} µs\n`);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
console.log(`\nbatch ${batch} decode on stories260K, medians of ${rounds} alternating rounds of ${steps} steps\n`);
console.log('| engine | step ms | inside session.run ms | outside session.run µs | outside share |');
console.log('|---|---:|---:|---:|---:|');
for (const name of [...new Set(samples.map((s) => s.engine))]) {
  const xs = samples.filter((s) => s.engine === name);
  const step = median(xs.map((s) => s.stepMs));
  const out = median(xs.map((s) => s.outsideUs));
  console.log(`| ${name} | ${step.toFixed(2)} | ${median(xs.map((s) => s.runMs)).toFixed(2)} | ${out.toFixed(0)} | ${((out / 1000 / step) * 100).toFixed(1)}% |`);
}
