/**
 * Engine throughput: aggregate decode tokens/s at several batch sizes, for the `fast` graph
 * (the paged pool read in place through block tables), the `hf` graph (packed past/present,
 * what an Optimum export costs) and a naive loop (one sequence at a time, the textbook Hugging
 * Face generate loop), measured side by side in one run, with the split of a fast step into
 * ONNX Runtime, sampling and glue and the KV bytes the engine copies per step. Engines are
 * built as `marginal serve` builds them (the model's full context, the default pool); each
 * sequence holds a `--prompt`-token prompt before the timed decode steps, so the context held
 * is prompt … prompt + steps.
 *
 * `fast` runs on the engine's default session path (ONNX Runtime's C API with I/O binding
 * through the native addon, where it loads); `fast-js` is the same graph on onnxruntime-node's
 * JavaScript session, the fallback path. `--providers cuda` runs them on the GPU.
 *
 *   npm run bench:engine -- [--models stories260K,stories15m] [--batches 1,4,16,32,64] [--prompt 128] [--steps 32]
 *       [--modes fast,fast-js,fast-full,hf,naive] [--providers cpu|cuda] [--json FILE]
 */
import { Command } from 'commander';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { Rng } from '../src/sampling/rng.js';
import { Sampler } from '../src/sampling/sampler.js';
import { validateSamplingParams, type SamplingParams } from '../src/sampling/params.js';
import type { ExecutionProvider } from '../src/engine/types.js';
import { DirectDriver, type DirectItem } from '../src/engine/direct.js';
import { IO } from '../src/models/llama/graph.js';
import { ensureSynthetic, importLlama2c, packageRoot } from '../src/models/importers.js';
import { GRAPH_VERSION, loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { parameterCount } from '../src/models/llama/shape.js';

const program = new Command()
  .option('--models <list>', 'stories260K and/or synthetic shapes', 'stories260K,stories15m')
  .option('--batches <list>', 'batch sizes', '1,4,16,32,64')
  .option('--steps <n>', 'decode steps measured per batch', '32')
  .option('--prompt <n>', 'prompt tokens per sequence: the context held when decoding starts', '128')
  .option('--threads <n>', 'ONNX Runtime intra-op threads (default: all cores)')
  .option('--naive-max-batch <n>', 'largest batch the naive loop runs (it is slow)', '64')
  .option('--temperature <t>', 'sampling temperature (0 = greedy)', '0')
  .option('--top-p <p>', 'nucleus mass when sampling', '1')
  .option('--modes <list>', 'fast (default session path), fast-js (onnxruntime-node session), fast-full, hf, naive', 'fast,fast-full,hf,naive')
  .option('--providers <list>', 'execution providers in order (cpu, cuda)', 'cpu')
  .option('--json <file>', 'write the results as JSON')
  .parse();
const o = program.opts<{ models: string; batches: string; steps: string; prompt: string; threads?: string; naiveMaxBatch: string; temperature: string; topP: string; modes: string; providers: string; json?: string }>();
type Mode = 'fast' | 'fast-js' | 'fast-full' | 'hf' | 'naive';
const modes = o.modes.split(',').map((m) => m.trim()) as Mode[];
for (const m of modes) if (!['fast', 'fast-js', 'fast-full', 'hf', 'naive'].includes(m)) throw new Error(`unknown mode ${m}`);
const providers = o.providers.split(',').map((p) => p.trim()) as ExecutionProvider[];
const batches = o.batches.split(',').map(Number);
const steps = Number(o.steps);
const promptLen = Number(o.prompt);
const threads = o.threads ? Number(o.threads) : cpus().length;
const sampling: SamplingParams = validateSamplingParams({ temperature: Number(o.temperature), top_p: Number(o.topP), seed: 1, max_tokens: steps + 1 });

function modelDir(name: string): string {
  const dir = join(packageRoot(), 'models', `bench-${name}`);
  if (name !== 'stories260K') return ensureSynthetic(name, dir);
  if (existsSync(join(dir, 'marginal.json')) && (JSON.parse(readFileSync(join(dir, 'marginal.json'), 'utf8')) as { graphVersion?: number }).graphVersion === GRAPH_VERSION) return dir;
  mkdirSync(dir, { recursive: true });
  const shared = join(packageRoot(), '..', 'shared', 'models', 'stories260K');
  if (!existsSync(shared)) throw new Error(`stories260K needs ../shared (looked in ${shared})`);
  importLlama2c(join(shared, 'stories260K.bin'), join(shared, 'tok512.bin'), dir);
  return dir;
}

/** Deterministic prompts of `promptLen` ordinary tokens (ids past the specials and byte pieces). */
function prompt(model: LoadedModel, i: number): number[] {
  const ids = [model.bosId];
  for (let k = 1; k < promptLen; k++) ids.push(259 + ((i * 131 + k * 17) % (model.vocabSize - 259)));
  return ids;
}

interface Row {
  model: string;
  mode: Mode;
  /** The session path the engine ran on ('io-binding' or 'onnxruntime-node'), and its provider. */
  path?: string;
  provider?: string;
  batch: number;
  tokS: number;
  stepMs: number;
  ortMs?: number;
  sampleMs?: number;
  glueMs?: number;
  /** Model FLOPs per second inside ONNX Runtime: 2 × parameters × tokens plus attention. */
  gflops?: number;
  /** KV bytes the engine copied outside the graph, per step. */
  kvBytes?: number;
  /** Of those, bytes of the existing cache copied to run the graph, per step (StepTiming.cacheBytesCopied). */
  cacheBytes?: number;
}

async function engineRun(model: LoadedModel, name: string, mode: Exclude<Mode, 'naive'>, batch: number): Promise<Row> {
  const flavour = mode === 'hf' ? 'hf' : 'fast';
  // fast-full: the same graph, but full logits rows copied out and sampled (no in-graph top-k).
  const engine = await OnnxEngine.create(model, {
    flavour,
    providers,
    maxSequences: batch,
    intraOpThreads: threads,
    rankedCandidates: mode === 'fast-full' ? 0 : 64,
    ...(mode === 'fast-js' ? { ioBinding: false } : {}),
    log: (line) => process.stderr.write(`  ${line}\n`),
  });
  const driver = new DirectDriver(engine);
  for (let i = 0; i < batch; i++) driver.open(i, sampling, new Rng(i));
  const last = new Int32Array(batch);
  for (let i = 0; i < batch; i++) {
    const r = await driver.step([[i, prompt(model, i), true]]);
    last[i] = r.tokens[0] as number;
  }
  const items: DirectItem[] = Array.from({ length: batch }, (_, i) => [i, [0], true]);
  let ortMs = 0;
  let sampleMs = 0;
  let glueMs = 0;
  let kvBytes = 0;
  let cacheBytes = 0;
  // One warm-up step so allocation and first-run costs stay out of the figure.
  for (let s = -1; s < steps; s++) {
    if (s === 0) ortMs = sampleMs = glueMs = kvBytes = cacheBytes = 0;
    for (let i = 0; i < batch; i++) ((items[i] as DirectItem)[1] as number[])[0] = last[i] as number;
    const t0 = performance.now();
    const r = await driver.step(items);
    if (s >= 0) {
      kvBytes += r.timing.kvBytesCopied;
      cacheBytes += r.timing.cacheBytesCopied ?? 0;
      ortMs += r.timing.runMs;
      sampleMs += r.timing.sampleMs;
      glueMs += performance.now() - t0 - r.timing.runMs - r.timing.sampleMs;
    }
    last.set(r.tokens);
  }
  const { path } = engine.kvPath;
  const provider = engine.info.provider;
  await engine.dispose();
  const total = ortMs + sampleMs + glueMs;
  const hd = model.kv.headDim;
  const ctx = promptLen + steps / 2;
  const flopsPerToken = model.shape ? 2 * parameterCount(model.shape) + 4 * model.kv.layers * ctx * hd * model.shape.nHeads : 0;
  const gflops = (flopsPerToken * batch * steps) / (ortMs / 1000) / 1e9;
  return { model: name, mode, path, provider, batch, tokS: (batch * steps) / (total / 1000), stepMs: total / steps, ortMs: ortMs / steps, sampleMs: sampleMs / steps, glueMs: glueMs / steps, gflops, kvBytes: kvBytes / steps, cacheBytes: cacheBytes / steps };
}

/** The textbook loop: each sequence alone, its present fed back as its next past. */
async function naiveRun(model: LoadedModel, name: string, session: ort.InferenceSession, batch: number): Promise<Row> {
  const sampler = new Sampler(model.vocabSize);
  const hd = model.kv.headDim;
  const H = model.kv.kvHeads;
  const state = [] as { past: Record<string, ort.Tensor>; len: number; last: number; rng: Rng }[];
  const runOne = async (st: (typeof state)[number], tokens: number[]) => {
    const S = tokens.length;
    const feeds: Record<string, ort.Tensor> = {
      [IO.inputIds]: new ort.Tensor('int64', BigInt64Array.from(tokens.map(BigInt)), [1, S]),
      [IO.attentionMask]: new ort.Tensor('int64', new BigInt64Array(st.len + S).fill(1n), [1, st.len + S]),
      [IO.positionIds]: new ort.Tensor('int64', BigInt64Array.from(tokens.map((_, k) => BigInt(st.len + k))), [1, S]),
      ...st.past,
    };
    const out = await session.run(feeds);
    for (let l = 0; l < model.kv.layers; l++) {
      st.past[IO.pastKey(l)] = out[IO.presentKey(l)] as ort.Tensor;
      st.past[IO.pastValue(l)] = out[IO.presentValue(l)] as ort.Tensor;
    }
    st.len += S;
    st.last = sampler.sample(out[IO.logits]?.data as Float32Array, (S - 1) * model.vocabSize, sampling, st.rng);
  };
  for (let i = 0; i < batch; i++) {
    const past: Record<string, ort.Tensor> = {};
    for (let l = 0; l < model.kv.layers; l++) {
      past[IO.pastKey(l)] = new ort.Tensor('float32', new Float32Array(0), [1, H, 0, hd]);
      past[IO.pastValue(l)] = new ort.Tensor('float32', new Float32Array(0), [1, H, 0, hd]);
    }
    const st = { past, len: 0, last: 0, rng: new Rng(i) };
    await runOne(st, prompt(model, i));
    state.push(st);
  }
  for (const st of state) await runOne(st, [st.last]);
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) for (const st of state) await runOne(st, [st.last]);
  const ms = performance.now() - t0;
  return { model: name, mode: 'naive', path: 'onnxruntime-node', provider: providers[0], batch, tokS: (batch * steps) / (ms / 1000), stepMs: ms / steps };
}

