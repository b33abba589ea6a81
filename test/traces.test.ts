import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pack } from 'msgpackr';
import { completionValue, readTrace, writeTrace, type TraceRequest } from '../src/sim/trace.js';
import { applyWorkload, defaultWorkload, generateWorkload, loadWorkload, parseWorkload, type Workload } from '../src/sim/workload.js';
import { sharedSkipReason } from './helpers/shared.js';

const traces = fileURLToPath(new URL('../../shared/traces/', import.meta.url));
const azureConv = join(traces, 'azure2023_AzureLLMInferenceTrace_conv.csv');
const azureCode = join(traces, 'azure2023_AzureLLMInferenceTrace_code.csv');
const mooncakeConv = join(traces, 'mooncake_fast25_conversation_trace.jsonl');
const mooncakeSynth = join(traces, 'mooncake_fast25_synthetic_trace.jsonl');

const tmp = mkdtempSync(join(tmpdir(), 'marginal-traces-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function assertSorted(reqs: TraceRequest[]): void {
  for (let i = 1; i < reqs.length; i++) assert.ok(reqs[i]!.t >= reqs[i - 1]!.t, `not sorted at ${i}`);
}

/** Replays the trace against an unbounded prefix cache: the share of prompt tokens that hit. */
function prefixHitRate(reqs: TraceRequest[]): number {
  const seen = new Set<number>();
  let hit = 0;
  let total = 0;
  for (const r of reqs) {
    let n = 0;
    while (n < r.prefix.length && seen.has(r.prefix[n]!)) n++;
    hit += Math.min(n * r.prefixBlockTokens, r.promptTokens);
    total += r.promptTokens;
    for (const h of r.prefix) seen.add(h);
  }
  return hit / total;
}

function invalid(pattern: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.equal((e as { code?: string }).code, 'MARGINAL_INVALID_ARGUMENT');
    assert.match((e as Error).message, pattern);
    return true;
  };
}

