import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseCurveFile } from '../src/economy/curves.js';
import { CostModelEngine, type StepProfile } from '../src/engine/cost-model.js';
import type { Engine } from '../src/engine/types.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { Rng } from '../src/sampling/rng.js';
import { validateSamplingParams } from '../src/sampling/params.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { createPolicy, POLICIES, VtcPolicy } from '../src/scheduler/policies/index.js';
import type { RequestSpec, SchedRequest } from '../src/scheduler/request.js';
import { Scheduler, type SchedulerConfig } from '../src/scheduler/scheduler.js';
import { synthesizePrompt } from '../src/sim/simulator.js';
import { generateWorkload } from '../src/sim/workload.js';
import type { TraceRequest } from '../src/sim/trace.js';
import { importStories260K } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';
import { testProfile } from './helpers/profile.js';
import { testProviders } from './helpers/providers.js';

const profile: StepProfile = testProfile;

const greedy = validateSamplingParams({ temperature: 0, max_tokens: 512 });

/** What a scheduler takes from the engine it plans for: its pool, host blocks and copy rate. */
function pool(engine: Engine): Pick<SchedulerConfig, 'totalBlocks' | 'blockSize' | 'hostBlocks' | 'swapSecondsPerToken'> {
  const i = engine.info;
  return { totalBlocks: i.totalBlocks, blockSize: i.blockSize, hostBlocks: i.hostBlocks, swapSecondsPerToken: i.swapSecondsPerToken };
}

function spec(t: TraceRequest, index: number, overrides: Partial<RequestSpec> = {}): RequestSpec {
  return {
    id: t.id,
    tenant: t.tenant,
    arrival: t.t,
    prompt: synthesizePrompt(t, index),
    maxTokens: t.outputTokens,
    sampling: greedy,
    rng: new Rng(index),
    tag: index,
    ...(t.value !== undefined ? { value: t.value } : {}),
    ...(t.bid !== undefined ? { bid: t.bid } : {}),
    ...(t.slo ? { slo: t.slo } : {}),
    ...(t.deadlineMs !== undefined ? { deadlineMs: t.deadlineMs } : {}),
    ...(t.priority !== undefined ? { priority: t.priority } : {}),
    ...overrides,
  };
}

interface Run {
  sched: Scheduler;
  finished: SchedRequest[];
  preemptSteps: Map<number, number[]>;
  /** Per step: utilization of the batch, reserve price, price in force, requests waiting. */
  pricePoints: [number, number, number, number][];
  admissions: SchedRequest[];
  stepLog: { waitingByTenant: Map<string, number> }[];
}

/** Drives a scheduler on the cost-model engine, checking invariants after every step. */
function drive(trace: TraceRequest[], policy: string, cfg: Partial<SchedulerConfig>, o: { abortEvery?: number; curves?: SchedulerConfig['curves']; onStep?: (s: Scheduler) => void; maxRunning?: number } = {}): Run {
  const maxRunning = o.maxRunning ?? 16;
  const engine = new CostModelEngine(profile, { maxSequences: maxRunning, maxContext: 512 });
  const finished: SchedRequest[] = [];
  const config: SchedulerConfig = { maxBatchTokens: 256, maxRunning, prefillChunk: 64, totalBlocks: 200, blockSize: 16, maxContext: 512, antiThrashSteps: 8, ...cfg };
  if (o.curves) config.curves = o.curves;
  const sched = new Scheduler(createPolicy(policy), { ...pool(engine), ...config }, { onFinish: (r) => finished.push(r) });
  const preemptSteps = new Map<number, number[]>();
  const preempt = sched.preempt.bind(sched);
  sched.preempt = (r: SchedRequest) => {
    preemptSteps.set(r.seq, [...(preemptSteps.get(r.seq) ?? []), sched.step]);
    preempt(r);
  };
  const admissions: SchedRequest[] = [];
  const tryAdmit = sched.tryAdmit.bind(sched);
  sched.tryAdmit = (r: SchedRequest) => {
    const res = tryAdmit(r);
    if (res === 'admitted') admissions.push(r);
    return res;
  };
  const pricePoints: [number, number, number, number][] = [];
  let clock = 0;
  let next = 0;
  let steps = 0;
  const submitted: SchedRequest[] = [];
  while (next < trace.length || sched.pending > 0) {
    while (next < trace.length && (trace[next] as TraceRequest).t <= clock) {
      submitted.push(sched.submit(spec(trace[next] as TraceRequest, next)));
      next++;
    }
    if (o.abortEvery && steps % o.abortEvery === 0 && submitted.length > 0) {
      const victim = submitted[(steps * 7919) % submitted.length] as SchedRequest;
      sched.abort(victim.seq, clock);
    }
    const plan = sched.plan(clock);
    pricePoints.push([sched.tokenUtilization, sched.reserve.token, sched.prices.token, sched.waiting]);
    const result = engine.executeSync(plan);
    const dt = plan.items.length === 0 ? (next < trace.length ? Math.max(0, (trace[next] as TraceRequest).t - clock) || 0.001 : 0.001) : result.timing.totalMs / 1000;
    clock += dt;
    sched.commit(result, clock, plan.items.length === 0 ? 0 : dt);
    sched.blocks.check();
    o.onStep?.(sched);
    steps++;
    assert.ok(steps < 200_000, 'the scheduler drains');
  }
  assert.equal(sched.blocks.heldBlocks, 0, 'no block is held once everything finished');
  for (const r of submitted) {
    assert.ok(r.outcome === 'completed' || r.outcome === 'aborted' || (r.outcome === 'rejected' && r.quote !== undefined), `request ${r.seq} ended ${r.outcome}`);
  }
  return { sched, finished, preemptSteps, pricePoints, admissions, stepLog: [] };
}

