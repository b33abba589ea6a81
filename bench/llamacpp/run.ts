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
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { getLlama, LlamaLogLevel, type Llama } from 'node-llama-cpp';
import { exportModelDir, type GgufWeightType } from '../../src/models/gguf/export.js';
import { loadModelDir } from '../../src/models/modeldir.js';
import { benchModelDir, benchPrompt, cpuSeconds, marginalDecode } from '../decode-run.js';

const program = new Command()
  .option('--models <list>', 'synthetic shapes', 'stories15m,stories110m')
  .option('--formats <list>', 'fp32, q8, q4; q8@128 etc. for larger blocks (against llama.cpp on the blocks-of-32 GGUF: GGUF holds blocks of 32)', 'fp32,q8,q4')
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
const formats = o.formats.split(',');
const GGUF_TYPE: Record<string, GgufWeightType> = { fp32: 'f32', q8: 'q8_0', q4: 'q4_0' };
const log = (s: string) => process.stderr.write(s + '\n');

const modelDir = (shape: string, format: string) => benchModelDir(shape, format, log);

function ggufFile(dir: string, format: string): string {
  const file = `${dir}.gguf`;
  if (!existsSync(file) || statSync(file).mtimeMs < statSync(join(dir, 'marginal.json')).mtimeMs) {
    log(`writing ${file}`);
    exportModelDir(dir, file, GGUF_TYPE[format] as GgufWeightType, { log });
  }
  return file;
}

async function llamaDecode(llama: Llama, path: string, batch: number, prompt: (i: number) => number[]): Promise<{ tokS: number; tokCpuS: number }> {
  const model = await llama.loadModel({ modelPath: path });
  try {
    const context = await model.createContext({ sequences: batch, contextSize: promptLen + steps + 8, batchSize: Math.max(512, batch * promptLen), threads });
    try {
      const seqs = Array.from({ length: batch }, () => context.getSequence());
      // The clocks start when every sequence has its warm-up token (one past the prefill, as
      // marginal's run has one warm-up step); the sequences advance in lockstep.
      let warm = 0;
      let t0 = 0;
      let cpu0 = 0;
      await Promise.all(
        seqs.map(async (seq, i) => {
          let n = 0;
          for await (const _ of seq.evaluate(prompt(i) as never, { temperature: 0, yieldEogToken: true })) {
            void _;
            n++;
            if (n === 2 && ++warm === batch) {
              t0 = performance.now();
              cpu0 = cpuSeconds();
            }
            if (n === steps + 2) break;
          }
        }),
      );
      const ms = performance.now() - t0;
      return { tokS: (batch * steps) / (ms / 1000), tokCpuS: (batch * steps) / (cpuSeconds() - cpu0) };
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
  /** Tokens per CPU-second (the figure compared; see DecodeResult.tokCpuS). */
  marginal: number;
  marginalWall: number;
  marginalStepMs: number;
  marginalOrtMs: number;
  llamacpp?: number;
  llamacppWall?: number;
}

const rows: Row[] = [];
const llama = o.llamacpp ? await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error }) : undefined;
log(`llama.cpp bench: ${cpus().length} cores, ${threads} threads each, prompt ${promptLen}, ${steps} decode steps, greedy, best of ${rounds}`);
for (const shape of o.models.split(',')) {
  for (const format of formats) {
    const dir = modelDir(shape, format);
    // GGUF holds blocks of 32 only: marginal's own blocks (`q8` is --quantize q8's default,
    // `q8@256` a chosen size) run against llama.cpp on the GGUF written from the blocks-of-32
    // directory (`q8@32`), the same float32 weights quantized llama.cpp's way, byte for byte.
    const weights = format.split('@')[0] as string;
    const ggmlDir = weights === 'fp32' ? dir : format === `${weights}@32` ? dir : modelDir(shape, `${weights}@32`);
    const file = llama && GGUF_TYPE[weights] !== undefined ? ggufFile(ggmlDir, weights) : undefined;
    const model = await loadModelDir(dir);
    for (const batch of batches) {
      // Alternate the engines so drift on a shared machine hits both; keep each one's best
      // round, the one least disturbed by other work.
      let m: Awaited<ReturnType<typeof marginalDecode>> | undefined;
      let l: { tokS: number; tokCpuS: number } | undefined;
      for (let r = 0; r < rounds; r++) {
        const mr = await marginalDecode(model, batch, { promptLen, steps, threads });
        if (m === undefined || mr.tokCpuS > m.tokCpuS) m = mr;
        if (llama && file) {
          const lr = await llamaDecode(llama, file, batch, (i) => benchPrompt(model, i, promptLen));
          if (l === undefined || lr.tokCpuS > l.tokCpuS) l = lr;
        }
      }
      if (m === undefined) continue;
      const row: Row = { model: shape, format, batch, marginal: m.tokCpuS, marginalWall: m.tokS, marginalStepMs: m.stepMs, marginalOrtMs: m.ortMs };
      if (l) {
        row.llamacpp = l.tokCpuS;
        row.llamacppWall = l.tokS;
      }
      rows.push(row);
      log(`  ${shape} ${format} b=${batch}: marginal ${m.tokCpuS.toFixed(0)} tok/CPU-s (${m.tokS.toFixed(0)} tok/s)${l ? `, llama.cpp ${l.tokCpuS.toFixed(0)} tok/CPU-s (${l.tokS.toFixed(0)} tok/s): ${(m.tokCpuS / l.tokCpuS).toFixed(2)}×` : ''}`);
    }
  }
}
await llama?.dispose();

