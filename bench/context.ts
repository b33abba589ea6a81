/**
 * Cost follows the context held, not the maximum: batch-B decode tokens/s for the same work (a
 * P-token prompt per sequence, then S decode steps) on engines built for different maximum
 * contexts (--max-model-len), measured in alternating rounds on one stories15M-shaped model
 * whose rotary tables reach the largest of them.
 *
 *   npm run bench:context -- [--contexts 256,2048] [--batch 32] [--prompt 128] [--steps 32] [--rounds 5] [--json FILE]
 */
import { Command } from 'commander';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { DirectDriver, type DirectItem } from '../src/engine/direct.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { Rng, validateSamplingParams } from '../src/engine/sampling.js';
import { packageRoot } from '../src/models/importers.js';
import { syntheticShape, syntheticWeights } from '../src/models/llama/synthetic.js';
import { GRAPH_VERSION, loadModelDir, writeModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { syntheticTokenizerBuffer } from '../src/models/synthetic-tokenizer.js';

const o = new Command()
  .option('--contexts <list>', 'maximum contexts (--max-model-len) to compare', '256,2048')
  .option('--batch <n>', 'sequences decoding together', '32')
  .option('--prompt <n>', 'prompt tokens per sequence: the context actually held', '128')
  .option('--steps <n>', 'decode steps timed per round', '32')
  .option('--rounds <n>', 'alternating rounds per context', '5')
  .option('--threads <n>', 'ONNX Runtime intra-op threads (default: all cores)')
  .option('--json <file>', 'write the results as JSON')
  .parse()
  .opts<{ contexts: string; batch: string; prompt: string; steps: string; rounds: string; threads?: string; json?: string }>();
const contexts = o.contexts.split(',').map(Number);
const batch = Number(o.batch);
const promptLen = Number(o.prompt);
const steps = Number(o.steps);
const rounds = Number(o.rounds);
const threads = o.threads ? Number(o.threads) : cpus().length;
const longest = Math.max(...contexts);

/** stories15M's shape with rotary tables as long as the longest context asked for. */
function modelDir(): string {
  const dir = join(packageRoot(), 'models', `bench-stories15m-ctx${longest}`);
  const cfg = join(dir, 'marginal.json');
  if (existsSync(cfg) && (JSON.parse(readFileSync(cfg, 'utf8')) as { graphVersion?: number }).graphVersion === GRAPH_VERSION) return dir;
  const { shape } = syntheticShape('stories15m');
  writeModelDir({
    dir,
    name: `synthetic-stories15m-ctx${longest}`,
    shape: { ...shape, maxSeqLen: longest },
    weights: syntheticWeights(),
    tokenizer: syntheticTokenizerBuffer(shape.vocabSize),
    synthetic: true,
    description: `stories15M's shape with a ${longest}-position context, random weights`,
    flavours: ['fast'],
  });
  return dir;
}

interface Sample {
  context: number;
  round: number;
  tokS: number;
  stepMs: number;
  kvBytesPerStep: number;
  poolMiB: number;
}

async function measure(model: LoadedModel, context: number, round: number): Promise<Sample> {
  const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: batch, maxContext: context, intraOpThreads: threads });
  try {
    const d = new DirectDriver(engine);
    const sampling = validateSamplingParams({ temperature: 0, max_tokens: context });
    const last = new Int32Array(batch);
    const prefill: DirectItem[] = [];
    for (let i = 0; i < batch; i++) {
      d.open(i, sampling, new Rng(i));
      prefill.push([i, Array.from({ length: promptLen }, (_, k) => 3 + ((i * 131 + k * 17) % (model.vocabSize - 3))), true]);
    }
    last.set((await d.step(prefill)).tokens);
    const items: DirectItem[] = Array.from({ length: batch }, (_, i) => [i, [0], true]);
    let ms = 0;
    let bytes = 0;
    for (let s = -1; s < steps; s++) {
      for (let i = 0; i < batch; i++) ((items[i] as DirectItem)[1] as number[])[0] = last[i] as number;
      const t0 = performance.now();
      const r = await d.step(items);
      // The first step warms the new batch shape up and is not counted.
      if (s >= 0) {
        ms += performance.now() - t0;
        bytes += r.timing.kvBytesCopied;
      }
      last.set(r.tokens);
    }
    return { context, round, tokS: (batch * steps) / (ms / 1000), stepMs: ms / steps, kvBytesPerStep: bytes / steps, poolMiB: (engine.info.totalBlocks * engine.info.blockBytes) / 2 ** 20 };
  } finally {
    await engine.dispose();
  }
}

const model = await loadModelDir(modelDir());
process.stderr.write(`context bench: ${model.name}, batch ${batch}, prompt ${promptLen}, ${steps} decode steps, ${rounds} rounds, ${threads} ORT threads\n`);
const samples: Sample[] = [];
for (let round = 0; round < rounds; round++) {
  // Alternate the order so that drift on a shared machine hits every context alike.
  const order = round % 2 === 0 ? contexts : [...contexts].reverse();
  for (const c of order) {
    const s = await measure(model, c, round);
    samples.push(s);
    process.stderr.write(`  round ${round} max context ${c}: ${s.tokS.toFixed(0)} tok/s\n`);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const base = median(samples.filter((s) => s.context === (contexts[0] as number)).map((s) => s.tokS));
console.log(`\nbatch ${batch} decode, ${promptLen}-token prompts + ${steps} steps (context held ${promptLen}–${promptLen + steps}), ${rounds} alternating rounds, medians\n`);
console.log('| --max-model-len | pool (MiB) | decode tok/s | step ms | KV bytes copied / step | vs first | per-round tok/s |');
console.log('|---:|---:|---:|---:|---:|---:|---|');
for (const c of contexts) {
  const xs = samples.filter((s) => s.context === c);
  const tok = median(xs.map((s) => s.tokS));
  console.log(`| ${c} | ${(xs[0] as Sample).poolMiB.toFixed(0)} | ${tok.toFixed(0)} | ${median(xs.map((s) => s.stepMs)).toFixed(2)} | ${median(xs.map((s) => s.kvBytesPerStep)).toFixed(0)} | ${(tok / base).toFixed(2)}× | ${xs.map((s) => s.tokS.toFixed(0)).join(', ')} |`);
}
if (o.json) writeFileSync(o.json, JSON.stringify({ model: model.name, batch, promptLen, steps, rounds, threads, samples }, null, 2) + '\n');
