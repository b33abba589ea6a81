/**
 * Weight formats and llama.cpp, side by side in one run: for each model shape, marginal's fast
 * engine with float32, q8 and q4 weights, and llama.cpp (node-llama-cpp 3.21.1's prebuilt CPU
 * build) on GGUF files written from the very same model directories (F32, Q8_0, Q4_0: the
 * quantized files hold marginal's blocks byte for byte). Aggregate decode tokens/s by batch,
 * every sequence prefilled with the same deterministic prompt, greedy.
 *
 *   npm run bench:llamacpp -- [--models stories15m,stories110m,llama-1b] [--formats fp32,q8,q4]
 *     [--batches 1,4,16,32,64] [--prompt 64] [--steps 32] [--threads 2] [--rounds 3] [--json FILE] [--no-llamacpp]
 *
 * llama.cpp runs with its defaults otherwise (half-precision KV cache, flash attention where it
 * applies); its B sequences live in one context and node-llama-cpp batches their tokens into
 * one decode per step, as a Node user of llama.cpp would serve them.
 */
import { Command } from 'commander';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { getLlama, LlamaLogLevel, type Llama } from 'node-llama-cpp';
import { exportModelDir, type GgufWeightType } from '../../src/models/gguf/export.js';
import { packageRoot, synthesize } from '../../src/models/importers.js';
import { GRAPH_VERSION, loadModelDir, type ModelConfig } from '../../src/models/modeldir.js';
import { benchPrompt, marginalDecode } from '../decode-run.js';

const program = new Command()
  .option('--models <list>', 'synthetic shapes', 'stories15m,stories110m')
  .option('--formats <list>', 'fp32, q8, q4', 'fp32,q8,q4')
  .option('--batches <list>', 'batch sizes', '1,4,16,32,64')
  .option('--prompt <n>', 'prompt tokens per sequence', '64')
  .option('--steps <n>', 'decode steps measured', '32')
  .option('--threads <n>', 'threads for both engines', String(cpus().length))
  .option('--rounds <n>', 'measurements per cell, alternating the engines; the best is kept', '3')
  .option('--json <file>', 'write the rows as JSON')
  .option('--no-llamacpp', 'marginal only')
  .parse();
const o = program.opts<{ models: string; formats: string; batches: string; prompt: string; steps: string; threads: string; rounds: string; json?: string; llamacpp: boolean }>();
const rounds = Number(o.rounds);
const promptLen = Number(o.prompt);
const steps = Number(o.steps);
const threads = Number(o.threads);
const batches = o.batches.split(',').map(Number);
const formats = o.formats.split(',') as ('fp32' | 'q8' | 'q4')[];
const GGUF_TYPE: Record<string, GgufWeightType> = { fp32: 'f32', q8: 'q8_0', q4: 'q4_0' };
const log = (s: string) => process.stderr.write(s + '\n');

/** models/bench-SHAPE[-q8|-q4], written unless an up-to-date one with those weights is there. */
function modelDir(shape: string, format: string): string {
  const dir = join(packageRoot(), 'models', format === 'fp32' ? `bench-${shape}` : `bench-${shape}-${format}`);
  const cfg = join(dir, 'marginal.json');
  const c = existsSync(cfg) ? (JSON.parse(readFileSync(cfg, 'utf8')) as ModelConfig) : undefined;
  if (c?.graphVersion !== GRAPH_VERSION || (c.quantization?.label ?? 'fp32') !== format) {
    log(`writing ${dir}`);
    synthesize(shape, dir, format === 'fp32' ? { log } : { log, quantize: { weights: format as 'q8' | 'q4' } });
  }
  return dir;
}

function ggufFile(dir: string, format: string): string {
  const file = `${dir}.gguf`;
  if (!existsSync(file) || statSync(file).mtimeMs < statSync(join(dir, 'marginal.json')).mtimeMs) {
    log(`writing ${file}`);
    exportModelDir(dir, file, GGUF_TYPE[format] as GgufWeightType, { log });
  }
  return file;
}

