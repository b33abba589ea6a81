import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { fitProfile, predictSampleMs, predictStepMs, scaleProfile, stepShape, type StepProfile } from '../src/engine/cost-model.js';
import { meetsSlo, percentile, realizedValue, tpotMs } from '../src/sim/metrics.js';
import { simulate } from '../src/sim/simulator.js';
import { answerQuote } from '../src/sim/client.js';
import type { Quote } from '../src/scheduler/request.js';
import { writeTrace, type TraceRequest } from '../src/sim/trace.js';
import { generateWorkload } from '../src/sim/workload.js';
import { tempDir } from './helpers/models.js';
import { sharedDir, sharedSkipReason } from './helpers/shared.js';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

const SUMMARY_FIELDS = ['policy', 'requests', 'completed', 'rejected', 'preempted', 'lost', 'welfare', 'value_realized', 'goodput_rps', 'throughput_tok_s', 'ttft_p50_ms', 'ttft_p99_ms', 'tpot_p50_ms', 'tpot_p99_ms', 'cache_hit_rate'];
const OUTCOME_FIELDS = ['id', 'tenant', 'outcome', 'ttft_ms', 'tpot_ms', 'e2e_ms', 'prompt_tokens', 'cached_tokens', 'output_tokens', 'preemptions', 'value', 'bill'];

describe('cost model', () => {
  test('the fit recovers the coefficients of a known step-time model', () => {
    const truth = { baseMs: 1.5, perTokenMs: 0.06, perContextMs: 0.4, perSequenceMs: 0.12, perRunMs: 1.8 };
    const p = { ...truth, model: 'x', machine: 'x', flavour: 'fast', maxSequences: 64, maxContext: 1024, blockSize: 16 } as StepProfile;
    const samples = [];
    for (const tokens of [1, 8, 32, 64, 128, 256]) {
      for (const seqs of [1, 4, 16, 32]) {
        for (const runs of [1, 2, 3]) {
          const shape = { tokens: Math.max(tokens, seqs), contextTokens: seqs * 200 + tokens * 3, sequences: seqs, runs };
          samples.push({ shape, ms: predictStepMs(p, shape) });
        }
      }
    }
    const fit = fitProfile(samples);
    for (const [k, v] of Object.entries(truth)) assert.ok(Math.abs((fit as Record<string, number>)[k] as number - v) < 1e-6, `${k}: ${(fit as Record<string, number>)[k]} vs ${v}`);
    assert.ok((fit.r2 ?? 0) > 0.999999);
    assert.equal(fit.perArrivalMs, undefined, 'steps measured without requests around them fit no per-request terms');
  });

  test("served steps' periods also fit what each arriving and each ending request costs the serving loop", () => {
    const truth = { baseMs: 4, perTokenMs: 0.2, perContextMs: 3, perSequenceMs: 0.7, perRunMs: 5, perArrivalMs: 2.5, perFinishMs: 1.25 };
    const p = { ...truth, model: 'x', machine: 'x', flavour: 'fast', maxSequences: 64, maxContext: 1024, blockSize: 16 } as StepProfile;
    const samples = [];
    for (let i = 0; i < 200; i++) {
      const seqs = 1 + ((i * 7) % 32);
      const shape = { tokens: seqs + (Math.floor(i / 7) % 4) * 64, contextTokens: seqs * (50 + ((i * 31) % 150)), sequences: seqs, runs: 1 + (i % 3) };
      const x = { shape, ms: 0, arrivals: (i * 5) % 4, finished: (i * 3) % 5 === 0 ? 2 : 0 };
      samples.push({ ...x, ms: predictSampleMs(p, x) });
    }
    const fit = fitProfile(samples);
    for (const [k, v] of Object.entries(truth)) assert.ok(Math.abs((fit as Record<string, number>)[k] as number - v) < 1e-6, `${k}: ${(fit as Record<string, number>)[k]} vs ${v}`);
  });

  test('a scaled profile is a uniformly slower (or faster) machine', () => {
    const p: StepProfile = { model: 'x', machine: 'x', flavour: 'fast', baseMs: 2, perTokenMs: 0.1, perContextMs: 1, perSequenceMs: 0.5, perRunMs: 3, perArrivalMs: 1, perFinishMs: 2, maxSequences: 8, maxContext: 256, blockSize: 16 };
    const x = { shape: { tokens: 40, contextTokens: 900, sequences: 8, runs: 2 }, ms: 0, arrivals: 3, finished: 1 };
    assert.ok(Math.abs(predictSampleMs(scaleProfile(p, 1.5), x) - 1.5 * predictSampleMs(p, x)) < 1e-9);
    assert.equal(scaleProfile(p, 2).blockSize, 16);
    assert.throws(() => scaleProfile(p, 0), /positive/);
  });
});

