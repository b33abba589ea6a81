import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseCurveFile, type PriceCurves } from '../src/economy/curves.js';
import { Ledger } from '../src/economy/ledger.js';
import { CostModelEngine, type StepProfile } from '../src/engine/cost-model.js';
import { Rng, validateSamplingParams } from '../src/engine/sampling.js';
import { createPolicy } from '../src/scheduler/policies/index.js';
import type { RequestSpec, SchedRequest } from '../src/scheduler/request.js';
import { Scheduler, type SchedulerConfig } from '../src/scheduler/scheduler.js';
import { testProfile } from './helpers/profile.js';

const greedy = validateSamplingParams({ temperature: 0, max_tokens: 512 });
const zero = (): PriceCurves => parseCurveFile({ tokens: { kind: 'linear', p0: 0, slope: 0 }, kv: { kind: 'linear', p0: 0, slope: 0 } });

let nextId = 0;
/** A request whose length the scheduler is told, so its value density is exact. */
function req(o: { value?: number; bid?: number; prompt?: number; output: number; tenant?: string; arrival?: number; maxTokens?: number; known?: boolean }): RequestSpec {
  const id = nextId++;
  const prompt = Int32Array.from({ length: o.prompt ?? 32 }, (_, i) => 10 + ((id * 131 + i * 7) % 400));
  return {
    id: String(id),
    tenant: o.tenant ?? 't',
    arrival: o.arrival ?? 0,
    prompt,
    maxTokens: o.maxTokens ?? o.output,
    sampling: greedy,
    rng: new Rng(id),
    ...(o.known === false ? {} : { knownOutputTokens: o.output }),
    ...(o.value !== undefined ? { value: o.value } : {}),
    ...(o.bid !== undefined ? { bid: o.bid } : {}),
  };
}

function make(name: string, cfg: Partial<SchedulerConfig>, profile: StepProfile = testProfile) {
  const maxRunning = cfg.maxRunning ?? 8;
  const engine = new CostModelEngine(profile, { maxSequences: maxRunning, maxContext: 512 });
  const policy = createPolicy(name);
  const sched = new Scheduler(policy, { maxBatchTokens: 256, maxRunning, prefillChunk: 64, totalBlocks: 200, blockSize: 16, maxContext: 512, antiThrashSteps: 8, hostBlocks: engine.info.hostBlocks, swapSecondsPerToken: engine.info.swapSecondsPerToken, ...cfg });
  return { engine, sched, policy };
}

/** Steps until nothing is pending; `each` sees the scheduler after every plan. */
function run(sched: Scheduler, engine: CostModelEngine, each: (plan: ReturnType<Scheduler['plan']>) => void = () => {}, clock0 = 0): number {
  let clock = clock0;
  for (let i = 0; sched.pending > 0; i++) {
    assert.ok(i < 100_000, 'drains');
    const plan = sched.plan(clock);
    each(plan);
    const res = engine.executeSync(plan);
    const dt = plan.items.length > 0 ? res.timing.totalMs / 1000 : 0.001;
    clock += dt;
    sched.commit(res, clock, plan.items.length > 0 ? dt : 0);
    sched.blocks.check();
  }
  return clock;
}