describe('public traces', { skip: sharedSkipReason() }, () => {
  test('Azure conv: first rows, times relative to the first row, no economics', async () => {
    const reqs = await readTrace(azureConv, { limit: 200 });
    assert.equal(reqs.length, 200);
    assertSorted(reqs);
    assert.deepEqual(reqs[0], { id: '0', t: 0, promptTokens: 374, outputTokens: 44, tenant: 'default', prefix: [], prefixBlockTokens: 16 });
    // 18:15:50.9951690 − 18:15:46.6805900
    assert.equal(reqs[1]!.t, 4.314579);
    assert.deepEqual(reqs.map((r) => r.id), reqs.map((_, i) => String(i)));
    for (const r of reqs) assert.equal(r.value ?? r.bid ?? r.slo, undefined);
  });

  test('Azure conv and code: every row, in order', async () => {
    const conv = await readTrace(azureConv);
    assert.equal(conv.length, 19_366);
    assertSorted(conv);
    // 19:14:08.4025270 − 18:15:46.6805900
    assert.ok(Math.abs(conv.at(-1)!.t - 3501.721937) < 1e-6);
    assert.deepEqual([conv.at(-1)!.promptTokens, conv.at(-1)!.outputTokens], [197, 183]);
    const code = await readTrace(azureCode);
    assert.equal(code.length, 8_819);
    assertSorted(code);
    assert.ok(code.every((r) => Number.isInteger(r.promptTokens) && r.promptTokens >= 1 && r.outputTokens >= 1));
  });

  test('Mooncake conversation: every row, 512-token blocks, shared leading hash_ids', async () => {
    const reqs = await readTrace(mooncakeConv);
    assert.equal(reqs.length, 12_031);
    assertSorted(reqs);
    assert.equal(reqs.at(-1)!.t, 3536.999);
    const [a, b] = reqs;
    assert.deepEqual(a, { id: '0', t: 0, promptTokens: 6758, outputTokens: 500, tenant: 'default', prefix: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], prefixBlockTokens: 512 });
    // The first two share their first block (a common system prompt) and nothing after.
    assert.equal(b!.prefix[0], a!.prefix[0]);
    assert.notEqual(b!.prefix[1], a!.prefix[1]);
    for (const r of reqs) assert.equal(r.prefix.length, Math.ceil(r.promptTokens / 512));
    // The traces' README: about 37% of the input tokens are prefix hits.
    const rate = prefixHitRate(reqs);
    assert.ok(rate > 0.36 && rate < 0.39, `hit rate ${rate}`);
  });

  test('Mooncake synthetic: first rows, and its heavier prefix sharing', async () => {
    const head = await readTrace(mooncakeSynth, { limit: 50 });
    assert.equal(head.length, 50);
    assert.equal(head[0]!.promptTokens, 40_160);
    assert.equal(head[0]!.outputTokens, 6);
    assert.equal(head[0]!.prefix.length, 79);
    const all = await readTrace(mooncakeSynth);
    assert.equal(all.length, 3_993);
    const rate = prefixHitRate(all);
    assert.ok(rate > 0.63 && rate < 0.67, `hit rate ${rate}`);
  });

  test('start and limit count records; ids and times stay those of the file', async () => {
    const full = await readTrace(azureConv, { limit: 20 });
    const part = await readTrace(azureConv, { start: 10, limit: 5 });
    assert.deepEqual(part, full.slice(10, 15));
    assert.deepEqual(part.map((r) => r.id), ['10', '11', '12', '13', '14']);
  });

  test('duration keeps arrivals before it, after rate scaling', async () => {
    const full = await readTrace(azureConv);
    const first = await readTrace(azureConv, { duration: 60 });
    assert.deepEqual(first, full.filter((r) => r.t < 60));
    const fast = await readTrace(azureConv, { duration: 60, rateScale: 2 });
    assert.deepEqual(fast.map((r) => r.id), full.filter((r) => r.t / 2 < 60).map((r) => r.id));
  });

  test('rateScale divides arrival times; lengthScale scales lengths and the block size', async () => {
    const base = await readTrace(mooncakeConv, { limit: 300 });
    const fast = await readTrace(mooncakeConv, { limit: 300, rateScale: 4 });
    fast.forEach((r, i) => assert.equal(r.t, base[i]!.t / 4));
    const small = await readTrace(mooncakeConv, { limit: 300, lengthScale: 1 / 32 });
    const s0 = small[0]!;
    assert.equal(s0.promptTokens, Math.round(6758 / 32));
    assert.equal(s0.outputTokens, Math.round(500 / 32));
    assert.equal(s0.prefixBlockTokens, 16);
    small.forEach((r, i) => {
      const b = base[i]!;
      assert.equal(r.t, b.t);
      assert.equal(r.promptTokens, Math.max(1, Math.round(b.promptTokens / 32)));
      assert.ok(r.prefix.length <= Math.ceil(r.promptTokens / 16));
      // Scaling keeps who shares what: entries are a prefix of the unscaled ones.
      assert.deepEqual(r.prefix, b.prefix.slice(0, r.prefix.length));
      assert.ok(r.prefix.length >= b.prefix.length - 1);
    });
    // Sharing survives: the hit rate of the scaled trace stays close to the original's.
    assert.ok(Math.abs(prefixHitRate(small) - prefixHitRate(base)) < 0.03);
    const clamped = await readTrace(azureConv, { limit: 300, lengthScale: 0.5, maxPromptTokens: 100, maxOutputTokens: 20 });
    assert.ok(clamped.every((r) => r.promptTokens <= 100 && r.outputTokens <= 20 && r.promptTokens >= 1));
    const mc = await readTrace(mooncakeConv, { limit: 50, maxPromptTokens: 1000 });
    assert.ok(mc.every((r) => r.promptTokens <= 1000 && r.prefix.length <= 2));
  });

  test('a workload gives an Azure trace tenants, values and SLOs', async () => {
    const reqs = await readTrace(azureConv, { limit: 2000, workload: defaultWorkload() });
    const again = await readTrace(azureConv, { limit: 2000, workload: defaultWorkload() });
    assert.deepEqual(reqs, again);
    assert.ok(reqs.every((r) => completionValue(r) > 0));
    assert.deepEqual(new Set(reqs.map((r) => r.tenant)), new Set(['interactive', 'standard', 'batch']));
    const reseeded = await readTrace(azureConv, { limit: 2000, workload: defaultWorkload(), seed: 7 });
    assert.notDeepEqual(reseeded.map((r) => r.tenant), reqs.map((r) => r.tenant));
  });
});