function workload(seed: number, requests = 240, rate = 40): TraceRequest[] {
  return generateWorkload({
    seed,
    requests,
    rate,
    burstiness: 0.5,
    promptTokens: { mean: 120, sigma: 0.6 },
    outputTokens: { mean: 60, sigma: 0.6 },
    maxPromptTokens: 300,
    maxOutputTokens: 150,
    agentic: { sessions: 8, turns: 4, systemPromptTokens: 64, turnTokens: 24, thinkSeconds: 0.5 },
  });
}

describe('scheduler invariants over randomized workloads', () => {
  for (const policy of POLICIES) {
    for (const seed of [1, 2, 3]) {
      test(`${policy}, seed ${seed}: blocks conserved, nothing lost, no thrashing, prices monotone in utilization`, () => {
        const run = drive(workload(seed), policy, { totalBlocks: 120 }, { abortEvery: 97 });
        const { counters } = run.sched;
        assert.equal(counters.completed + counters.rejected + counters.aborted, 240);
        for (const [seq, steps] of run.preemptSteps) {
          for (let i = 1; i < steps.length; i++) {
            assert.ok((steps[i] as number) - (steps[i - 1] as number) > 8, `request ${seq} preempted at steps ${steps.join(', ')}`);
          }
        }
        // The reserve is the curve at this step's utilization; the price in force never falls
        // below it, and exceeds it only when demand is waiting (a constraint binds).
        const pts = [...run.pricePoints].sort((a, b) => a[0] - b[0]);
        for (let i = 1; i < pts.length; i++) assert.ok((pts[i] as number[])[1] as number >= ((pts[i - 1] as number[])[1] as number) - 1e-15, 'reserve price non-decreasing in utilization');
        for (const [u, reserve, price, waiting] of pts) {
          assert.ok(price >= reserve, `price ${price} below the reserve ${reserve} at u = ${u}`);
          if (waiting === 0) assert.equal(price, reserve, 'no clearing price without rationed demand');
        }
        if (seed === 1 && policy === 'fcfs') assert.ok(counters.preemptions > 0, 'the workload is tight enough to preempt');
      });
    }
  }
});