describe('clearing prices', () => {
  test('when the batch binds, the token price is the value density of the best request it turns away; nobody sets its own price', () => {
    const { engine, sched } = make('fcfs', { maxRunning: 2, curves: zero() });
    // Two long streams take both slots; three wait with known densities value / (prompt + output).
    sched.submit(req({ value: 1, output: 200 }));
    sched.submit(req({ value: 1, output: 200 }));
    sched.commit(engine.executeSync(sched.plan(0)), 0.01, 0.01);
    const a = sched.submit(req({ value: 3, prompt: 32, output: 68 })); // 0.03 per token
    const b = sched.submit(req({ value: 1, prompt: 32, output: 68 })); // 0.01
    const c = sched.submit(req({ value: 2, prompt: 32, output: 68 })); // 0.02
    sched.commit(engine.executeSync(sched.plan(0.01)), 0.02, 0.01);
    assert.equal(sched.running.length, 2);
    const close = (x: number, y: number, what: string) => assert.ok(Math.abs(x - y) < 1e-12, `${what}: ${x} != ${y}`);
    close(sched.prices.token, 0.03, 'price in force = best excluded density');
    close(sched.tokenPriceFor(a), 0.02, 'the best excluded faces the second best (Vickrey)');
    close(sched.tokenPriceFor(b), 0.03, 'everyone else faces the best');
    close(sched.tokenPriceFor(c), 0.03, 'everyone else faces the best');
    assert.equal(sched.prices.kv, 0, 'KV does not bind: no KV clearing price');
    assert.ok(sched.counters.batchBound >= 1);
  });

  test('nothing binds on an idle server: prices sit at the reserve curve', () => {
    const curves = parseCurveFile({ tokens: { kind: 'linear', p0: 1e-5, slope: 1e-4 }, kv: { kind: 'linear', p0: 0, slope: 1e-6 } });
    const { engine, sched } = make('shadow', { maxRunning: 8, curves });
    for (let i = 0; i < 4; i++) sched.submit(req({ value: 5, output: 20 }));
    run(sched, engine, () => {
      assert.equal(sched.prices.token, sched.reserve.token);
      assert.equal(sched.prices.kv, sched.reserve.kv);
      assert.ok(sched.reserve.token >= 1e-5);
    });
    assert.equal(sched.counters.batchBound, 0);
  });

  test('when KV memory binds, its price is the best excluded request\'s value per block-second, in proportion to that value', () => {
    const kvPrice = (value: number) => {
      // 8 blocks: one running stream holds them all; the waiting request cannot get its first chunk.
      const { engine, sched } = make('fcfs', { maxRunning: 4, totalBlocks: 8, curves: zero() });
      sched.submit(req({ value: 1, prompt: 100, output: 28 }));
      sched.commit(engine.executeSync(sched.plan(0)), 0.01, 0.01);
      sched.commit(engine.executeSync(sched.plan(0.01)), 0.02, 0.01);
      sched.submit(req({ value, prompt: 64, output: 32 }));
      sched.commit(engine.executeSync(sched.plan(0.02)), 0.03, 0.01);
      assert.equal(sched.waiting, 1);
      return sched.prices.kv;
    };
    const p1 = kvPrice(1);
    const p2 = kvPrice(2);
    assert.ok(p1 > 0, 'KV binds, so it has a price');
    assert.ok(Math.abs(p2 / p1 - 2) < 1e-9, `twice the value, twice the KV price (${p1}, ${p2})`);
  });
});

describe('payment', () => {
  test('a bill charges each step\'s price in force for the tokens it computed there, and never more than the claim', () => {
    const curves = parseCurveFile({ tokens: { kind: 'power', p0: 0, scale: 1e-3, exponent: 2 }, kv: { kind: 'linear', p0: 0, slope: 0 } });
    const { engine, sched } = make('shadow', { maxRunning: 4, curves });
    const rs: SchedRequest[] = [];
    for (let i = 0; i < 12; i++) rs.push(sched.submit(req({ value: i % 3 === 0 ? 0.05 : 1, output: 30 + i, prompt: 40 })));
    // Re-derive each bill's token charges from the plans: per step, the prompt tokens it
    // computed plus the token it sampled, at that step's price in force.
    const owed = new Map<number, number>();
    const priceAt: number[] = [];
    run(sched, engine, (plan) => {
      priceAt.push(sched.prices.token);
      for (const it of plan.items) {
        const promptPart = Math.max(0, Math.min(it.offset + it.count, 40) - it.offset);
        owed.set(it.seq, (owed.get(it.seq) ?? 0) + (promptPart + (it.sample ? 1 : 0)) * sched.prices.token);
      }
    });
    let checked = 0;
    for (const r of rs) {
      if (r.outcome !== 'completed') continue;
      const bill = r.finalBill!;
      const tokens = bill.amounts.prompt + bill.amounts.completion;
      assert.ok(Math.abs(tokens - (owed.get(r.seq) ?? 0)) < 1e-12, `request ${r.seq}: billed ${tokens}, owed ${owed.get(r.seq)}`);
      assert.ok(bill.total <= (r.spec.value as number) + 1e-12, 'charged at most the claimed value');
      assert.ok(bill.total <= bill.subtotal + 1e-12);
      checked++;
    }
    assert.ok(checked >= 6);
    assert.ok(priceAt.some((p) => p > 0), 'the batch was busy enough to have a price');
    assert.ok(rs.some((r) => r.finalBill && r.finalBill.total > 0));
  });

  test('a bid pays at most bid × tokens delivered; without payment nothing is charged', () => {
    for (const payment of [true, false]) {
      const curves = parseCurveFile({ tokens: { kind: 'linear', p0: 0.02, slope: 0 }, kv: { kind: 'linear', p0: 0, slope: 0 } });
      const { engine, sched } = make('fcfs', { curves, payment });
      const r = sched.submit(req({ bid: 0.01, output: 20, prompt: 30 }));
      run(sched, engine);
      const bill = r.finalBill!;
      assert.ok(bill.subtotal > 0.02 * 20, 'the prices add up to more than the bid');
      if (payment) assert.ok(Math.abs(bill.total - 0.01 * r.generated) < 1e-12, `capped at bid × tokens: ${bill.total}`);
      else assert.equal(bill.total, 0);
      assert.equal(bill.charged, payment);
    }
  });
});