const rows: Row[] = [];
const fmt = (x: number | undefined, d = 1) => (x === undefined ? '' : x.toFixed(d));
process.stderr.write(`engine bench: ${cpus().length} cores, ${threads} ORT threads, prompt ${promptLen}, ${steps} decode steps, temperature ${o.temperature}, top-p ${o.topP}\n`);
for (const name of o.models.split(',')) {
  const model = await loadModelDir(modelDir(name));
  const naiveSession = modes.includes('naive')
    ? await ort.InferenceSession.create(model.graphPath('hf'), { executionProviders: providers, intraOpNumThreads: threads, graphOptimizationLevel: 'all' })
    : undefined;
  for (const batch of batches) {
    for (const mode of modes) {
      if (mode === 'naive' && batch > Number(o.naiveMaxBatch)) continue;
      const row = mode === 'naive' ? await naiveRun(model, name, naiveSession as ort.InferenceSession, batch) : await engineRun(model, name, mode, batch);
      rows.push(row);
      process.stderr.write(`  ${name} ${mode} b=${batch}: ${row.tokS.toFixed(0)} tok/s\n`);
    }
  }
  await naiveSession?.release();
}

const kib = (x: number | undefined) => (x === undefined ? '' : (x / 1024).toFixed(0));
console.log(`\ncontext held while decoding: ${promptLen}–${promptLen + steps} tokens; engines at the model's full context with the default pool\n`);
console.log('| model | batch | fast tok/s | fast, full logits tok/s | hf tok/s | naive tok/s | fast/full | fast/hf | fast/naive | fast step ms | ORT ms | sample ms | glue ms | ORT GFLOP/s | KV KiB copied/step fast | hf |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const name of o.models.split(',')) {
  for (const batch of batches) {
    const f = rows.find((r) => r.model === name && r.batch === batch && r.mode === 'fast');
    const h = rows.find((r) => r.model === name && r.batch === batch && r.mode === 'hf');
    const ff = rows.find((r) => r.model === name && r.batch === batch && r.mode === 'fast-full');
    const n = rows.find((r) => r.model === name && r.batch === batch && r.mode === 'naive');
    if (!f) continue;
    console.log(
      `| ${name} | ${batch} | ${fmt(f.tokS, 0)} | ${fmt(ff?.tokS, 0)} | ${fmt(h?.tokS, 0)} | ${fmt(n?.tokS, 0)} | ${ff ? fmt(f.tokS / ff.tokS, 2) + '×' : ''} | ${h ? fmt(f.tokS / h.tokS, 2) + '×' : ''} | ${n ? fmt(f.tokS / n.tokS, 2) + '×' : ''} | ${fmt(f.stepMs, 2)} | ${fmt(f.ortMs, 2)} | ${fmt(f.sampleMs, 2)} | ${fmt(f.glueMs, 2)} | ${fmt(f.gflops, 1)} | ${kib(f.kvBytes)} | ${kib(h?.kvBytes)} |`,
    );
  }
  const b1 = rows.find((r) => r.model === name && r.batch === 1 && r.mode === 'fast');
  const b32 = rows.find((r) => r.model === name && r.batch === 32 && r.mode === 'fast');
  if (b1 && b32) console.log(`\n${name}: fast batch 32 / batch 1 aggregate tokens/s = ${(b32.tokS / b1.tokS).toFixed(2)}×`);
}

