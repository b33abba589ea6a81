import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { Ledger } from '../src/economy/ledger.js';
import { KvOp, type StepPlan, type StepResult } from '../src/engine/types.js';
import { loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { Rng } from '../src/sampling/rng.js';
import { validateSamplingParams } from '../src/sampling/params.js';
import { createPolicy } from '../src/scheduler/policies/index.js';
import type { RequestSpec, SchedRequest } from '../src/scheduler/request.js';
import { Scheduler } from '../src/scheduler/scheduler.js';
import { importStories260K } from './helpers/models.js';
import { postJson, startLive, type Live } from './helpers/live.js';
import { sharedSkipReason } from './helpers/shared.js';

/** `n > 1` as one request of n streams: one admission, one escrow, one bill, the prompt prefilled once. */

const BS = 16;
const greedy = validateSamplingParams({ temperature: 0, max_tokens: 8 });

function specs(n: number, prompt: number[], o: Partial<RequestSpec> = {}): RequestSpec[] {
  return Array.from({ length: n }, (_, i) => ({ id: 'g', tenant: 't', arrival: 0, prompt, maxTokens: 8, sampling: greedy, rng: new Rng(i), ...o }));
}

function scheduler(ledger?: Ledger, policy = 'fcfs'): { sched: Scheduler; finished: SchedRequest[] } {
  const finished: SchedRequest[] = [];
  const sched = new Scheduler(
    createPolicy(policy, {}),
    { maxBatchTokens: 256, maxRunning: 8, prefillChunk: 256, totalBlocks: 64, blockSize: BS, maxContext: 256, ...(ledger ? { ledger } : {}) },
    { onFinish: (r) => finished.push(r) },
  );
  return { sched, finished };
}

/** Commits `plan` as if the engine sampled `token` for every sampled item. */
function run(sched: Scheduler, plan: StepPlan, token: number, now: number): void {
  const tokens = new Int32Array(plan.items.length).map((_, i) => (plan.items[i]!.sample ? token : -1));
  const result: StepResult = { tokens, timing: { totalMs: 10, runMs: 10, sampleMs: 0, glueMs: 0, runs: 1, batchTokens: 0, kvBytesCopied: 0 } };
  sched.commit(result, now, 0.01);
}

const copies = (plan: StepPlan) => {
  let n = 0;
  for (let i = 0; i < plan.kvOps.length; i += 3) if (plan.kvOps[i] === KvOp.copy) n++;
  return n;
};

describe('n streams in the scheduler', () => {
  test('the leader prefills alone; the others fork from its blocks, each copying the shared last block once', () => {
    const ledger = new Ledger();
    ledger.setBudget('t', 10);
    const { sched, finished } = scheduler(ledger);
    const prompt = Array.from({ length: 40 }, (_, i) => 3 + (i % 50));
    // The whole request is worth 0.9: each stream's spec carries its share (as the generator splits it).
    const members = sched.submitGroup(specs(3, prompt, { value: 0.3 }));
    for (const m of members) assert.ok(Math.abs(m.maxCharge - 0.3) < 1e-12, 'each stream counts an equal share');
    assert.equal(ledger.account('t').inFlight, 1, 'one escrow for the request');
    assert.ok(Math.abs(ledger.account('t').escrowed - 0.9) < 1e-12, 'covering all three streams');

    const first = sched.plan(0);
    assert.deepEqual(first.items.map((i) => [i.seq, i.offset, i.count]), [[members[0]!.seq, 0, 40]], 'the prompt is fed once');
    run(sched, first, 7, 0.01);
    assert.equal(sched.counters.admitted, 1, 'one admission');
    assert.equal(sched.counters.prefillTokens, 40);

    const second = sched.plan(0.02);
    const items = second.items.map((i) => [i.seq, i.offset, i.count]);
    assert.deepEqual(items, [[members[0]!.seq, 40, 1], [members[1]!.seq, 39, 1], [members[2]!.seq, 39, 1]], 'the others recompute only the last prompt token');
    assert.deepEqual(second.opens.map((o) => o.seq), [members[1]!.seq, members[2]!.seq], 'each with its own sampling state');
    assert.equal(copies(second), 2, 'the shared partial block is copied by all but its last writer');
    const tables = second.items.map((i) => Array.from(i.blocks));
    assert.deepEqual(tables[1]!.slice(0, 2), tables[0]!.slice(0, 2), 'full prompt blocks are shared, not copied');
    assert.deepEqual(tables[2]!.slice(0, 2), tables[0]!.slice(0, 2));
    assert.equal(new Set(tables.map((t) => t[2])).size, 3, 'the last block is each stream\'s own');
    assert.equal(sched.blocks.heldBlocks, 5, '2 shared + 3 last blocks');
    run(sched, second, 8, 0.03);
    assert.equal(sched.counters.prefillTokens, 40, 'the recomputed last token is not a second prefill');
    assert.equal(sched.counters.recomputedTokens, 0, 'nor waste');

    for (let t = 0.04; sched.pending > 0 || sched.pendingCloses > 0; t += 0.01) run(sched, sched.plan(t), 9, t + 0.005);
    assert.equal(finished.length, 3);
    assert.equal(sched.blocks.heldBlocks, 0);
    sched.blocks.check();
    const bills = finished.map((r) => r.finalBill);
    assert.equal(bills.filter((b) => b !== undefined).length, 1, 'one bill, on the last stream to end');
    const bill = bills.find((b) => b !== undefined)!;
    assert.equal(bill.prompt_tokens, 40, 'the prompt billed once');
    assert.equal(bill.completion_tokens, 24);
    assert.ok(bill.total <= 0.9);
    const account = ledger.account('t');
    assert.equal(account.requests, 1);
    assert.equal(account.completed, 1);
    assert.equal(account.inFlight, 0);
    assert.equal(account.escrowed, 0);
    assert.ok(Math.abs(account.spent - bill.total) < 1e-12);
  });

  test('KV rent is paid once per block held: shared prompt blocks split among the streams holding them', () => {
    const { sched } = scheduler();
    const prompt = Array.from({ length: 40 }, (_, i) => 3 + (i % 50));
    const members = sched.submitGroup(specs(3, prompt, { value: 0.3 }));
    run(sched, sched.plan(0), 7, 0.01);
    run(sched, sched.plan(0.02), 8, 0.03); // the fork: the others join
    const seconds = () => members.reduce((s, m) => s + m.bill.bill().kv_block_seconds, 0);
    const before = seconds();
    const held = sched.blocks.heldBlocks;
    assert.equal(held, 5, '2 prompt blocks shared by three streams, and each stream\'s own last block');
    run(sched, sched.plan(0.04), 9, 0.05);
    assert.ok(members.every((m) => m.state === 'running'), 'nobody ended in the measured step');
    assert.ok(Math.abs(seconds() - before - held * 0.01) < 1e-12, `the group paid for ${held} blocks, not ${2 * 3 + 3}`);
    const own = members.map((m) => m.bill.bill().kv_block_seconds);
    assert.ok(Math.abs((own[1] as number) - (own[2] as number)) < 1e-12, 'the two forked streams pay alike');
  });

  test('turned away together: one rejection, one quote, the escrow back', () => {
    const ledger = new Ledger();
    ledger.setBudget('t', 1);
    const { sched, finished } = scheduler(ledger, 'shadow');
    const prompt = [1, 2, 3, 4, 5];
    sched.submitGroup(specs(3, prompt, { value: 0.1, slo: { ttftMs: 1e-9 } }));
    run(sched, sched.plan(0), 7, 0.01);
    assert.equal(finished.length, 3);
    assert.ok(finished.every((r) => r.outcome === 'rejected'));
    assert.equal(new Set(finished.map((r) => r.quote)).size, 1, 'one quote');
    const quote = finished[0]!.quote!;
    assert.ok(Math.abs(quote.valueCounted - 0.3) < 1e-12, `for the whole request: ${quote.valueCounted}`);
    assert.equal(sched.counters.rejected, 1);
    assert.equal(sched.counters.admitted, 0);
    const account = ledger.account('t');
    assert.deepEqual([account.requests, account.rejected, account.inFlight, account.escrowed, account.spent], [1, 1, 0, 0, 0]);
  });

  test('a group whose slots are not free waits whole; an abort before the fork ends every stream', () => {
    const { sched, finished } = scheduler();
    const others = sched.submitGroup(specs(6, [1, 2, 3]));
    const group = sched.submitGroup(specs(3, [4, 5, 6, 7]));
    run(sched, sched.plan(0), 7, 0.01);
    run(sched, sched.plan(0.02), 7, 0.03);
    assert.equal(sched.running.length, 6, 'six streams of the first request run');
    assert.ok(group.every((m) => m.state === 'waiting'), 'three more do not fit in 8 slots, so none is admitted');
    sched.abort(group[0]!.seq, 0.04);
    assert.ok(group.every((m) => m.outcome === 'aborted'));
    for (const m of others) sched.abort(m.seq, 0.05);
    run(sched, sched.plan(0.06), 7, 0.07);
    assert.equal(finished.length, 9);
    assert.equal(sched.blocks.heldBlocks, 0);
    sched.blocks.check();
  });

  test('n beyond the sequences the server runs at once is an input error', () => {
    const { sched } = scheduler();
    assert.throws(() => sched.submitGroup(specs(9, [1, 2])), /cannot run at once/);
  });
});

async function metric(base: string, name: string, label = ''): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  let sum = 0;
  for (const l of text.split('\n')) if ((l.startsWith(name + '{') || l.startsWith(name + ' ')) && l.includes(label)) sum += Number(l.split(' ').pop());
  return sum;
}