async function llamaDecode(llama: Llama, path: string, batch: number, prompt: (i: number) => number[]): Promise<{ tokS: number }> {
  const model = await llama.loadModel({ modelPath: path });
  try {
    const context = await model.createContext({ sequences: batch, contextSize: promptLen + steps + 8, batchSize: Math.max(512, batch * promptLen), threads });
    try {
      const seqs = Array.from({ length: batch }, () => context.getSequence());
      const firstAt: number[] = [];
      const doneAt: number[] = [];
      await Promise.all(
        seqs.map(async (seq, i) => {
          let n = 0;
          // One warm-up token past the prefill, as marginal's run has one warm-up step.
          for await (const _ of seq.evaluate(prompt(i) as never, { temperature: 0, yieldEogToken: true })) {
            void _;
            n++;
            if (n === 2) firstAt[i] = performance.now();
            if (n === steps + 2) break;
          }
          doneAt[i] = performance.now();
        }),
      );
      const ms = Math.max(...doneAt) - Math.max(...firstAt);
      return { tokS: (batch * steps) / (ms / 1000) };
    } finally {
      await context.dispose();
    }
  } finally {
    await model.dispose();
  }
}

interface Row {
  model: string;
  format: string;
  batch: number;
  marginal: number;
  marginalStepMs: number;
  marginalOrtMs: number;
  llamacpp?: number;
}

const rows: Row[] = [];
const llama = o.llamacpp ? await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error }) : undefined;
log(`llama.cpp bench: ${cpus().length} cores, ${threads} threads each, prompt ${promptLen}, ${steps} decode steps, greedy, best of ${rounds}`);
for (const shape of o.models.split(',')) {
  for (const format of formats) {
    const dir = modelDir(shape, format);
    const file = llama ? ggufFile(dir, format) : undefined;
    const model = await loadModelDir(dir);
    for (const batch of batches) {
      // Alternate the engines so drift on a shared machine hits both; keep each one's best
      // round, the one least disturbed by other work.
      let m: Awaited<ReturnType<typeof marginalDecode>> | undefined;
      let l: { tokS: number } | undefined;
      for (let r = 0; r < rounds; r++) {
        const mr = await marginalDecode(model, batch, { promptLen, steps, threads });
        if (m === undefined || mr.tokS > m.tokS) m = mr;
        if (llama && file) {
          const lr = await llamaDecode(llama, file, batch, (i) => benchPrompt(model, i, promptLen));
          if (l === undefined || lr.tokS > l.tokS) l = lr;
        }
      }
      if (m === undefined) continue;
      const row: Row = { model: shape, format, batch, marginal: m.tokS, marginalStepMs: m.stepMs, marginalOrtMs: m.ortMs };
      if (l) row.llamacpp = l.tokS;
      rows.push(row);
      log(`  ${shape} ${format} b=${batch}: marginal ${m.tokS.toFixed(0)} tok/s${l ? `, llama.cpp ${l.tokS.toFixed(0)} tok/s (${(m.tokS / l.tokS).toFixed(2)}×)` : ''}`);
    }
  }
}
await llama?.dispose();

const f0 = (x: number | undefined) => (x === undefined ? '' : x.toFixed(0));
const ratio = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? '' : `${(a / b).toFixed(2)}×`);
console.log('\n### marginal by weight format (decode tokens/s)\n');
console.log(`| model | batch | ${formats.join(' | ')} | ${formats.filter((f) => f !== 'fp32').map((f) => `${f}/fp32`).join(' | ')} |`);
console.log(`|---|---:|${formats.map(() => '---:').join('|')}|${formats.filter((f) => f !== 'fp32').map(() => '---:').join('|')}|`);
for (const shape of o.models.split(',')) {
  for (const batch of batches) {
    const at = (f: string) => rows.find((r) => r.model === shape && r.batch === batch && r.format === f)?.marginal;
    console.log(`| ${shape} | ${batch} | ${formats.map((f) => f0(at(f))).join(' | ')} | ${formats.filter((f) => f !== 'fp32').map((f) => ratio(at(f), at('fp32'))).join(' | ')} |`);
  }
}
if (llama) {
  console.log('\n### marginal vs llama.cpp on the same weights (decode tokens/s)\n');
  console.log('| model | weights (marginal / GGUF) | batch | marginal | llama.cpp | marginal / llama.cpp |');
  console.log('|---|---|---:|---:|---:|---:|');
  for (const r of rows) console.log(`| ${r.model} | ${r.format} / ${GGUF_TYPE[r.format]?.toUpperCase()} | ${r.batch} | ${f0(r.marginal)} | ${f0(r.llamacpp)} | ${ratio(r.marginal, r.llamacpp)} |`);
}
if (o.json) writeFileSync(o.json, JSON.stringify({ cores: cpus().length, threads, promptLen, steps, rows }, null, 2) + '\n');
