/**
 * Does inflating one's value pay? The default three-tenant workload on the Azure conversation
 * and Mooncake traces at twice capacity, with every tenant's budget twice what it pays when all
 * are honest and budgets are unlimited (measured first, per trace). The "standard" tenant then
 * lies: it declares 10× its values, or 1e9 for every request. Each scenario runs with clearing
 * prices that are paid, without payment (prices decide, nobody pays), and with prices at zero.
 *
 *   npm run bench:incentives -- [--limit 3000]
 *
 * Utility = true value realized − payment. The honest tenants' loss is their value realized
 * honest minus with the liar.
 */
import { Command } from 'commander';
import { join } from 'node:path';
import { parseCurveFile } from '../src/economy/curves.js';
import { loadTf } from '../src/economy/tfjs.js';
import { profileFromCli } from '../src/cli/sim.js';
import type { Summary } from '../src/sim/metrics.js';
import { simulate, type SimOptions } from '../src/sim/simulator.js';
import { readTrace } from '../src/sim/trace.js';
import { defaultWorkload, tenantBudgets, type Workload } from '../src/sim/workload.js';
import { packageRoot } from '../src/models/importers.js';

const o = new Command().option('--limit <n>', 'requests per trace', '3000').parse().opts<{ limit: string }>();

const LIAR = 'standard';
const geometry = { maxNumSeqs: 64, maxModelLen: 1024, kvBlocks: 512, maxNumBatchedTokens: 512 };
const traces = [
  { name: 'azure-conv', file: 'azure2023_AzureLLMInferenceTrace_conv.csv', lengthScale: 0.125, rateScale: 19.1599 },
  { name: 'mooncake-conv', file: 'mooncake_fast25_conversation_trace.jsonl', lengthScale: 0.03125, rateScale: 23.1647 },
];
const scenarios: { name: string; claim?: { times?: number; value?: number } }[] = [{ name: 'honest' }, { name: '×10 liar', claim: { times: 10 } }, { name: '1e9 liar', claim: { value: 1e9 } }];
const regimes: { name: string; opts: Partial<SimOptions>; flags: string }[] = [
  { name: 'paid prices', opts: {}, flags: '' },
  { name: 'no payment', opts: { payment: false }, flags: '--no-payment' },
  { name: 'prices 0', opts: { clearing: false, curves: parseCurveFile({ tokens: { kind: 'linear', p0: 0, slope: 0 }, kv: { kind: 'linear', p0: 0, slope: 0 } }) }, flags: '--no-clearing --curve ZERO' },
];

function workload(budgets: Record<string, number> | undefined, claim?: { times?: number; value?: number }): Workload {
  const w = defaultWorkload();
  w.tenants = w.tenants.map((t) => ({ ...t, ...(budgets ? { budget: budgets[t.name] as number } : {}), ...(t.name === LIAR && claim ? { claim: claim.times !== undefined ? { times: claim.times } : { value: claim.value as number } } : {}) }));
  return w;
}

const profile = await profileFromCli(undefined);
await loadTf();
const f = (x: number) => x.toFixed(1);
for (const t of traces) {
  const path = join(packageRoot(), '..', 'shared', 'traces', t.file);
  const runs = new Map<string, Summary>();
  const read = (w: Workload) => readTrace(path, { workload: w, lengthScale: t.lengthScale, maxPromptTokens: 768, maxOutputTokens: 192, limit: Number(o.limit), rateScale: t.rateScale });
  // Budgets: twice each tenant's honest spend with no budget at all, rounded up to 10.
  const free = simulate(await read(workload(undefined)), { policy: 'shadow', profile, geometry, lengthModel: 'learned' }).summary;
  const BUDGETS = Object.fromEntries(Object.entries(free.tenants).map(([name, x]) => [name, Math.ceil((2 * x.paid) / 10) * 10 || 10]));
  for (const s of scenarios) {
    const w = workload(BUDGETS, s.claim);
    const trace = await read(w);
    for (const r of regimes) runs.set(`${s.name}|${r.name}`, simulate(trace, { policy: 'shadow', profile, geometry, lengthModel: 'learned', budgets: tenantBudgets(w), ...r.opts }).summary);
  }
  console.log(`\n### ${t.name} at 2× capacity (rate scale ${t.rateScale}), shadow\n`);
  console.log(`| regime | scenario | liar's utility | liar paid | liar's value | honest tenants' value | honest tenants' loss | honest tenants' utility | welfare |`);
  console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of regimes) {
    const honest = runs.get(`honest|${r.name}`) as Summary;
    const others = (s: Summary) => Object.entries(s.tenants).filter(([n]) => n !== LIAR);
    const othersValue = (s: Summary) => others(s).reduce((a, [, x]) => a + x.value_realized, 0);
    const othersUtility = (s: Summary) => others(s).reduce((a, [, x]) => a + x.utility, 0);
    for (const s of scenarios) {
      const run = runs.get(`${s.name}|${r.name}`) as Summary;
      const liar = run.tenants[LIAR] as { utility: number; paid: number; value_realized: number };
      console.log(
        `| ${r.name} | ${s.name === 'honest' ? `honest (the ${LIAR} tenant)` : s.name} | ${f(liar.utility)} | ${f(liar.paid)} | ${f(liar.value_realized)} | ${f(othersValue(run))} | ${f(othersValue(honest) - othersValue(run))} | ${f(othersUtility(run))} | ${f(run.welfare)} |`,
      );
    }
  }
  console.log(`\nRegimes: ${regimes.map((r) => `${r.name}${r.flags ? ` (\`${r.flags}\`)` : ''}`).join(', ')}; budgets ${JSON.stringify(BUDGETS)}; the liar is the ${LIAR} tenant.`);
}
