/**
 * Cost follows the context held, not the maximum: batch-B decode tokens/s for the same work (a
 * P-token prompt per sequence, then S decode steps) on engines built for different maximum
 * contexts (--max-model-len), measured in alternating rounds on one stories15M-shaped model
 * whose rotary tables reach the largest of them.
 *
 * With --baseline DIR (a checkout of an older marginal with its dependencies installed, e.g.
 * the slot engine: `git worktree add /tmp/base 45637d6 && (cd /tmp/base && npm ci)`), that
 * tree's engine runs the same rounds alongside.
 *
 *   npm run bench:context -- [--contexts 256,2048] [--batch 32] [--prompt 128] [--steps 32] [--rounds 5] [--baseline DIR] [--json FILE]
 */
import { Command } from 'commander';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { DirectDriver, type DirectItem } from '../src/engine/direct.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { Rng } from '../src/sampling/rng.js';
import { validateSamplingParams } from '../src/sampling/params.js';
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
  .option('--baseline <dir>', 'an older marginal checkout to run alongside')
  .option('--spinning-too', "also run the engine with ONNX Runtime's intra-op spinning on (its default; marginal turns it off)")
  .option('--json <file>', 'write the results as JSON')
  .parse()
  .opts<{ contexts: string; batch: string; prompt: string; steps: string; rounds: string; threads?: string; baseline?: string; spinningToo?: boolean; json?: string }>();
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
  engine: string;
  context: number;
  round: number;
  tokS: number;
  stepMs: number;
  kvBytesPerStep: number;
  poolMiB: number;
}

async function measure(model: LoadedModel, context: number, round: number, spinning = false): Promise<Sample> {
  const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: batch, maxContext: context, intraOpThreads: threads, spinning });
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
    return { engine: spinning ? 'paged pool, spinning threads' : 'paged pool', context, round, tokS: (batch * steps) / (ms / 1000), stepMs: ms / steps, kvBytesPerStep: bytes / steps, poolMiB: (engine.info.totalBlocks * engine.info.blockBytes) / 2 ** 20 };
  } finally {
    await engine.dispose();
  }
}

interface OldEngine {
  open(seq: number, sampling: unknown, rng: unknown): void;
  execute(plan: { items: { seq: number; tokens: ArrayLike<number>; offset: number; count: number; sample: boolean }[] }): Promise<{ tokens: Int32Array }>;
  dispose(): Promise<void>;
}

/** The same rounds on an older tree's engine (its own model directory: graph versions differ). */
async function measureBaseline(root: string, context: number, round: number): Promise<Sample> {
  const imp = async <T>(rel: string) => (await import(pathToFileURL(join(root, rel)).href)) as T;
  const { OnnxEngine: Old } = await imp<{ OnnxEngine: { create(m: unknown, o: object): Promise<OldEngine> } }>('src/engine/onnx-engine.ts');
  const mod = await imp<{ writeModelDir: (o: object) => void; loadModelDir: (d: string) => Promise<{ vocabSize: number }> }>('src/models/modeldir.ts');
  const sampling = await imp<{ Rng: new (s: number) => unknown; validateSamplingParams: (x: object) => unknown }>('src/engine/sampling.ts');
  const dir = join(root, 'models', `bench-stories15m-ctx${longest}`);
  if (!existsSync(join(dir, 'marginal.json'))) {
    const { shape } = syntheticShape('stories15m');
    mod.writeModelDir({ dir, name: `synthetic-stories15m-ctx${longest}`, shape: { ...shape, maxSeqLen: longest }, weights: syntheticWeights(), tokenizer: syntheticTokenizerBuffer(shape.vocabSize), synthetic: true, description: 'baseline', flavours: ['fast'] });
  }
  const model = await mod.loadModelDir(dir);
  const engine = await Old.create(model, { providers: ['cpu'], maxSequences: batch, maxContext: context, intraOpThreads: threads });
  try {
    const params = sampling.validateSamplingParams({ temperature: 0, max_tokens: context });
    const last = new Int32Array(batch);
    const prefill = [];
    for (let i = 0; i < batch; i++) {
      engine.open(i, params, new sampling.Rng(i));
      prefill.push({ seq: i, tokens: Array.from({ length: promptLen }, (_, k) => 3 + ((i * 131 + k * 17) % (model.vocabSize - 3))), offset: 0, count: promptLen, sample: true });
    }
    last.set((await engine.execute({ items: prefill })).tokens);
    const items = Array.from({ length: batch }, (_, i) => ({ seq: i, tokens: [0], offset: 0, count: 1, sample: true }));
    let ms = 0;
    for (let s = -1; s < steps; s++) {
      for (let i = 0; i < batch; i++) (items[i] as { tokens: number[] }).tokens[0] = last[i] as number;
      const t0 = performance.now();
      const r = await engine.execute({ items });
      if (s >= 0) ms += performance.now() - t0;
      last.set(r.tokens);
    }
    return { engine: `baseline ${root}`, context, round, tokS: (batch * steps) / (ms / 1000), stepMs: ms / steps, kvBytesPerStep: NaN, poolMiB: NaN };
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
    const runs = [() => measure(model, c, round)];
    if (o.spinningToo) runs.push(() => measure(model, c, round, true));
    if (o.baseline) runs.push(() => measureBaseline(resolve(o.baseline as string), c, round));
    for (const run of round % 2 === 0 ? runs : runs.reverse()) {
      const s = await run();
      samples.push(s);
      process.stderr.write(`  round ${round} ${s.engine}, max context ${c}: ${s.tokS.toFixed(0)} tok/s\n`);
    }
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
console.log(`\nbatch ${batch} decode, ${promptLen}-token prompts + ${steps} steps (context held ${promptLen}–${promptLen + steps}), ${rounds} alternating rounds, medians\n`);
console.log('| engine | --max-model-len | pool (MiB) | decode tok/s | step ms | KV bytes copied / step | vs the first context | per-round tok/s |');
console.log('|---|---:|---:|---:|---:|---:|---:|---|');
for (const name of [...new Set(samples.map((s) => s.engine))]) {
  const base = median(samples.filter((s) => s.engine === name && s.context === (contexts[0] as number)).map((s) => s.tokS));
  for (const c of contexts) {
    const xs = samples.filter((s) => s.engine === name && s.context === c);
    const tok = median(xs.map((s) => s.tokS));
    const fmt = (x: number, d: number) => (Number.isNaN(x) ? '-' : x.toFixed(d));
    console.log(`| ${name} | ${c} | ${fmt((xs[0] as Sample).poolMiB, 0)} | ${tok.toFixed(0)} | ${median(xs.map((s) => s.stepMs)).toFixed(2)} | ${fmt(median(xs.map((s) => s.kvBytesPerStep)), 0)} | ${(tok / base).toFixed(2)}× | ${xs.map((s) => s.tokS.toFixed(0)).join(', ')} |`);
  }
}
if (o.json) writeFileSync(o.json, JSON.stringify({ model: model.name, batch, promptLen, steps, rounds, threads, samples }, null, 2) + '\n');