describe('value backed by money', () => {
  test('64 concurrent requests against a tiny budget never overdraw it', () => {
    const ledger = new Ledger();
    ledger.setBudget('poor', 0.01);
    const curves = parseCurveFile({ tokens: { kind: 'linear', p0: 1e-5, slope: 1e-4 }, kv: { kind: 'linear', p0: 0, slope: 1e-6 } });
    const { engine, sched } = make('shadow', { maxRunning: 16, ledger, curves });
    const rs: SchedRequest[] = [];
    for (let i = 0; i < 64; i++) rs.push(sched.submit(req({ value: 0.004, output: 40, tenant: 'poor' })));
    run(sched, engine, () => {
      const a = ledger.account('poor');
      assert.ok(a.spent + a.escrowed <= a.budget + 1e-12, `spent ${a.spent} + escrowed ${a.escrowed} > ${a.budget}`);
      assert.ok(ledger.available('poor') >= 0);
    });
    const a = ledger.account('poor');
    assert.ok(a.spent <= 0.01 + 1e-12, `spent ${a.spent}`);
    assert.equal(a.escrowed, 0);
    assert.equal(a.inFlight, 0);
    assert.ok(rs.some((r) => r.outcome === 'completed'), 'some were served');
    const turned = rs.filter((r) => r.outcome === 'rejected');
    assert.ok(turned.length > 0, 'the rest were turned away');
    for (const r of turned) assert.ok(r.quote?.reason === 'value_cap' || r.quote?.reason === 'budget_exhausted', r.quote?.reason);
    assert.ok(rs.every((r) => r.finalBill === undefined || r.finalBill.total <= r.maxCharge + 1e-12));
  });

  test('a claim is capped by what the tenant can commit and by its per-request cap', () => {
    const ledger = new Ledger({ defaultMaxValue: 10 });
    ledger.setBudget('b', 3);
    const { sched } = make('fcfs', { ledger });
    const huge = sched.submit(req({ value: 1e9, output: 10, tenant: 'anon' }));
    assert.equal(huge.maxCharge, 10);
    assert.equal(huge.capped, true);
    assert.equal(huge.valueAt(10), 10);
    const first = sched.submit(req({ value: 2, output: 10, tenant: 'b' }));
    const second = sched.submit(req({ value: 2, output: 10, tenant: 'b' }));
    assert.equal(first.maxCharge, 2);
    assert.equal(second.maxCharge, 1, 'only 1 of the budget is left to back it');
    assert.equal(ledger.available('b'), 0);
    const third = sched.submit(req({ value: 2, output: 10, tenant: 'b' }));
    assert.equal(third.outcome, 'rejected');
    assert.equal(third.quote?.reason, 'value_cap');
    assert.equal(third.quote?.retryable, true, 'money in flight will come back');
  });
});