// Every row, with its session path and provider: the engine table bench/gpu-check.sh writes.
console.log('\n| model | mode | session path | provider | batch | tok/s | step ms | KV KiB copied/step | of which the cache |');
console.log('|---|---|---|---|---:|---:|---:|---:|---:|');
for (const r of rows) console.log(`| ${r.model} | ${r.mode} | ${r.path ?? ''} | ${r.provider ?? ''} | ${r.batch} | ${fmt(r.tokS, 0)} | ${fmt(r.stepMs, 2)} | ${kib(r.kvBytes)} | ${kib(r.cacheBytes)} |`);
if (modes.includes('fast') && modes.includes('fast-js')) {
  console.log('\n| model | batch | I/O binding tok/s | onnxruntime-node tok/s | ratio |');
  console.log('|---|---:|---:|---:|---:|');
  for (const name of o.models.split(',')) {
    for (const batch of batches) {
      const f = rows.find((r) => r.model === name && r.batch === batch && r.mode === 'fast');
      const j = rows.find((r) => r.model === name && r.batch === batch && r.mode === 'fast-js');
      if (f && j) console.log(`| ${name} | ${batch} | ${fmt(f.tokS, 0)} | ${fmt(j.tokS, 0)} | ${fmt(f.tokS / j.tokS, 2)}× |`);
    }
  }
}
if (o.json) writeFileSync(o.json, JSON.stringify({ threads, cores: cpus().length, providers, promptLen, steps, rows }, null, 2) + '\n');
