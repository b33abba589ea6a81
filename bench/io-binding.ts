/**
 * The engine's two session paths side by side: the fast graph through the native addon's
 * I/O-binding runner (KV pool bound in place, step inputs one upload, outputs into preallocated
 * buffers) and through onnxruntime-node's JavaScript session (tensor wrappers per run, outputs
 * copied into fresh JavaScript arrays). Both engines decode the same batch with the same plans,
 * in alternating rounds of ten steps (step by step, each session's idle intra-op threads would
 * spin while the other runs), so a noisy machine slows both alike; the figure is the median
 * step.
 *
 *   npm run bench:io-binding -- [--models stories260K,stories15m] [--batches 1,8,32] [--steps 40] [--providers cpu]
 */
import { Command } from 'commander';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { DirectDriver, type DirectItem } from '../src/engine/direct.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { Rng } from '../src/sampling/rng.js';
import { validateSamplingParams } from '../src/sampling/params.js';
import type { ExecutionProvider } from '../src/engine/types.js';
import { ensureSynthetic, importLlama2c, packageRoot } from '../src/models/importers.js';
import { GRAPH_VERSION, loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { RunnerStat } from '../src/native/ort-runner.js';

const o = new Command()
  .option('--models <list>', 'stories260K and/or synthetic shapes', 'stories260K,stories15m')
  .option('--batches <list>', 'batch sizes', '1,8,32')
  .option('--steps <n>', 'decode steps timed per path', '40')
  .option('--prompt <n>', 'prompt tokens per sequence', '16')
  .option('--providers <list>', 'execution providers (cpu, cuda)', 'cpu')
  .option('--threads <n>', 'ONNX Runtime intra-op threads (default: all cores)')
  .parse()
  .opts<{ models: string; batches: string; steps: string; prompt: string; providers: string; threads?: string }>();
const steps = Number(o.steps);
const promptLen = Number(o.prompt);
const providers = o.providers.split(',') as ExecutionProvider[];
const threads = o.threads ? Number(o.threads) : cpus().length;
const greedy = validateSamplingParams({ temperature: 0, max_tokens: steps + 2 });

function modelDir(name: string): string {
  const dir = join(packageRoot(), 'models', `bench-${name}`);
  if (name !== 'stories260K') return ensureSynthetic(name, dir);
  const cfg = join(dir, 'marginal.json');
  if (!existsSync(cfg) || (JSON.parse(readFileSync(cfg, 'utf8')) as { graphVersion?: number }).graphVersion !== GRAPH_VERSION) {
    mkdirSync(dir, { recursive: true });
    const shared = join(packageRoot(), '..', 'shared', 'models', 'stories260K');
    importLlama2c(join(shared, 'stories260K.bin'), join(shared, 'tok512.bin'), dir);
  }
  return dir;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

interface Side {
  engine: OnnxEngine;
  driver: DirectDriver;
  items: DirectItem[];
  last: Int32Array;
  ms: number[];
  cacheBytes: number;
}

async function side(model: LoadedModel, batch: number, ioBinding: boolean): Promise<Side> {
  const engine = await OnnxEngine.create(model, { providers, maxSequences: batch, maxContext: promptLen + steps + 8, intraOpThreads: threads, ioBinding, log: (l) => process.stderr.write(`  ${l}\n`) });
  const driver = new DirectDriver(engine);
  const last = new Int32Array(batch);
  for (let i = 0; i < batch; i++) {
    driver.open(i, greedy, new Rng(i));
    const p = [model.bosId];
    for (let k = 1; k < promptLen; k++) p.push(259 + ((i * 131 + k * 17) % (model.vocabSize - 259)));
    last[i] = (await driver.step([[i, p, true]])).tokens[0] as number;
  }
  return { engine, driver, items: Array.from({ length: batch }, (_, i): DirectItem => [i, [0], true]), last, ms: [], cacheBytes: 0 };
}

async function step(s: Side, timed: boolean): Promise<void> {
  for (let i = 0; i < s.items.length; i++) ((s.items[i] as DirectItem)[1] as number[])[0] = s.last[i] as number;
  const t0 = performance.now();
  const r = await s.driver.step(s.items);
  if (timed) {
    s.ms.push(performance.now() - t0);
    s.cacheBytes += r.timing.cacheBytesCopied ?? 0;
  }
  s.last.set(r.tokens);
}

process.stderr.write(`io-binding bench: ${cpus().length} cores, ${threads} ORT threads, providers ${providers.join(',')}, prompt ${promptLen}, ${steps} steps per path\n`);
const lines: string[] = [];
for (const name of o.models.split(',')) {
  const model = await loadModelDir(modelDir(name));
  for (const batch of o.batches.split(',').map(Number)) {
    const bound = await side(model, batch, true);
    const js = await side(model, batch, false);
    const up0 = bound.engine.runnerStat(RunnerStat.uploadBytes) ?? 0;
    const down0 = bound.engine.runnerStat(RunnerStat.downloadBytes) ?? 0;
    const round = 10;
    for (let r = 0; r * round < steps; r++) {
      // Alternate which goes first; the first step of a round (after the other's) is not timed.
      for (const p of r % 2 === 0 ? [bound, js] : [js, bound]) {
        for (let s = 0; s <= round; s++) await step(p, s > 0);
      }
    }
    const same = bound.last.every((t, i) => t === js.last[i]);
    const b = median(bound.ms);
    const j = median(js.ms);
    const stepsRun = Math.ceil(steps / round) * (round + 1);
    const up = ((bound.engine.runnerStat(RunnerStat.uploadBytes) ?? 0) - up0) / stepsRun;
    const down = ((bound.engine.runnerStat(RunnerStat.downloadBytes) ?? 0) - down0) / stepsRun;
    lines.push(
      `| ${name} | ${batch} | ${b.toFixed(2)} | ${j.toFixed(2)} | ${(j / b).toFixed(2)}× | ${((batch * 1000) / b).toFixed(0)} | ${((batch * 1000) / j).toFixed(0)} | ${bound.cacheBytes / bound.ms.length} | ${js.cacheBytes / js.ms.length} | ${up.toFixed(0)} / ${down.toFixed(0)} | ${same ? 'yes' : 'NO'} |`,
    );
    process.stderr.write(`  ${name} b=${batch}: I/O binding ${b.toFixed(2)} ms, onnxruntime-node ${j.toFixed(2)} ms\n`);
    await bound.engine.dispose();
    await js.engine.dispose();
  }
}
console.log('| model | batch | I/O binding step ms | onnxruntime-node step ms | speed-up | I/O binding tok/s | onnxruntime-node tok/s | cache bytes copied / step (I/O binding) | (onnxruntime-node) | bytes up / down per step (I/O binding) | same tokens |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
for (const l of lines) console.log(l);