const f0 = (x: number | undefined) => (x === undefined ? '' : x.toFixed(0));
const ratio = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? '' : `${(a / b).toFixed(2)}×`);
const unit = threads === 1 ? 'decode tokens per CPU-second, one thread' : `decode tokens per CPU-second, ${threads} threads (spinning counted)`;
console.log(`\n### marginal by weight format (${unit})\n`);
console.log(`| model | batch | ${formats.join(' | ')} | ${formats.filter((f) => f !== 'fp32').map((f) => `${f}/fp32`).join(' | ')} |`);
console.log(`|---|---:|${formats.map(() => '---:').join('|')}|${formats.filter((f) => f !== 'fp32').map(() => '---:').join('|')}|`);
for (const shape of o.models.split(',')) {
  for (const batch of batches) {
    const at = (f: string) => rows.find((r) => r.model === shape && r.batch === batch && r.format === f)?.marginal;
    console.log(`| ${shape} | ${batch} | ${formats.map((f) => f0(at(f))).join(' | ')} | ${formats.filter((f) => f !== 'fp32').map((f) => ratio(at(f), at('fp32'))).join(' | ')} |`);
  }
}
if (llama) {
  console.log(`\n### marginal vs llama.cpp on the same weights (${unit}; wall-clock tok/s in brackets)\n`);
  console.log('| model | weights (marginal / GGUF) | batch | marginal | llama.cpp | marginal / llama.cpp |');
  console.log('|---|---|---:|---:|---:|---:|');
  for (const r of rows.filter((x) => x.llamacpp !== undefined)) console.log(`| ${r.model} | ${r.format} / ${GGUF_TYPE[r.format.split('@')[0] as string]?.toUpperCase()} | ${r.batch} | ${f0(r.marginal)} (${f0(r.marginalWall)}) | ${f0(r.llamacpp)} (${f0(r.llamacppWall)}) | ${ratio(r.marginal, r.llamacpp)} |`);
  console.log(`\n### marginal's step: wall ms, of which inside ONNX Runtime (best round)\n`);
  console.log('| model | weights | batch | step ms | ONNX Runtime ms | outside |');
  console.log('|---|---|---:|---:|---:|---:|');
  for (const r of rows) console.log(`| ${r.model} | ${r.format} | ${r.batch} | ${r.marginalStepMs.toFixed(2)} | ${r.marginalOrtMs.toFixed(2)} | ${(r.marginalStepMs - r.marginalOrtMs).toFixed(2)} |`);
}
if (o.json) writeFileSync(o.json, JSON.stringify({ cores: cpus().length, threads, promptLen, steps, rows }, null, 2) + '\n');
