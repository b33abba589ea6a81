/**
 * plan() cost at scale: 256 running decode streams and 1,000 waiting requests, per policy.
 * The target is ≤ 50 µs per plan() (the scheduler must never be the step's bottleneck).
 *
 *   npm run bench:plan -- [--steps 2000]
 */
import { Command } from 'commander';
import { performance } from 'node:perf_hooks';
import { CostModelEngine, type StepProfile } from '../src/engine/cost-model.js';
import { Rng, validateSamplingParams } from '../src/engine/sampling.js';
import { createPolicy, POLICIES } from '../src/scheduler/policies/index.js';
import { Scheduler } from '../src/scheduler/scheduler.js';

const o = new Command().option('--steps <n>', 'measured steps per policy', '2000').option('--running <n>', 'running streams', '256').option('--waiting <n>', 'waiting requests', '1000').parse().opts<{ steps: string; running: string; waiting: string }>();
const running = Number(o.running);
const waiting = Number(o.waiting);
const steps = Number(o.steps);
const profile: StepProfile = { model: 'bench', machine: 'bench', flavour: 'fast', baseMs: 2, perTokenMs: 0.05, perContextMs: 0.5, perSequenceMs: 0.1, perRunMs: 1, maxSequences: running, maxContext: 8192, blockSize: 16 };
const sampling = validateSamplingParams({ temperature: 0, max_tokens: 4000 });

console.log(`plan() with ${running} running decode streams and ${waiting} waiting requests, ${steps} steps each\n`);
console.log('| scenario (running/waiting) | policy | plan p50 µs | plan p99 µs | plan mean µs | commit mean µs |');
console.log('|---|---|---:|---:|---:|---:|');
// Every slot decodes and the queue holds the rest: the steady state of an overloaded server.
for (const scenario of ['slots full'] as const)
for (const name of POLICIES) {
  const slots = running;
  const blocks = running * 512;
  const engine = new CostModelEngine(profile, { maxSequences: slots, maxContext: 8192 });
  const sched = new Scheduler(createPolicy(name), { maxBatchTokens: 512, maxRunning: slots, prefillChunk: 512, totalBlocks: blocks, blockSize: 16, maxContext: 8192 });
  const rng = new Rng(1);
  for (let i = 0; i < running + waiting; i++) {
    const prompt = Int32Array.from({ length: 64 }, (_, k) => 3 + ((i * 131 + k * 7) % 30000));
    sched.submit({ id: String(i), tenant: `t${i % 4}`, arrival: i * 1e-6, prompt, maxTokens: 4000, value: 1 + (i % 7), slo: { ttftMs: 1e9, tpotMs: 1e9 }, sampling, rng });
  }
  let clock = 1;
  // Warm up until every slot runs a decoding stream.
  for (let k = 0; k < 400; k++) {
    const r = engine.executeSync(sched.plan(clock));
    clock += 0.01;
    sched.commit(r, clock, 0.01);
  }
  if (scenario === 'slots full' && (sched.running.length !== running || sched.waiting !== waiting)) throw new Error(`setup: ${sched.running.length} running, ${sched.waiting} waiting`);
  const shape = `${sched.running.length}/${sched.waiting}`;
  const planUs: number[] = [];
  let commitUs = 0;
  for (let k = 0; k < steps; k++) {
    const t0 = performance.now();
    const plan = sched.plan(clock);
    const t1 = performance.now();
    const r = engine.executeSync(plan);
    clock += 0.01;
    const t2 = performance.now();
    sched.commit(r, clock, 0.01);
    commitUs += (performance.now() - t2) * 1000;
    planUs.push((t1 - t0) * 1000);
  }
  planUs.sort((a, b) => a - b);
  const q = (p: number) => (planUs[Math.floor(p * (planUs.length - 1))] as number).toFixed(1);
  console.log(`| ${scenario} (${shape}) | ${name} | ${q(0.5)} | ${q(0.99)} | ${(planUs.reduce((a, b) => a + b, 0) / planUs.length).toFixed(1)} | ${(commitUs / steps).toFixed(1)} |`);
}