describe('step shapes', () => {
  test('attention reads, per run, the longest past in whole blocks plus the new tokens', () => {
    const item = (offset: number, count: number) => ({ seq: 0, tokens: [], offset, count, sample: true, blocks: [] });
    // Decodes at 10, 40 and 17 positions: one run of 3 rows over ⌈40/16⌉ = 3 blocks.
    // Prefill chunks of 8 at 0 and 20: one run of 2 rows over 2 blocks; a chunk of 5 at 0: one row, one (empty) block.
    const shape = stepShape([item(10, 1), item(0, 8), item(40, 1), item(20, 8), item(17, 1), item(0, 5)], 16, { tokens: 0, contextTokens: 0, sequences: 0, runs: 0 });
    assert.deepEqual(shape, { tokens: 24, contextTokens: 3 * (48 + 1) + 2 * (32 + 8) + 1 * (16 + 5), sequences: 6, runs: 3 });
  });
});

describe('metrics (DESIGN.md §5 definitions)', () => {
  test('TPOT, SLO judgement and realized value on hand-made outcomes', () => {
    assert.equal(tpotMs(1000, 100, 10), 100);
    assert.equal(tpotMs(1000, 100, 1), null);
    const e = { arrival: 0, value: 2, slo: { ttftMs: 200, tpotMs: 50 }, deadlineMs: 3000 };
    assert.equal(meetsSlo(e, { outcome: 'completed', ttft_ms: 150, tpot_ms: 40, e2e_ms: 2000 }), true);
    assert.equal(meetsSlo(e, { outcome: 'completed', ttft_ms: 250, tpot_ms: 40, e2e_ms: 2000 }), false);
    assert.equal(meetsSlo(e, { outcome: 'completed', ttft_ms: 150, tpot_ms: 60, e2e_ms: 2000 }), false);
    assert.equal(meetsSlo(e, { outcome: 'completed', ttft_ms: 150, tpot_ms: 40, e2e_ms: 3500 }), false);
    assert.equal(meetsSlo(e, { outcome: 'rejected', ttft_ms: null, tpot_ms: null, e2e_ms: null }), false);
    assert.equal(realizedValue(e, true, 10), 2);
    assert.equal(realizedValue({ arrival: 0, bid: 0.01 }, true, 50), 0.5);
    assert.equal(realizedValue(e, false, 10), 0);
    assert.equal(percentile([5, 1, 3, 2, 4], 50), 3);
    assert.equal(percentile([5, 1, 3, 2, 4], 99), 5);
    assert.equal(percentile([], 50), null);
  });
});