describe('KV retention', () => {
  test('keep-value eviction takes the block least worth keeping, where LRU takes the oldest released', () => {
    const victimOf = (name: string): number => {
      const { sched, policy } = make(name, { totalBlocks: 2 });
      const b = sched.blocks;
      const ev = policy.eviction;
      const tokens = Int32Array.from({ length: 32 }, (_, i) => 5 + i);
      const hot: number[] = [];
      b.allocate(1, 0, ev, hot);
      b.register(hot[0] as number, 111, 0, tokens, 0);
      b.release(hot, 0);
      // Reused five times, last at t = 5: hot, but released before the cold one.
      for (let t = 1; t <= 5; t++) {
        const got: number[] = [];
        b.acquireCached([111], 1, t, got);
        b.release(got, t);
      }
      const cold: number[] = [];
      b.allocate(1, 90, ev, cold);
      b.register(cold[0] as number, 222, 0, tokens, 16);
      const coldId = cold[0] as number;
      b.release(cold, 90);
      const fresh: number[] = [];
      // Pool full of cached blocks: allocating one must evict.
      b.allocate(1, 100, ev, fresh);
      return fresh[0] === coldId ? 222 : 111;
    };
    assert.equal(victimOf('fcfs'), 111, 'LRU evicts the hot block released first');
    assert.equal(victimOf('shadow'), 222, 'keep-value evicts the cold block');
  });

  test('cached blocks stay while free blocks remain, unless the reserve rent exceeds their keep-value', () => {
    const cachedAfter = (curves?: PriceCurves): number => {
      const cfg: Partial<SchedulerConfig> = { totalBlocks: 400, maxRunning: 4 };
      if (curves) cfg.curves = curves;
      const { engine, sched } = make('shadow', cfg);
      for (let i = 0; i < 4; i++) sched.submit(req({ value: 1, prompt: 64, output: 8 }));
      let clock = run(sched, engine);
      // Idle steps past the next sweep (every 16 steps).
      for (let i = 0; i < 40; i++) {
        sched.commit(engine.executeSync(sched.plan(clock)), clock + 0.01, 0);
        clock += 0.01;
      }
      assert.ok(sched.blocks.freeBlocks > 0);
      return sched.blocks.cachedBlocks;
    };
    assert.ok(cachedAfter() >= 16, 'default curves: the prompts\' full blocks stay cached');
    const dear = parseCurveFile({ kv: { kind: 'linear', p0: 1, slope: 0 } });
    assert.equal(cachedAfter(dear), 0, 'memory priced at 1 per block-second: keep-values cannot cover the rent');
  });
});

describe('preemption', () => {
  test('shadow preempts no more than fcfs on the same memory-bound workload (hysteresis)', () => {
    const preemptions = (policy: string) => {
      const { engine, sched } = make(policy, { totalBlocks: 60, maxRunning: 8 });
      for (let i = 0; i < 40; i++) sched.submit(req({ value: 1 + (i % 5), prompt: 48, output: 60 + (i % 7) * 10, known: false, maxTokens: 200 }));
      run(sched, engine);
      return sched.counters.preemptions;
    };
    const f = preemptions('fcfs');
    const s = preemptions('shadow');
    assert.ok(f > 0, 'the workload is memory-bound');
    assert.ok(s <= f, `shadow ${s} preemptions, fcfs ${f}`);
  });

  test('makeRoomFor: a far more valuable request displaces a cheap stream; a similar one does not', () => {
    // The cheap stream holds 7 of 8 blocks for ~100 more steps; the newcomer's TTFT SLO cannot wait that long.
    const displaced = (value: number, sloMs?: number) => {
      const { engine, sched } = make('shadow', { totalBlocks: 8, maxRunning: 8, antiThrashSteps: 0 });
      const cheap = sched.submit(req({ value: 0.01, prompt: 100, output: 100 }));
      for (let i = 0; i < 6; i++) sched.commit(engine.executeSync(sched.plan(i * 0.01)), (i + 1) * 0.01, 0.01);
      assert.equal(cheap.state, 'running');
      const spec = req({ value, prompt: 40, output: 10, arrival: 0.06 });
      if (sloMs !== undefined) spec.slo = { ttftMs: sloMs };
      sched.submit(spec);
      sched.commit(engine.executeSync(sched.plan(0.06)), 0.07, 0.01);
      return cheap.preemptions;
    };
    assert.equal(displaced(50, 150), 1, 'worth 5000× more and unable to wait: the cheap stream yields');
    assert.equal(displaced(0.011, 150), 0, 'worth about the same: no preemption');
    assert.equal(displaced(50), 0, 'no SLO: waiting costs it nothing, so nobody is preempted');
  });

  test('the preemption loss prices what will happen: a swap costs its transfer time, a recompute its tokens', () => {
    const swapProfile = { ...testProfile, swapMsPerToken: 1e-4 };
    for (const swap of [true, false]) {
      const { engine, sched } = make('shadow', { swap, curves: parseCurveFile({ tokens: { kind: 'linear', p0: 0.001, slope: 0 } }) }, swapProfile);
      const r = sched.submit(req({ value: 1, prompt: 64, output: 50 }));
      for (let i = 0; i < 4; i++) sched.commit(engine.executeSync(sched.plan(i * 0.01)), (i + 1) * 0.01, 0.01);
      const recompute = r.computed * Math.max(sched.prices.token, sched.basePrice);
      const cost = sched.preemptionCost(r);
      if (swap) assert.ok(cost < recompute / 10, `swap ${cost} vs recompute ${recompute}`);
      else assert.ok(Math.abs(cost - recompute) < 1e-12);
    }
  });
});