describe('n > 1 over HTTP (stories260K, official client)', { skip: sharedSkipReason() }, () => {
  let model: LoadedModel;
  let live: Live;
  const ledger = new Ledger();
  const auth = { authorization: 'Bearer sk-group-0001' };
  before(async () => {
    model = await loadModelDir(importStories260K());
    ledger.setBudget('group', 1);
    live = await startLive(model, { ledger, apiKeys: { keys: [{ key: 'sk-group-0001', tenant: 'group', budget: 1 }, { key: 'sk-free-00001', tenant: 'free' }] } });
  });
  after(async () => live.close());
  const client = () => new OpenAI({ baseURL: `${live.base}/v1`, apiKey: 'sk-free-00001', maxRetries: 0, timeout: 60_000 });

  const counters = async () => ({
    prefill: await metric(live.base, 'vllm:prompt_tokens_total'),
    hits: await metric(live.base, 'vllm:prefix_cache_hits_total'),
    copies: await metric(live.base, 'marginal_kv_block_copies_total'),
    admitted: await metric(live.base, 'marginal_requests_admitted_total'),
    rejected: await metric(live.base, 'marginal_requests_rejected_total'),
    generated: await metric(live.base, 'vllm:generation_tokens_total'),
  });

  test('greedy n = 3: the prompt prefilled once and shared, three texts equal to n = 1, usage counting the prompt once', async () => {
    const prompt = 'Tom had a small red boat. Every morning he took it to the lake near his house and';
    const promptTokens = model.tokenizer.encode(prompt, { bos: true }).length;
    assert.ok(promptTokens > BS && promptTokens % BS !== 0, `${promptTokens} tokens: full blocks and a partial one`);
    const before = await counters();
    const r = await client().completions.create({ model: 'stories260K', prompt, max_tokens: 24, temperature: 0, n: 3 });
    const afterwards = await counters();
    assert.equal(afterwards.prefill - before.prefill, promptTokens, 'one prefill of the prompt');
    assert.equal(afterwards.hits - before.hits, 2 * (promptTokens - 1), 'the other two streams share all but its last token');
    assert.equal(afterwards.copies - before.copies, 2, 'and copy the partial last block once each');
    assert.equal(afterwards.admitted - before.admitted, 1, 'one admission');
    assert.equal(r.choices.length, 3);
    const one = await client().completions.create({ model: 'stories260K', prompt, max_tokens: 24, temperature: 0 });
    for (const c of r.choices) assert.equal(c.text, one.choices[0]!.text);
    assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
    const completion = r.choices.reduce((a, c) => a + model.tokenizer.encode(c.text, { bos: false }).length, 0);
    assert.ok(completion > 0);
    assert.equal(r.usage!.prompt_tokens, promptTokens, 'the prompt counted once');
    assert.equal(r.usage!.completion_tokens, 3 * one.usage!.completion_tokens, 'completions summed over the choices');
    assert.equal(r.usage!.total_tokens, promptTokens + r.usage!.completion_tokens);
    const bill = (r as unknown as { bill: { prompt_tokens: number; completion_tokens: number } }).bill;
    assert.equal(bill.prompt_tokens, promptTokens);
    assert.equal(bill.completion_tokens, r.usage!.completion_tokens);
  });

  test('seeded sampling is reproducible, choice i the single request with seed + i', async () => {
    const body = { model: 'stories260K', prompt: 'The bird sang a song', max_tokens: 16, temperature: 1, seed: 21, n: 3 } as const;
    const a = await client().completions.create(body);
    const b = await client().completions.create(body);
    assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
    assert.equal(new Set(a.choices.map((c) => c.text)).size, 3);
    const third = await client().completions.create({ ...body, n: 1, seed: 23 });
    assert.equal(a.choices[2]!.text, third.choices[0]!.text);
  });

  test('a tenant budget covering one n = 3 request escrows it once; a 429 turns all three away with one quote', async () => {
    const res = fetch(`${live.base}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...auth },
      body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 120, ignore_eos: true, temperature: 1, seed: 1, value: 0.9, n: 3 }),
    });
    let seen = { inFlight: 0, escrowed: 0 };
    for (let i = 0; i < 400 && seen.inFlight === 0; i++) {
      await new Promise((r) => setTimeout(r, 5));
      seen = ledger.account('group');
    }
    assert.equal(seen.inFlight, 1, 'one escrow');
    assert.ok(Math.abs(seen.escrowed - 0.9) < 1e-9, `the whole value, ${seen.escrowed}`);
    const done = await res;
    assert.equal(done.status, 200);
    const body = (await done.json()) as { choices: unknown[]; usage: { completion_tokens: number }; bill: { total: number; cap: number } };
    assert.equal(body.choices.length, 3);
    assert.equal(body.usage.completion_tokens, 360);
    assert.ok(body.bill.total <= 0.9 + 1e-12);
    let account = ledger.account('group');
    assert.deepEqual([account.requests, account.completed, account.inFlight], [1, 1, 0]);
    assert.ok(Math.abs(account.spent - body.bill.total) < 1e-9, 'the bill is what was paid');

    const before = await counters();
    const rejected = await postJson(live.base, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 8, n: 3, slo: { ttft_ms: 1e-6 } }, auth);
    assert.equal(rejected.status, 429, rejected.text);
    assert.equal(rejected.json.error?.code, 'slo_unreachable');
    assert.ok(rejected.json.error?.quote, 'with its quote');
    const afterwards = await counters();
    assert.equal(afterwards.rejected - before.rejected, 1, 'one rejection for the three');
    assert.equal(afterwards.generated - before.generated, 0, 'nothing ran');
    account = ledger.account('group');
    assert.deepEqual([account.requests, account.rejected, account.inFlight, account.escrowed], [2, 1, 0, 0]);
  });

  test('more streams than the server runs at once is a 400 naming the field', async () => {
    const headers = { authorization: 'Bearer sk-free-00001' };
    const many = await postJson(live.base, '/v1/completions', { prompt: 'x', max_tokens: 2, n: 9 }, headers);
    assert.equal(many.status, 400, many.text);
    assert.equal(many.json.error?.param, 'n');
    const best = await postJson(live.base, '/v1/completions', { prompt: 'x', max_tokens: 2, n: 2, best_of: 12 }, headers);
    assert.equal(best.status, 400, best.text);
    assert.equal(best.json.error?.param, 'best_of');
    assert.equal(live.generator.inFlight, 0);
  });

  test('a client that leaves mid-stream frees every stream and every block', async () => {
    const controller = new AbortController();
    const res = await fetch(`${live.base}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-free-00001' },
      body: JSON.stringify({ prompt: 'A cat and a dog', max_tokens: 400, ignore_eos: true, temperature: 1, n: 3, stream: true }),
      signal: controller.signal,
    });
    assert.equal(res.status, 200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    const indices = new Set<number>();
    let text = '';
    while (indices.size < 3) {
      const { value, done } = await reader.read();
      assert.ok(!done, 'the stream ended before every choice spoke');
      text += decoder.decode(value, { stream: true });
      for (const m of text.matchAll(/"index":(\d)/g)) indices.add(Number(m[1]));
    }
    const sched = live.generator.scheduler;
    assert.ok(sched.running.length >= 3 || sched.blocks.heldBlocks > 0, 'all three streams hold blocks');
    controller.abort();
    await reader.cancel().catch(() => {});
    for (let i = 0; i < 2000 && (live.generator.inFlight > 0 || sched.running.length > 0); i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(live.generator.inFlight, 0);
    assert.equal(sched.running.length, 0);
    assert.equal(sched.blocks.heldBlocks, 0, 'no KV leak');
    sched.blocks.check();
    assert.ok((await metric(live.base, 'vllm:request_success_total', 'finished_reason="abort"')) >= 3, 'each stream ended as aborted');
  });
});
