import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { Summary } from '../src/sim/metrics.js';
import { simulate, type SimOptions } from '../src/sim/simulator.js';
import { readTrace } from '../src/sim/trace.js';
import { defaultWorkload, tenantBudgets, type Workload } from '../src/sim/workload.js';
import { profileFromCli } from '../src/cli/sim.js';
import { sharedDir, sharedSkipReason } from './helpers/shared.js';

/**
 * Prices are paid, so a claim of value is backed by money: inflating one's value does not pay,
 * and what a liar can take from the honest is bounded by its budget — far less with payment
 * than without (DESIGN.md §1; issue 9). Replays the Azure conversation trace at twice capacity
 * on the calibrated cost model, the setting of BENCHMARKS.md's policy table.
 */

const geometry = { maxRunning: 64, maxContext: 1024, totalBlocks: 512, maxBatchTokens: 512 };
const LIAR = 'standard';

function workload(claim?: { times?: number; value?: number }): Workload {
  const w = defaultWorkload();
  // About twice what each tenant pays when everyone is honest (its own economics cap it).
  const budgets: Record<string, number> = { interactive: 1000, standard: 300, batch: 50 };
  w.tenants = w.tenants.map((t) => ({ ...t, budget: budgets[t.name] as number, ...(t.name === LIAR && claim ? { claim: claim.times !== undefined ? { times: claim.times } : { value: claim.value as number } } : {}) }));
  return w;
}

async function replay(w: Workload, payment: boolean): Promise<Summary> {
  const trace = await readTrace(join(sharedDir, 'traces', 'azure2023_AzureLLMInferenceTrace_conv.csv'), {
    workload: w,
    lengthScale: 0.125,
    maxPromptTokens: 768,
    maxOutputTokens: 192,
    limit: 3000,
    rateScale: 19.1599,
  });
  const opts: SimOptions = { policy: 'shadow', profile: await profileFromCli(undefined), ...geometry, payment, budgets: tenantBudgets(w) };
  return simulate(trace, opts).summary;
}

const othersValue = (s: Summary) => Object.entries(s.tenants).reduce((sum, [name, t]) => sum + (name === LIAR ? 0 : t.value_realized), 0);

describe('incentives: inflating one\'s value does not pay', { skip: sharedSkipReason() }, () => {
  test('with payment, a ×10 liar and a 1e9 liar end with no more utility than honest; without payment the ×10 liar gains and the honest lose far more', async () => {
    const honest = await replay(workload(), true);
    const liar10 = await replay(workload({ times: 10 }), true);
    const liar1e9 = await replay(workload({ value: 1e9 }), true);
    const honestFree = await replay(workload(), false);
    const liar10Free = await replay(workload({ times: 10 }), false);
    const u = (s: Summary) => (s.tenants[LIAR] as { utility: number }).utility;

    assert.ok(u(liar10) <= u(honest), `×10 liar utility ${u(liar10)} > honest ${u(honest)}`);
    assert.ok(u(liar1e9) <= u(honest), `1e9 liar utility ${u(liar1e9)} > honest ${u(honest)}`);
    // Without payment the lie pays: the damage that prices prevent.
    assert.ok(u(liar10Free) > u(honestFree), `without payment the liar gains (${u(liar10Free)} vs ${u(honestFree)})`);
    const lossWith = othersValue(honest) - othersValue(liar10);
    const lossWithout = othersValue(honestFree) - othersValue(liar10Free);
    assert.ok(lossWithout > 0, 'the liar displaces honest work when it pays nothing');
    assert.ok(lossWith < lossWithout / 2, `the honest lose ${lossWith} with payment, ${lossWithout} without`);
    assert.ok(lossWith <= 300, 'bounded by the liar\'s budget');
    // The liar never spends more than its budget.
    assert.ok((liar1e9.tenants[LIAR] as { paid: number }).paid <= 300 + 1e-9);
    assert.ok((liar10.tenants[LIAR] as { paid: number }).paid <= 300 + 1e-9);
    assert.equal(honest.lost + liar10.lost + liar1e9.lost, 0);
  });
});
