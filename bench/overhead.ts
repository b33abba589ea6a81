/**
 * Server overhead: streamed tokens/s end to end through HTTP (marginal serve, engine in its
 * worker thread, `marginal bench serve` as the client) against the raw engine loop (the same
 * generator in-process, no HTTP) at the same batch, one after the other on this machine.
 *
 *   npm run bench:overhead -- [--batches 8,32]
 */
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { benchServe, promptText } from '../src/bench/serve.js';
import { Generator } from '../src/engine/generator.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { validateSamplingParams } from '../src/engine/sampling.js';
import { packageRoot, synthesize } from '../src/models/importers.js';
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
if (!existsSync(join(dir, 'marginal.json'))) synthesize(o.shape, dir);
const batches = o.batches.split(',').map(Number);
const out = Number(o.outputLen);
const model = await loadModelDir(dir);

// Raw: the generator straight on the engine, every stream submitted at once.
const raw = new Map<number, number>();
for (const b of batches) {
  const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 32 });
  const prompts = Array.from({ length: b }, (_, i) => promptText(Number(o.inputLen), i));
  for (let rep = 0; rep < 2; rep++) {
    const g = new Generator(engine, model, { policy: 'shadow', defaultBid: () => 0.01 });
    const t0 = performance.now();
    const done = prompts.map((p) => g.submit({ prompt: p, sampling: validateSamplingParams({ temperature: 0, max_tokens: out }) }));
    await g.runUntilIdle();
    const tokens = (await Promise.all(done)).reduce((n, c) => n + c.tokens.length, 0);
    if (rep === 1) raw.set(b, tokens / ((performance.now() - t0) / 1000));
  }
  await engine.dispose();
}

// Through HTTP: marginal serve, the same streams as concurrent SSE clients.
const http = new Map<number, number>();
const port = await freePort();
const s = await startServer([join(packageRoot(), 'dist', 'cli.js'), 'serve', '--model', dir, '--port', String(port), '--max-sequences', '32', '--providers', 'cpu'], port, 'marginal');
try {
  await benchServe({ url: s.url, requests: 2, inputLen: Number(o.inputLen), outputLen: 8, progress: false });
  for (const b of batches) {
    const r = await benchServe({ url: s.url, requests: b, maxConcurrency: b, inputLen: Number(o.inputLen), outputLen: out, rangeRatio: 0, seed: 1, progress: false });
    http.set(b, (r.summary as unknown as { output_throughput: number }).output_throughput);
  }
} finally {
  await s.stop();
}
console.log(`\nsynthetic ${o.shape}, ${o.inputLen}-token prompts, ${out} output tokens, greedy\n`);
console.log('| streams | raw engine loop tok/s | through HTTP (SSE) tok/s | HTTP / raw |');
console.log('|---:|---:|---:|---:|');
for (const b of batches) console.log(`| ${b} | ${(raw.get(b) as number).toFixed(0)} | ${(http.get(b) as number).toFixed(0)} | ${(((http.get(b) as number) / (raw.get(b) as number)) * 100).toFixed(1)}% |`);
