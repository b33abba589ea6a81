/**
 * Where a decode step's time goes inside ONNX Runtime, by operator type: ORT's own profiler
 * over the timed decode steps of bench/decode-run.ts, for each weight format side by side.
 *
 *   npm run bench:op-profile -- [--model stories110m] [--formats fp32,q8,q4] [--batches 1,32] [--threads 1]
 *
 * Model directories are the ones bench:llamacpp writes (models/bench-SHAPE[-q8|-q4]).
 */
import { Command } from 'commander';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModelDir } from '../src/models/modeldir.js';
import { benchModelDir, marginalDecode } from './decode-run.js';

const o = new Command()
  .option('--model <shape>', 'synthetic shape', 'stories110m')
  .option('--formats <list>', 'fp32, q8, q4', 'fp32,q8,q4')
  .option('--batches <list>', 'batch sizes', '1,32')
  .option('--threads <n>', 'ONNX Runtime intra-op threads', '1')
  .option('--steps <n>', 'decode steps profiled', '16')
  .parse()
  .opts<{ model: string; formats: string; batches: string; threads: string; steps: string }>();

interface ProfileEvent {
  cat?: string;
  name?: string;
  dur?: number;
  args?: { op_name?: string };
}

const out = mkdtempSync(join(tmpdir(), 'marginal-profile-'));
const table: { format: string; batch: number; total: number; byOp: Map<string, number> }[] = [];
for (const format of o.formats.split(',')) {
  const model = await loadModelDir(benchModelDir(o.model, format, (s) => process.stderr.write(s + '\n')));
  for (const batch of o.batches.split(',').map(Number)) {
    const prefix = join(out, `${format}-${batch}`);
    await marginalDecode(model, batch, { promptLen: 64, steps: Number(o.steps), threads: Number(o.threads), profilePrefix: prefix });
    const file = readdirSync(out).find((f) => f.startsWith(`${format}-${batch}`) && f.endsWith('.json'));
    if (file === undefined) throw new Error(`no profile written for ${prefix}`);
    const events = JSON.parse(readFileSync(join(out, file), 'utf8')) as ProfileEvent[];
    const byOp = new Map<string, number>();
    let total = 0;
    // Node events include the prefill run; keep the decode-shaped ones by skipping each node's first (prefill) occurrence.
    const seen = new Set<string>();
    for (const e of events) {
      if (e.cat !== 'Node' || !e.name?.endsWith('_kernel_time') || e.dur === undefined) continue;
      if (!seen.has(e.name)) {
        seen.add(e.name);
        continue;
      }
      const op = e.args?.op_name ?? '?';
      byOp.set(op, (byOp.get(op) ?? 0) + e.dur);
      total += e.dur;
    }
    table.push({ format, batch, total, byOp });
    process.stderr.write(`  ${format} b=${batch}: ${(total / 1000).toFixed(1)} ms of kernels\n`);
  }
}

const ops = [...new Set(table.flatMap((r) => [...r.byOp.entries()].filter(([, d]) => d / (r.total || 1) > 0.02).map(([op]) => op)))];
console.log(`${o.model}, ${o.threads} thread(s), share of kernel time in the decode steps\n`);
console.log(`| weights | batch | kernel ms/step | ${ops.join(' | ')} |`);
console.log(`|---|---:|---:|${ops.map(() => '---:').join('|')}|`);
const steps = Number(o.steps) + 1;
for (const r of table) {
  console.log(`| ${r.format} | ${r.batch} | ${(r.total / 1000 / steps).toFixed(2)} | ${ops.map((op) => `${((100 * (r.byOp.get(op) ?? 0)) / (r.total || 1)).toFixed(0)}%`).join(' | ')} |`);
}
