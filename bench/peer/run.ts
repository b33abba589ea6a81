/**
 * Peer comparison: the same model — its Hugging Face `hf` graph — served by a small
 * transformers.js server (bench/peer/tjs-server.ts, what a Node user would write today) and by
 * marginal, under the same `marginal bench serve` load at 1, 8 and 32 concurrent clients,
 * one server at a time on this machine.
 *
 *   npm run bench:peer -- [--model stories15m] [--output-len 64]
 */
import { Command } from 'commander';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchServe } from '../../src/bench/serve.js';
import { ensureSynthetic, packageRoot } from '../../src/models/importers.js';
import { freePort, startServer } from '../servers.js';

const o = new Command()
  .option('--shape <name>', 'synthetic model shape', 'stories15m')
  .option('--concurrency <list>', 'client counts', '1,8,32')
  .option('--input-len <n>', 'prompt tokens', '32')
  .option('--output-len <n>', 'output tokens', '64')
  .parse()
  .opts<{ shape: string; concurrency: string; inputLen: string; outputLen: string }>();

const dir = join(packageRoot(), 'models', `bench-${o.shape}`);
ensureSynthetic(o.shape, dir);
const cli = join(packageRoot(), 'dist', 'cli.js');
const peer = fileURLToPath(new URL('./tjs-server.ts', import.meta.url));
const levels = o.concurrency.split(',').map(Number);

type Row = { server: string; c: number; tokS: number; ttft: number; tpot: number; e2el: number; completed: number; outTokens: number };
const rows: Row[] = [];
for (const server of ['transformers.js', 'marginal'] as const) {
  const port = await freePort();
  const args = server === 'marginal' ? [cli, 'serve', '--model', dir, '--port', String(port), '--max-sequences', '32', '--providers', 'cpu'] : ['--import', 'tsx', peer, '--model', dir, '--port', String(port)];
  const s = await startServer(args, port, server);
  try {
    // One warm-up request so neither pays session start-up inside the measurement.
    await benchServe({ url: s.url, requests: 1, inputLen: Number(o.inputLen), outputLen: 8, progress: false });
    for (const c of levels) {
      const r = await benchServe({ url: s.url, requests: Math.max(4, 2 * c), maxConcurrency: c, inputLen: Number(o.inputLen), outputLen: Number(o.outputLen), rangeRatio: 0, seed: 1, progress: false });
      const m = r.summary as unknown as Record<string, number>;
      rows.push({ server, c, tokS: m.output_throughput as number, ttft: m.mean_ttft_ms as number, tpot: m.mean_tpot_ms as number, e2el: m.mean_e2el_ms as number, completed: m.completed as number, outTokens: m.total_output_tokens as number });
      process.stderr.write(`  ${server} c=${c}: ${(m.output_throughput as number).toFixed(0)} tok/s\n`);
    }
  } finally {
    await s.stop();
  }
}
console.log(`\nsynthetic ${o.shape}, prompts of ~${o.inputLen} tokens, ${o.outputLen} output tokens, greedy; one server at a time\n`);
console.log('| clients | transformers.js tok/s | marginal tok/s | ratio | TTFT ms (tjs / marginal) | TPOT ms (tjs / marginal) | E2EL ms (tjs / marginal) |');
console.log('|---:|---:|---:|---:|---:|---:|---:|');
for (const c of levels) {
  const a = rows.find((r) => r.server === 'transformers.js' && r.c === c);
  const b = rows.find((r) => r.server === 'marginal' && r.c === c);
  if (!a || !b) continue;
  console.log(`| ${c} | ${a.tokS.toFixed(0)} | ${b.tokS.toFixed(0)} | ${(b.tokS / a.tokS).toFixed(2)}× | ${a.ttft.toFixed(1)} / ${b.ttft.toFixed(1)} | ${a.tpot.toFixed(2)} / ${b.tpot.toFixed(2)} | ${a.e2el.toFixed(0)} / ${b.e2el.toFixed(0)} |`);
}