describe('trace files', () => {
  const sample = (): TraceRequest[] => [
    {
      id: 'req-a',
      t: 0.125,
      promptTokens: 812,
      outputTokens: 96,
      value: 1,
      slo: { ttftMs: 2000, tpotMs: 200 },
      tenant: 'a',
      prefix: [17, 18, 19],
      prefixBlockTokens: 16,
    },
    { id: 'req-b', t: 0.5, promptTokens: 3, outputTokens: 1, bid: 0.002, deadlineMs: 30_000, tenant: 'b', priority: -1, prefix: [], prefixBlockTokens: 16 },
    { id: '7', t: 2.25, promptTokens: 2048, outputTokens: 10, slo: { ttftMs: 500 }, tenant: 'default', prefix: [1, 2, 3, 4], prefixBlockTokens: 512 },
    ...generateWorkload({ seed: 3, requests: 40, rate: 5, agentic: { sessions: 3, turns: 4, systemPromptTokens: 64, turnTokens: 30, thinkSeconds: 2 } }),
  ];

  test('JSON Lines round trip', async () => {
    const path = join(tmp, 'rt.jsonl');
    const reqs = sample().sort((a, b) => a.t - b.t);
    await writeTrace(path, reqs);
    assert.deepEqual(await readTrace(path), reqs);
  });

  test('msgpack round trip, as one packed array and as a stream of records', async () => {
    const reqs = sample().sort((a, b) => a.t - b.t);
    for (const name of ['rt.msgpack', 'rt.mpk']) {
      const path = join(tmp, name);
      await writeTrace(path, reqs);
      assert.deepEqual(await readTrace(path), reqs);
    }
    const stream = join(tmp, 'stream.msgpack');
    writeFileSync(stream, Buffer.concat([pack({ t: 1, prompt_tokens: 5, output_tokens: 2 }), pack({ t: 0.5, prompt_tokens: 6, output_tokens: 3, tenant: 'x' })]));
    assert.deepEqual(await readTrace(stream), [
      { id: '1', t: 0.5, promptTokens: 6, outputTokens: 3, tenant: 'x', prefix: [], prefixBlockTokens: 16 },
      { id: '0', t: 1, promptTokens: 5, outputTokens: 2, tenant: 'default', prefix: [], prefixBlockTokens: 16 },
    ]);
    const badRec = join(tmp, 'bad.msgpack');
    writeFileSync(badRec, pack([{ t: 0, prompt_tokens: 1, output_tokens: 1 }, { t: 0, prompt_tokens: 0, output_tokens: 1 }]));
    await assert.rejects(readTrace(badRec), invalid(/bad\.msgpack record 1: prompt_tokens must be a positive integer/));
  });

  test('sorts by arrival, keeping file order for equal times', async () => {
    const path = join(tmp, 'unsorted.jsonl');
    writeFileSync(
      path,
      ['{"t": 2, "prompt_tokens": 1, "output_tokens": 1}', '{"t": 1, "prompt_tokens": 2, "output_tokens": 1}', '', '{"t": 1, "prompt_tokens": 3, "output_tokens": 1}'].join('\n'),
    );
    const reqs = await readTrace(path);
    assert.deepEqual(reqs.map((r) => [r.id, r.promptTokens]), [['1', 2], ['2', 3], ['0', 1]]);
  });

  test('detects Mooncake and Azure by content, and format overrides detection', async () => {
    const mc = join(tmp, 'mc.jsonl');
    writeFileSync(mc, '{"timestamp": 1500, "input_length": 1000, "output_length": 10, "hash_ids": [4, 5]}\n');
    assert.deepEqual(await readTrace(mc), [{ id: '0', t: 1.5, promptTokens: 1000, outputTokens: 10, tenant: 'default', prefix: [4, 5], prefixBlockTokens: 512 }]);
    const az = join(tmp, 'azure.txt');
    writeFileSync(az, 'TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,10,2\n2023-11-16 18:15:47.75,20,3\n');
    assert.deepEqual((await readTrace(az)).map((r) => r.t), [0, 1.25]);
    await assert.rejects(readTrace(mc, { format: 'jsonl' }), invalid(/mc\.jsonl line 1: t is required/));
    const custom = join(tmp, 'blocks.jsonl');
    writeFileSync(custom, '{"t": 0, "prompt_tokens": 100, "output_tokens": 1, "prefix": [1, 2]}\n');
    assert.equal((await readTrace(custom, { prefixBlockTokens: 32 }))[0]!.prefixBlockTokens, 32);
  });

  test('malformed lines name the file, the line and the field', async () => {
    const cases: Array<[string, string[], RegExp]> = [
      ['badjson.jsonl', ['{"t": 0, "prompt_tokens": 1, "output_tokens": 1}', '', '{"t": 1, "prompt_tokens": 1,'], /badjson\.jsonl line 3: invalid JSON/],
      ['negative.jsonl', ['{"t": 0, "prompt_tokens": 1, "output_tokens": 1}', '{"t": 1, "prompt_tokens": -5, "output_tokens": 1}'], /negative\.jsonl line 2: prompt_tokens must be a positive integer/],
      ['fraction.jsonl', ['{"t": 0, "prompt_tokens": 1.5, "output_tokens": 1}'], /line 1: prompt_tokens must be a positive integer/],
      ['missing.jsonl', ['{"t": 0, "prompt_tokens": 1}'], /missing\.jsonl line 1: output_tokens is required/],
      ['t.jsonl', ['{"t": 0, "prompt_tokens": 1, "output_tokens": 1}', '{"t": "soon", "prompt_tokens": 1, "output_tokens": 1}'], /t\.jsonl line 2: t must be a non-negative number/],
      ['array.jsonl', ['[1, 2, 3]'], /array\.jsonl line 1: a trace record must be a JSON object/],
      ['slo.jsonl', ['{"t": 0, "prompt_tokens": 1, "output_tokens": 1, "slo": {"ttft_ms": -1}}'], /line 1: ttft_ms must be a positive number/],
      ['prefix.jsonl', ['{"t": 0, "prompt_tokens": 1, "output_tokens": 1, "prefix": [1, "x"]}'], /line 1: prefix\[1\] must be a number/],
      ['mooncake.jsonl', ['{"timestamp": 0, "input_length": 10, "output_length": 0, "hash_ids": []}'], /mooncake\.jsonl line 1: output_length must be a positive integer/],
      ['azure.csv', ['TIMESTAMP,ContextTokens,GeneratedTokens', '2023-11-16 18:15:46.6805900,374,44', '2023-11-16 18:15:47,abc,3'], /azure\.csv line 3: ContextTokens must be a positive integer/],
      ['azuretime.csv', ['TIMESTAMP,ContextTokens,GeneratedTokens', 'yesterday,374,44'], /azuretime\.csv line 2: TIMESTAMP must be a time/],
      ['header.csv', ['TIME,ContextTokens,GeneratedTokens', '2023-11-16 18:15:46.6805900,374,44'], /header\.csv line 1: missing column TIMESTAMP/],
    ];
    for (const [name, lines, pattern] of cases) {
      const path = join(tmp, name);
      writeFileSync(path, lines.join('\n') + '\n');
      await assert.rejects(readTrace(path), invalid(pattern), name);
    }
    await assert.rejects(readTrace(join(tmp, 'absent.jsonl')), invalid(/absent\.jsonl: cannot read trace/));
    await assert.rejects(readTrace(join(tmp, 'badjson.jsonl'), { rateScale: 0 }), invalid(/rateScale must be a positive number/));
    // A limit that stops before the bad line reads what comes before it.
    assert.equal((await readTrace(join(tmp, 'negative.jsonl'), { limit: 1 })).length, 1);
  });
});

