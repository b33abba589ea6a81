/**
 * Server overhead: streamed tokens/s end to end through HTTP (marginal serve, engine in its
 * worker thread, `marginal bench serve` as the client) against the raw engine loop (the same
 * generator in-process, no HTTP) at the same batch, one after the other on this machine.
 *
 *   npm run bench:overhead -- [--batches 8,32]
 */
import { Command } from 'commander';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { benchServe, promptText } from '../src/bench/serve.js';
import { Generator } from '../src/serving/generator.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { validateSamplingParams } from '../src/engine/sampling.js';
import { ensureSynthetic, packageRoot } from '../src/models/importers.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { freePort, startServer } from './servers.js';

const o = new Command()
  .option('--shape <name>', 'synthetic model shape', 'stories15m')
  .option('--batches <list>', 'concurrent streams', '8,32')
  .option('--input-len <n>', 'prompt tokens', '32')
  .option('--output-len <n>', 'output tokens', '96')
  .parse()
  .opts<{ shape: string; batches: string; inputLen: string; outputLen: string }>();

const dir = join(packageRoot(), 'models', `bench-${o.shape}`);
ensureSynthetic(o.shape, dir);
const batches = o.batches.split(',').map(Number);
const out = Number(o.outputLen);
const model = await loadModelDir(dir);

const rounds = 3;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const raw = new Map<number, number[]>();
const http = new Map<number, number[]>();
const port = await freePort();
const s = await startServer([join(packageRoot(), 'dist', 'cli.js'), 'serve', '--model', dir, '--port', String(port), '--max-sequences', '32', '--providers', 'cpu'], port, 'marginal');
const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 32 });
try {
  await benchServe({ url: s.url, requests: 2, inputLen: Number(o.inputLen), outputLen: 8, progress: false });
  // Rounds alternate raw and HTTP so that noise on this shared machine hits both alike.
  for (let round = 0; round < rounds; round++) {
    for (const b of batches) {
      // Raw: the generator straight on an in-process engine, every stream submitted at once.
      const g = new Generator(engine, model, { policy: 'shadow', defaultBid: () => 0.01 });
      const prompts = Array.from({ length: b }, (_, i) => promptText(Number(o.inputLen), i));
      const t0 = performance.now();
      const done = prompts.map((p) => g.submit({ prompt: p, sampling: validateSamplingParams({ temperature: 0, max_tokens: out }) }));
      await g.runUntilIdle();
      const tokens = (await Promise.all(done)).reduce((n, c) => n + c.tokens.length, 0);
      raw.set(b, [...(raw.get(b) ?? []), tokens / ((performance.now() - t0) / 1000)]);
      // Through HTTP: marginal serve, the same streams as concurrent SSE clients.
      const r = await benchServe({ url: s.url, requests: b, maxConcurrency: b, inputLen: Number(o.inputLen), outputLen: out, rangeRatio: 0, seed: 1, progress: false });
      http.set(b, [...(http.get(b) ?? []), (r.summary as unknown as { output_throughput: number }).output_throughput]);
    }
  }
} finally {
  await s.stop();
  await engine.dispose();
}
console.log(`\nsynthetic ${o.shape}, ${o.inputLen}-token prompts, ${out} output tokens, greedy\n`);
console.log('| streams | raw engine loop tok/s | through HTTP (SSE) tok/s | HTTP / raw |');
console.log('|---:|---:|---:|---:|');
for (const b of batches) {
  const r = median(raw.get(b) as number[]);
  const h = median(http.get(b) as number[]);
  console.log(`| ${b} | ${r.toFixed(0)} | ${h.toFixed(0)} | ${((h / r) * 100).toFixed(1)}% |`);
}
console.log(`\n(medians of ${rounds} alternating rounds)`);