describe('policy behaviour', () => {
  test('fcfs admits in arrival order', () => {
    const run = drive(workload(4, 120, 200), 'fcfs', { totalBlocks: 2000 });
    const order = run.admissions.filter((r) => r.preemptions === 0 || run.admissions.indexOf(r) === run.admissions.lastIndexOf(r));
    for (let i = 1; i < order.length; i++) {
      assert.ok((order[i] as SchedRequest).spec.arrival >= (order[i - 1] as SchedRequest).spec.arrival, 'arrival order');
    }
  });

  test('priority admits by (priority, arrival)', () => {
    const trace = workload(5, 60, 10_000).map((t, i) => ({ ...t, t: 0, priority: (i * 7) % 5 }));
    const run = drive(trace, 'priority', { totalBlocks: 2000 }, { maxRunning: 2 });
    const firsts = run.admissions.slice(2);
    for (let i = 1; i < firsts.length; i++) {
      const a = firsts[i - 1] as SchedRequest;
      const b = firsts[i] as SchedRequest;
      assert.ok((a.spec.priority ?? 0) <= (b.spec.priority ?? 0), `priority ${a.spec.priority} before ${b.spec.priority}`);
    }
  });

  test('vtc keeps the service gap between backlogged tenants bounded', () => {
    // Tenant A floods (4× B's requests, all at t=0); both stay backlogged for most of the run.
    const trace: TraceRequest[] = [];
    for (let i = 0; i < 200; i++) {
      const tenant = i % 5 === 0 ? 'b' : 'a';
      trace.push({ id: String(i), t: 0, promptTokens: tenant === 'a' ? 200 : 40, outputTokens: tenant === 'a' ? 80 : 20, tenant, prefix: [], prefixBlockTokens: 16 });
    }
    let worst = 0;
    const bound = 2 * (VtcPolicy.PROMPT_WEIGHT * 200 + VtcPolicy.OUTPUT_WEIGHT * 80) + 256 * 2;
    let policyRef: VtcPolicy | undefined;
    const engine = new CostModelEngine(profile, { maxSequences: 8, maxContext: 512 });
    const vtc = new VtcPolicy();
    policyRef = vtc;
    const sched = new Scheduler(vtc, { ...pool(engine), maxBatchTokens: 256, maxRunning: 8, prefillChunk: 64, totalBlocks: 400, blockSize: 16, maxContext: 512 });
    const waiting = new Map<string, number>([['a', 0], ['b', 0]]);
    const reqs = trace.map((t, i) => {
      waiting.set(t.tenant, (waiting.get(t.tenant) as number) + 1);
      return sched.submit(spec(t, i));
    });
    let clock = 0;
    while (sched.pending > 0) {
      const plan = sched.plan(clock);
      const res = engine.executeSync(plan);
      clock += res.timing.totalMs / 1000;
      sched.commit(res, clock, res.timing.totalMs / 1000);
      const backlogged = (tenant: string) => reqs.some((r) => r.tenant === tenant && r.state === 'waiting');
      if (backlogged('a') && backlogged('b')) worst = Math.max(worst, Math.abs(policyRef.counter('a') - policyRef.counter('b')));
    }
    assert.ok(worst > 0, 'both tenants were served while backlogged');
    assert.ok(worst <= bound, `service gap ${worst} exceeds ${bound}`);
    // B sends a fifth of the requests but gets served throughout, not after A's backlog.
    const bFinish = reqs.filter((r) => r.tenant === 'b').map((r) => r.finishedAt);
    const aFinish = reqs.filter((r) => r.tenant === 'a').map((r) => r.finishedAt);
    assert.ok(Math.max(...bFinish) < Math.max(...aFinish) * 0.6, 'B is not starved behind A');
  });

  test('shadow turns away bids below the price floor at once, with a quote', () => {
    const curves = parseCurveFile({ tokens: { kind: 'linear', p0: 1e-3, slope: 1e-2 }, kv: { kind: 'linear', p0: 0, slope: 0 } });
    const trace: TraceRequest[] = [
      { id: 'cheap', t: 0, promptTokens: 100, outputTokens: 50, bid: 1e-6, tenant: 'x', prefix: [], prefixBlockTokens: 16 },
      { id: 'fair', t: 0, promptTokens: 100, outputTokens: 50, bid: 0.1, tenant: 'x', prefix: [], prefixBlockTokens: 16 },
    ];
    const run = drive(trace, 'shadow', {}, { curves });
    const cheap = run.finished.find((r) => r.spec.id === 'cheap') as SchedRequest;
    const fair = run.finished.find((r) => r.spec.id === 'fair') as SchedRequest;
    assert.equal(cheap.outcome, 'rejected');
    assert.ok(cheap.quote && cheap.quote.pricePerToken > 1e-6 && cheap.quote.minValue > 0, JSON.stringify(cheap.quote));
    assert.ok(Number.isNaN(cheap.firstTokenAt), 'never ran');
    assert.equal(fair.outcome, 'completed');
  });

  test('shadow under congestion: high-value work keeps its SLO, low-value work is turned away with quotes', () => {
    const trace: TraceRequest[] = [];
    for (let i = 0; i < 400; i++) {
      const high = i % 8 === 0;
      trace.push({ id: String(i), t: i * 0.004, promptTokens: 96, outputTokens: 48, value: high ? 5 : 0.02, slo: { ttftMs: 400 }, tenant: high ? 'gold' : 'bronze', prefix: [], prefixBlockTokens: 16 });
    }
    const met = (runPolicy: string) => {
      const run = drive(trace, runPolicy, {});
      const ok = (tenant: string) => run.finished.filter((r) => r.tenant === tenant && r.outcome === 'completed' && r.firstTokenAt - r.spec.arrival <= 0.4).length;
      return { gold: ok('gold'), bronze: ok('bronze'), rejected: run.finished.filter((r) => r.outcome === 'rejected') };
    };
    const shadow = met('shadow');
    const fcfs = met('fcfs');
    assert.ok(shadow.gold > fcfs.gold, `gold within SLO: shadow ${shadow.gold} vs fcfs ${fcfs.gold}`);
    assert.ok(shadow.gold >= 45, `shadow served ${shadow.gold}/50 gold requests within SLO`);
    assert.ok(shadow.rejected.length > 0 && shadow.rejected.every((r) => r.quote !== undefined));
    const rejectedGold = shadow.rejected.filter((r) => r.tenant === 'gold').length;
    assert.ok(rejectedGold * 10 < shadow.rejected.length, `mostly bronze rejected (${rejectedGold} gold of ${shadow.rejected.length})`);
  });
});