describe('workloads', () => {
  const example = {
    seed: 1,
    tenants: [
      { name: 'interactive', share: 0.3, value: { dist: 'lognormal', mean: 2.0, sigma: 0.5 }, value_per_token: false, slo: { ttft_ms: 1000, tpot_ms: 100 }, deadline_ms: null, priority: 0 },
      { name: 'standard', share: 0.5, value: { dist: 'const', value: 1 }, slo: { ttft_ms: 5000 } },
      { name: 'batch', share: 0.2, value: { dist: 'uniform', min: 0.001, max: 0.002 }, value_per_token: true, deadline_ms: 60000, priority: 5 },
    ],
  };
  const blank = (n: number): TraceRequest[] =>
    Array.from({ length: n }, (_, i) => ({ id: String(i), t: i / 10, promptTokens: 10, outputTokens: 100, tenant: 'default', prefix: [], prefixBlockTokens: 16 }));

  test('parseWorkload reads the file format and names the field at fault', async () => {
    const w = parseWorkload(JSON.stringify(example));
    assert.equal(w.seed, 1);
    assert.deepEqual(w.tenants[0], {
      name: 'interactive',
      share: 0.3,
      value: { dist: 'lognormal', mean: 2, sigma: 0.5 },
      valuePerToken: false,
      slo: { ttftMs: 1000, tpotMs: 100 },
      priority: 0,
    });
    assert.deepEqual(w.tenants[2]!.valuePerToken, true);
    assert.equal(w.tenants[2]!.deadlineMs, 60000);
    const broken = (patch: (o: typeof example) => void): unknown => {
      const o = structuredClone(example);
      patch(o);
      return o;
    };
    assert.throws(() => parseWorkload(broken((o) => ((o.tenants[1]!.value as Record<string, unknown>) = { dist: 'lognormal', mean: 1, sigma: -1 }))), invalid(/tenants\[1\]\.value\.sigma must be a non-negative number/));
    assert.throws(() => parseWorkload(broken((o) => ((o.tenants[0] as Record<string, unknown>).share = 0))), invalid(/tenants\[0\]\.share must be a positive number/));
    assert.throws(() => parseWorkload(broken((o) => ((o.tenants[0] as Record<string, unknown>).shares = 1))), invalid(/tenants\[0\]\.shares is not a tenant field/));
    assert.throws(() => parseWorkload(broken((o) => (o.tenants[2]!.name = 'standard'))), invalid(/tenants\[2\]\.name repeats "standard"/));
    assert.throws(() => parseWorkload(broken((o) => ((o.tenants[0]!.value as Record<string, unknown>).dist = 'pareto'))), invalid(/tenants\[0\]\.value\.dist must be/));
    assert.throws(() => parseWorkload({ tenants: [] }), invalid(/tenants must be a non-empty array/));
    assert.throws(() => parseWorkload('{"tenants": '), invalid(/workload: invalid JSON/));
    const path = join(tmp, 'workload.json');
    writeFileSync(path, JSON.stringify(broken((o) => ((o.tenants[0]!.slo as Record<string, unknown>).ttft_ms = 'fast'))));
    await assert.rejects(loadWorkload(path), invalid(/workload\.json: tenants\[0\]\.slo\.ttft_ms must be a positive number/));
    writeFileSync(path, JSON.stringify(example));
    assert.deepEqual(await loadWorkload(path), w);
  });

  test('applyWorkload is deterministic, per request, and respects shares', () => {
    const w = parseWorkload(example);
    const reqs = blank(30_000);
    const a = applyWorkload(reqs, w);
    assert.deepEqual(applyWorkload(reqs, w), a);
    // A request's economics depend on its id and the seed only, not on the other requests.
    assert.deepEqual(applyWorkload(reqs.slice(100, 200).reverse(), w).reverse(), a.slice(100, 200));
    assert.equal(reqs[0]!.value, undefined, 'inputs are not modified');
    const counts = new Map<string, number>();
    for (const r of a) counts.set(r.tenant, (counts.get(r.tenant) ?? 0) + 1);
    for (const t of w.tenants) {
      const share = (counts.get(t.name) ?? 0) / a.length;
      assert.ok(Math.abs(share - t.share) < 0.015, `${t.name}: ${share} vs ${t.share}`);
    }
    for (const r of a) {
      if (r.tenant === 'interactive') {
        assert.deepEqual(r.slo, { ttftMs: 1000, tpotMs: 100 });
        assert.equal(r.priority, 0);
        assert.ok(r.value! > 0 && r.bid === undefined);
      } else if (r.tenant === 'standard') {
        assert.equal(r.value, 1);
        assert.equal(r.priority, undefined);
      } else {
        assert.ok(r.bid! >= 0.001 && r.bid! <= 0.002 && r.value === undefined);
        assert.equal(r.deadlineMs, 60000);
        assert.equal(r.slo, undefined);
      }
    }
    const interactive = a.filter((r) => r.tenant === 'interactive').map((r) => r.value!);
    const mean = interactive.reduce((s, v) => s + v, 0) / interactive.length;
    assert.ok(Math.abs(mean - 2) < 0.05, `lognormal mean ${mean}`);
    const other = applyWorkload(reqs, { ...w, seed: 2 });
    assert.ok(other.filter((r, i) => r.tenant !== a[i]!.tenant).length > 10_000);
  });

  test('applyWorkload keeps what a request already has', () => {
    const w = parseWorkload(example);
    const own: TraceRequest = { id: 'x', t: 0, promptTokens: 1, outputTokens: 1, value: 9, slo: { tpotMs: 7 }, deadlineMs: 5, priority: 3, tenant: 'batch', prefix: [], prefixBlockTokens: 16 };
    assert.deepEqual(applyWorkload([own], w), [own]);
    const named = applyWorkload([{ ...blank(1)[0]!, tenant: 'standard' }], w)[0]!;
    assert.equal(named.tenant, 'standard');
    assert.equal(named.value, 1);
  });

  test('defaultWorkload: three tenants, values ordered interactive > standard > batch', () => {
    const w = defaultWorkload();
    assert.deepEqual(w.tenants.map((t) => t.name), ['interactive', 'standard', 'batch']);
    const reqs = applyWorkload(blank(6000), w);
    const meanValue = (name: string): number => {
      const vs = reqs.filter((r) => r.tenant === name).map(completionValue);
      return vs.reduce((s, v) => s + v, 0) / vs.length;
    };
    assert.ok(meanValue('interactive') > 2 * meanValue('standard'));
    assert.ok(meanValue('standard') > 2 * meanValue('batch'));
    const batch = w.tenants[2]!;
    assert.equal(batch.slo, undefined);
    assert.ok(batch.deadlineMs !== undefined);
  });
});

