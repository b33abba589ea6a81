/**
 * The reliability suite, long form: `marginal serve` (stories260K, CPU) on 127.0.0.1 under
 * hostile inputs, huge prompts, a burst, aborts, slow clients, a mixed soak and SIGTERM with
 * clients that never read. Bounded in time; prints the report, `--json FILE` writes it.
 *
 *   npm run build && npm run bench:chaos -- [--hostile 2000] [--soak 600] [--burst 500] [--json FILE]
 *
 * The short form runs in CI from test/reliability.test.ts.
 */
import { Command } from 'commander';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { importLlama2c, packageRoot } from '../src/models/importers.js';
import { formatReport, runChaos } from './chaos/run.js';

const o = new Command()
  .option('--hostile <n>', 'generated hostile requests', '2000')
  .option('--good <n>', 'good requests alongside them', '100')
  .option('--huge <n>', 'concurrent 1.5 MB prompts', '100')
  .option('--burst <n>', 'concurrent streams', '500')
  .option('--aborts <n>', 'streams abandoned mid-answer', '200')
  .option('--slow <n>', 'slow-body connections', '200')
  .option('--soak <s>', 'seconds of mixed traffic', '600')
  .option('--concurrency <n>', 'requests in flight in the hostile and soak phases', '16')
  .option('--seed <n>', 'case generator seed', '1')
  .option('--json <file>', 'write the report as JSON')
  .parse()
  .opts<Record<string, string>>();

function stories260K(): string {
  const dir = join(packageRoot(), 'models', 'bench-stories260K-chaos');
  if (existsSync(join(dir, 'marginal.json'))) return dir;
  const shared = join(packageRoot(), '..', 'shared', 'models', 'stories260K');
  if (!existsSync(shared)) throw new Error(`stories260K needs ../shared (looked in ${shared})`);
  mkdirSync(dir, { recursive: true });
  importLlama2c(join(shared, 'stories260K.bin'), join(shared, 'tok512.bin'), dir);
  return dir;
}

const report = await runChaos({
  modelDir: stories260K(),
  hostile: Number(o.hostile),
  good: Number(o.good),
  hugePrompts: Number(o.huge),
  burst: Number(o.burst),
  aborts: Number(o.aborts),
  slowClients: Number(o.slow),
  soakSeconds: Number(o.soak),
  concurrency: Number(o.concurrency),
  seed: Number(o.seed),
  unreadAtShutdown: 4,
  log: (l) => process.stderr.write(`chaos: ${l}\n`),
});
process.stdout.write(formatReport(report) + '\n');
if (o.json) writeFileSync(o.json, JSON.stringify(report, null, 2));
const ok = report.internalErrors === 0 && report.lost === 0 && report.badShape === 0 && report.kvBlocksLeaked === 0 && report.metricsOk && report.good.identical === report.good.sent && report.shutdown.exitCode === 0;
process.exitCode = ok ? 0 : 1;