describe('swap', () => {
  test('where moving KV both ways is cheaper than recomputing, preemption swaps: no recompute, nothing lost', () => {
    const trace = workload(7, 200, 400);
    const swapProfile = { ...profile, swapMsPerToken: 1e-5 };
    const engine = new CostModelEngine(swapProfile, { maxSequences: 16, maxContext: 512 });
    const sched = new Scheduler(createPolicy('fcfs'), { ...pool(engine), maxBatchTokens: 256, maxRunning: 16, prefillChunk: 64, totalBlocks: 100, blockSize: 16, maxContext: 512, antiThrashSteps: 8 });
    const reqs = trace.map((t, i) => sched.submit(spec({ ...t, t: 0 }, i)));
    let clock = 0;
    while (sched.pending > 0) {
      const plan = sched.plan(clock);
      const res = engine.executeSync(plan);
      clock += Math.max(res.timing.totalMs, 0.1) / 1000;
      sched.commit(res, clock, res.timing.totalMs / 1000);
      sched.blocks.check();
    }
    assert.ok(sched.counters.swaps > 0, 'memory pressure forced swaps');
    assert.equal(sched.counters.swaps, sched.counters.preemptions);
    assert.equal(sched.counters.recomputedTokens, 0);
    assert.ok(reqs.every((r) => r.outcome === 'completed' && r.generated === r.spec.maxTokens));
  });
});

describe('budgets', () => {
  test('a tenant whose budget is spent is turned away with a budget quote; others are served', async () => {
    const { Ledger } = await import('../src/economy/ledger.js');
    const ledger = new Ledger();
    ledger.setBudget('poor', 0);
    const trace = workload(8, 40, 1000).map((t, i) => ({ ...t, tenant: i % 2 ? 'poor' : 'rich' }));
    const run = drive(trace, 'shadow', { ledger }, {});
    const poor = run.finished.filter((r) => r.tenant === 'poor');
    assert.ok(poor.length > 0 && poor.every((r) => r.outcome === 'rejected' && /budget/.test(r.quote?.reason ?? '')));
    assert.ok(run.finished.filter((r) => r.tenant === 'rich').every((r) => r.outcome === 'completed'));
    assert.ok(ledger.account('rich').spent > 0);
  });
});