describe('simulator', () => {
  const profile: StepProfile = { model: 't', machine: 't', flavour: 'fast', baseMs: 2, perTokenMs: 0.05, perContextMs: 0.5, perSequenceMs: 0.1, perRunMs: 1, maxSequences: 16, maxContext: 512, blockSize: 16 };
  test('is deterministic and loses nothing', () => {
    const trace = generateWorkload({ seed: 3, requests: 300, rate: 60, promptTokens: { mean: 100, sigma: 0.5 }, outputTokens: { mean: 40, sigma: 0.5 }, maxPromptTokens: 300, maxOutputTokens: 100 });
    for (const policy of ['shadow', 'fcfs', 'priority', 'vtc']) {
      const a = simulate(trace, { policy, profile });
      const b = simulate(trace, { policy, profile });
      assert.deepEqual(a.summary, b.summary);
      assert.equal(a.summary.lost, 0);
      assert.equal(a.outcomes.length, 300);
      assert.deepEqual(a.outcomes.map((o) => o.id), trace.map((t) => t.id));
    }
  });

  test('marginal sim --json prints the contract summary; --requests-out one line per request in trace order', () => {
    const dir = tempDir('sim');
    const tracePath = join(dir, 'trace.jsonl');
    const trace: TraceRequest[] = generateWorkload({ seed: 5, requests: 120, rate: 30, promptTokens: { mean: 80, sigma: 0.4 }, outputTokens: { mean: 30, sigma: 0.4 }, maxPromptTokens: 200, maxOutputTokens: 60 });
    return writeTrace(tracePath, trace).then(() => {
      const out = join(dir, 'requests.jsonl');
      const r = run('sim', '--trace', tracePath, '--policy', 'shadow', '--json', '--requests-out', out);
      assert.equal(r.status, 0, r.stderr);
      const summary = JSON.parse(r.stdout) as Record<string, unknown>;
      for (const f of SUMMARY_FIELDS) assert.ok(f in summary, `summary has ${f}`);
      assert.equal(summary.lost, 0);
      assert.equal(summary.requests, 120);
      const lines = readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.equal(lines.length, 120);
      assert.deepEqual(lines.map((l) => l.id), trace.map((t) => t.id));
      for (const f of OUTCOME_FIELDS) assert.ok(f in (lines[0] as object), `outcome has ${f}`);
    });
  });

  test('bad input: exit 2 with a clear message', () => {
    const dir = tempDir('simbad');
    const bad = join(dir, 'bad.jsonl');
    writeFileSync(bad, '{"t": 0, "prompt_tokens": 10, "output_tokens": 5}\n{"t": 1, "prompt_tokens": -3, "output_tokens": 5}\n');
    const cases: [string[], RegExp][] = [
      [['sim', '--trace', bad], /line 2: prompt_tokens/],
      [['sim', '--trace', join(dir, 'missing.jsonl')], /missing\.jsonl/],
      [['sim', '--trace', bad, '--policy', 'lottery'], /unknown policy "lottery"/],
      [['sim', '--trace', bad, '--curve', join(dir, 'nope.json')], /nope\.json/],
      [['sim', '--trace', bad, '--profile', join(dir, 'nope.json')], /nope\.json/],
    ];
    for (const [args, message] of cases) {
      const r = run(...args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
    }
  });
});

describe('simulator on the public traces', { skip: sharedSkipReason() }, () => {
  test('Mooncake replay: prefix sharing shows up as cache hits, nothing lost', () => {
    const r = run('sim', '--trace', join(sharedDir, 'traces', 'mooncake_fast25_conversation_trace.jsonl'), '--length-scale', '0.03125', '--max-prompt-tokens', '768', '--max-output-tokens', '192', '--limit', '400', '--max-context', '1024', '--json');
    assert.equal(r.status, 0, r.stderr);
    const s = JSON.parse(r.stdout) as { lost: number; cache_hit_rate: number; completed: number; rejected: number };
    assert.equal(s.lost, 0);
    assert.equal(s.completed + s.rejected, 400);
    assert.ok(s.cache_hit_rate > 0.02, `cache hit rate ${s.cache_hit_rate}`);
  });
});

describe('clients that answer to prices', () => {
  const profile: StepProfile = { model: 't', machine: 't', flavour: 'fast', baseMs: 2, perTokenMs: 0.05, perContextMs: 0.5, perSequenceMs: 0.1, perRunMs: 1, maxSequences: 8, maxContext: 512, blockSize: 16 };
  // A burst far beyond capacity: requests whose TTFT SLO cannot survive the queue are turned away.
  const burst = (client?: TraceRequest['client']): TraceRequest[] =>
    Array.from({ length: 120 }, (_, i) => ({
      id: String(i),
      t: i * 0.002,
      promptTokens: 64,
      outputTokens: 32,
      value: 1,
      slo: { ttftMs: 400 },
      tenant: 't',
      prefix: [],
      prefixBlockTokens: 16,
      ...(client ? { client } : {}),
    }));

  test('retrying after the quoted wait serves requests a one-shot client loses; nobody retries a quote that says it cannot clear', () => {
    const once = simulate(burst(), { policy: 'shadow', profile, geometry: { maxNumSeqs: 8, kvBlocks: 256 } });
    const patient = simulate(burst({ mode: 'retry', retries: 5 }), { policy: 'shadow', profile, geometry: { maxNumSeqs: 8, kvBlocks: 256 } });
    assert.ok(once.summary.rejected > 0, 'the burst overloads the server');
    assert.ok(patient.summary.slo_met > once.summary.slo_met, `${patient.summary.slo_met} vs ${once.summary.slo_met} requests met their SLO`);
    assert.ok(patient.summary.attempts > patient.summary.requests, 'some requests came back');
    assert.equal(patient.summary.lost, 0);
    for (const o of patient.outcomes) {
      // Giving up is right only when out of retries, or the quote says waiting cannot help, or is too dear or too long.
      if (o.outcome === 'rejected') assert.ok(o.attempts === 6 || o.quote?.retryable === false || (o.quote?.minValue ?? 0) > 1 || (o.quote?.expectedWaitMs ?? 0) > 60_000, `request ${o.id} gave up early: ${JSON.stringify(o.quote)} after ${o.attempts}`);
    }
    // A quote that says waiting cannot help is taken at its word.
    const hopeless = simulate(burst({ mode: 'retry', retries: 5 }).map((r) => ({ ...r, slo: { ttftMs: 0.001 } })), { policy: 'shadow', profile, geometry: { maxNumSeqs: 8, kvBlocks: 256 } });
    assert.equal(hopeless.summary.attempts, hopeless.summary.requests);
  });

  test('the client rule: retry while the quote can clear and is worth it; an agent asks for less; give up otherwise', () => {
    const q = (o: Partial<Quote>): Quote => ({ reason: 'price_above_bid', message: '', pricePerToken: 0.01, pricePerKvBlockSecond: 0, minValue: 0.5, valueCounted: 1, retryable: true, expectedWaitMs: 2000, ...o });
    const retry = { mode: 'retry' as const, retries: 2 };
    const agent = { mode: 'agent' as const, retries: 2 };
    assert.deepEqual(answerQuote(retry, q({}), 1, 100, 1), { afterSeconds: 2, maxTokens: 100 });
    assert.equal(answerQuote(retry, q({}), 3, 100, 1), undefined, 'out of retries');
    assert.equal(answerQuote(retry, q({ retryable: false, expectedWaitMs: null }), 1, 100, 1), undefined, 'the server says waiting cannot help');
    assert.equal(answerQuote(retry, q({ expectedWaitMs: 90_000 }), 1, 100, 1), undefined, 'longer than it will wait');
    assert.equal(answerQuote(retry, q({}), 1, 100, 1, 1500), undefined, 'past its deadline by then');
    assert.equal(answerQuote(retry, q({ minValue: 2 }), 1, 100, 1), undefined, 'too dear for a plain client');
    assert.deepEqual(answerQuote(agent, q({ minValue: 2 }), 1, 100, 1), { afterSeconds: 2, maxTokens: 45 }, 'an agent asks for 90% of what it can afford');
    assert.equal(answerQuote(agent, q({ minValue: Infinity }), 1, 100, 1), undefined);
    assert.equal(answerQuote(undefined, q({}), 1, 100, 1), undefined, 'no behaviour: gives up');
    assert.equal(realizedValue({ arrival: 0, value: 1, outputTokens: 200 }, true, 100), 0.5, 'half the answer is half the value');
  });
});

describe('the serving loop per request, in simulation', () => {
  test("each arrival and each finish takes the profile's time on the clock between steps", () => {
    // Two requests at once, one sequence at a time: B waits for A, and for A's response.
    const trace: TraceRequest[] = ['a', 'b'].map((id) => ({ id, t: 0, promptTokens: 10, outputTokens: 4, tenant: 'default', prefix: [], prefixBlockTokens: 16 }));
    const base: StepProfile = { model: 'x', machine: 'x', flavour: 'fast', baseMs: 10, perTokenMs: 0, perContextMs: 0, perSequenceMs: 0, perRunMs: 0, maxSequences: 1, maxContext: 256, blockSize: 16 };
    const at = (p: StepProfile) => simulate(trace, { policy: 'fcfs', profile: p, geometry: { maxNumSeqs: 1 } }).outcomes;
    const plain = at(base);
    const served = at({ ...base, perArrivalMs: 3, perFinishMs: 7 });
    const delta = (i: number, k: 'ttft_ms' | 'e2e_ms') => (served[i]?.[k] ?? NaN) - (plain[i]?.[k] ?? NaN);
    // Both arrivals are handled before the first plan; A's response before B's first step.
    assert.ok(Math.abs(delta(0, 'ttft_ms') - 2 * 3) < 1e-9, `A's TTFT: +${delta(0, 'ttft_ms')} ms`);
    assert.ok(Math.abs(delta(0, 'e2e_ms') - 2 * 3) < 1e-9, "A's steps are not slowed once it runs");
    assert.ok(Math.abs(delta(1, 'ttft_ms') - (2 * 3 + 7)) < 1e-9, `B's TTFT: +${delta(1, 'ttft_ms')} ms`);
    assert.equal(served[1]?.output_tokens, 4);
  });
});