describe('synthetic workloads', () => {
  const mean = (xs: number[]): number => xs.reduce((s, x) => s + x, 0) / xs.length;
  const gaps = (reqs: TraceRequest[]): number[] => reqs.slice(1).map((r, i) => r.t - reqs[i]!.t);
  const cv = (xs: number[]): number => {
    const m = mean(xs);
    return Math.sqrt(mean(xs.map((x) => (x - m) ** 2))) / m;
  };

  test('deterministic per seed', () => {
    const opts = { seed: 11, requests: 500, rate: 10, agentic: { sessions: 10, turns: 3, systemPromptTokens: 50, turnTokens: 20, thinkSeconds: 1 } };
    const a = generateWorkload(opts);
    assert.deepEqual(generateWorkload(opts), a);
    assert.notDeepEqual(generateWorkload({ ...opts, seed: 12 }), a);
    assert.equal(a.length, 500);
    assertSorted(a);
    assert.deepEqual(a.map((r) => r.id), a.map((_, i) => String(i)));
  });

  test('rate, burstiness and lengths are honoured over many requests', () => {
    const poisson = generateWorkload({ seed: 1, requests: 20_000, rate: 50, promptTokens: { mean: 300, sigma: 0.7 }, outputTokens: { mean: 80, sigma: 0.5 } });
    assert.ok(Math.abs(poisson.length / poisson.at(-1)!.t / 50 - 1) < 0.03, `rate ${poisson.length / poisson.at(-1)!.t}`);
    assert.ok(Math.abs(cv(gaps(poisson)) - 1) < 0.05);
    assert.ok(Math.abs(mean(poisson.map((r) => r.promptTokens)) / 300 - 1) < 0.03);
    assert.ok(Math.abs(mean(poisson.map((r) => r.outputTokens)) / 80 - 1) < 0.03);
    const bursty = generateWorkload({ seed: 2, requests: 20_000, rate: 50, burstiness: 0.25 });
    assert.ok(Math.abs(bursty.length / bursty.at(-1)!.t / 50 - 1) < 0.06);
    assert.ok(Math.abs(cv(gaps(bursty)) - 2) < 0.15, `cv ${cv(gaps(bursty))}`);
    const smooth = generateWorkload({ seed: 3, requests: 20_000, rate: 50, burstiness: 4 });
    assert.ok(Math.abs(cv(gaps(smooth)) - 0.5) < 0.03);
    const tenants = new Set(poisson.map((r) => r.tenant));
    assert.deepEqual(tenants, new Set(['interactive', 'standard', 'batch']));
    const clamped = generateWorkload({ seed: 1, requests: 2000, rate: 50, maxPromptTokens: 100, maxOutputTokens: 50 });
    assert.ok(clamped.every((r) => r.promptTokens <= 100 && r.outputTokens <= 50));
  });

  test('agentic sessions: turns share growing prefixes; only the system prompt is shared across sessions', () => {
    const B = 16;
    const agentic = { sessions: 20, turns: 5, systemPromptTokens: 100, turnTokens: 40, thinkSeconds: 2 };
    const reqs = generateWorkload({ seed: 5, requests: 300, rate: 4, agentic, prefixBlockTokens: B });
    assert.equal(reqs.length, 300);
    const systemBlocks = Math.floor(100 / B);
    const sessions = new Map<number, TraceRequest[]>();
    for (const r of reqs) {
      if (r.prefix.length === 0) continue;
      const key = r.prefix[systemBlocks]!;
      sessions.set(key, [...(sessions.get(key) ?? []), r]);
    }
    assert.equal(sessions.size, 20);
    assert.equal(reqs.filter((r) => r.prefix.length === 0).length, 300 - 100);
    const owner = new Map<number, number>();
    for (const [key, turns] of sessions) {
      assert.equal(turns.length, 5);
      assert.equal(new Set(turns.map((r) => r.tenant)).size, 1, 'one tenant per session');
      for (let k = 0; k < turns.length; k++) {
        const r = turns[k]!;
        assert.deepEqual(r.prefix.slice(0, systemBlocks), [0, 1, 2, 3, 4, 5]);
        assert.equal(r.prefix.length, Math.floor(r.promptTokens / B));
        assert.equal(r.prefixBlockTokens, B);
        for (const h of r.prefix.slice(systemBlocks)) {
          assert.equal(owner.get(h) ?? key, key, 'a session block appears in another session');
          owner.set(h, key);
        }
        if (k === 0) {
          assert.equal(r.promptTokens, 100 + 40);
          continue;
        }
        const prev = turns[k - 1]!;
        // The prompt is the whole conversation so far: the previous prompt, its reply, the new turn.
        assert.equal(r.promptTokens, prev.promptTokens + prev.outputTokens + 40);
        assert.deepEqual(r.prefix.slice(0, prev.prefix.length), prev.prefix);
        assert.ok(r.prefix.length > prev.prefix.length);
        assert.ok(r.t >= prev.t);
      }
    }
    assert.throws(() => generateWorkload({ seed: 1, requests: 10, rate: 1, agentic: { ...agentic, sessions: 3 } }), invalid(/exceed requests/));
    assert.throws(() => generateWorkload({ seed: 1, requests: 10, rate: 0 }), invalid(/rate must be a positive number/));
  });

  test('a generated trace survives writeTrace/readTrace with its workload', async () => {
    const w: Workload = parseWorkload({ seed: 9, tenants: [{ name: 'only', share: 1, value: 2, slo: { ttft_ms: 100 } }] });
    const reqs = generateWorkload({ seed: 4, requests: 200, rate: 20, tenants: w });
    assert.ok(reqs.every((r) => r.tenant === 'only' && r.value === 2 && r.slo?.ttftMs === 100));
    const path = join(tmp, 'generated.jsonl');
    await writeTrace(path, reqs);
    assert.deepEqual(await readTrace(path), reqs);
  });
});