describe('prefix cache', () => {
  test('a shared prefix is served from cache: fewer prompt tokens computed, hits verified and counted', () => {
    const shared = [101, 102, 103, 104, 105, 106];
    const trace: TraceRequest[] = [0, 1, 2, 3].map((i) => ({ id: String(i), t: i * 2, promptTokens: 6 * 16 + 20, outputTokens: 8, tenant: 't', prefix: shared, prefixBlockTokens: 16 }));
    for (const policy of POLICIES) {
      let computed = 0;
      const run = drive(trace, policy, {}, { onStep: () => {} });
      const byId = new Map(run.finished.map((r) => [r.spec.id, r]));
      assert.equal(byId.get('0')?.cachedTokens, 0);
      for (const id of ['1', '2', '3']) assert.equal(byId.get(id)?.cachedTokens, 96, `${policy}: request ${id} hits the 6 shared blocks`);
      void computed;
      assert.equal(run.sched.counters.cachedTokens, 3 * 96);
      assert.ok(run.sched.blocks.hitBlocks >= 18);
    }
  });

  test('blocks with equal hashes but different tokens are not hits', () => {
    const engine = new CostModelEngine(profile, { maxSequences: 4, maxContext: 512 });
    const sched = new Scheduler(createPolicy('fcfs'), { ...pool(engine), maxBatchTokens: 256, maxRunning: 4, prefillChunk: 64, totalBlocks: 64, blockSize: 16, maxContext: 512 });
    const a = Int32Array.from({ length: 40 }, (_, i) => 10 + i);
    const r1 = sched.submit({ id: 'a', tenant: 't', arrival: 0, prompt: a, maxTokens: 2, sampling: greedy, rng: new Rng(1) });
    while (sched.pending > 0) sched.commit(engine.executeSync(sched.plan(0)), 0, 0.01);
    assert.equal(r1.outcome, 'completed');
    // Same chain hash forced onto different tokens: the manager must compare tokens.
    const b = Int32Array.from(a);
    b[3] = 9999;
    const r2 = sched.submit({ id: 'b', tenant: 't', arrival: 0, prompt: b, maxTokens: 2, sampling: greedy, rng: new Rng(1) });
    r2.chain = [...r1.chain];
    while (sched.pending > 0) sched.commit(engine.executeSync(sched.plan(0)), 0, 0.01);
    assert.equal(r2.cachedTokens, 0);
  });
});

describe('the real engine under the scheduler', { skip: sharedSkipReason() }, () => {
  test('a preempted greedy request resumes and finishes with exactly its unpreempted output; a repeated prompt hits the cache', async () => {
    const model = await loadModelDir(importStories260K());
    const run = async (preemptAt: number[], swap = false) => {
      const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 2 });
      const sched = new Scheduler(createPolicy('fcfs'), { ...pool(engine), maxBatchTokens: 64, maxRunning: 2, prefillChunk: 8, maxContext: 512, stopIds: model.stopIds, swap });
      const prompt = model.tokenizer.encode('Once upon a time, there was a little dog who lived in a small house near the park. Every day he ran to the park to play with his red ball and his friend the', { bos: true });
      assert.ok(prompt.length > 33);
      const outputs: number[][] = [];
      for (let k = 0; k < 2; k++) {
        const r = sched.submit({ id: String(k), tenant: 't', arrival: 0, prompt, maxTokens: 80, sampling: greedy, rng: new Rng(k) });
        let step = 0;
        while (r.state !== 'done') {
          if (k === 0 && preemptAt.includes(step)) sched.preempt(r);
          const plan = sched.plan(step);
          const res = await engine.execute(plan);
          sched.commit(res, step + 1, 0.001);
          step++;
          assert.ok(step < 1000);
        }
        outputs.push(Array.from(r.tokens.subarray(r.promptLength, r.length)));
        if (k === 1) assert.ok(r.cachedTokens >= 32, `second run hits the prefix cache (${r.cachedTokens} tokens)`);
        if (k === 0) assert.equal(r.preemptions, preemptAt.length);
        if (k === 0) assert.equal(sched.counters.swaps, swap ? preemptAt.length : 0);
        if (k === 0 && !swap && preemptAt.length > 0) assert.ok(r.recomputed > 0, 'recompute preemption recomputes');
      }
      await engine.dispose();
      return outputs;
    };
    const [plain, repeat] = await run([]);
    const [preempted] = await run([5, 30, 60]);
    const [swapped] = await run([5, 30, 60], true);
    assert.ok((plain as number[]).length > 20);
    assert.deepEqual(preempted, plain, 'recomputed');
    assert.deepEqual(swapped, plain, 'swapped out and back in');
    assert.deepEqual(repeat, plain, 'served from the prefix cache, same tokens');
  });
});
