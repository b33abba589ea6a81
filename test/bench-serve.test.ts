import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { arrivalSchedule, benchServe, npPercentile, promCounter, promptText, randomLengths, summarizeTimelines, type RequestTimeline } from '../src/bench/serve.js';
import { benchOptionsFromCli, formatBenchSummary, parsePercentiles, parseSlo } from '../src/cli/bench-serve.js';
import { readTraceFromCli } from '../src/cli/sim.js';
import type { Bill } from '../src/economy/ledger.js';
import { Generator } from '../src/serving/generator.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { buildServer } from '../src/server/app.js';
import { writeTrace, type TraceRequest } from '../src/sim/trace.js';
import { synthTiny, tempDir } from './helpers/models.js';
import { testProviders } from './helpers/providers.js';

const close = (a: number | null | undefined, b: number, what: string) => assert.ok(a !== null && a !== undefined && Math.abs(a - b) < 1e-9, `${what}: got ${a}, want ${b}`);

const bill = (total: number): Bill => ({
  prompt_tokens: 0,
  cached_tokens: 0,
  computed_prompt_tokens: 0,
  completion_tokens: 0,
  kv_block_seconds: 0,
  prices: { token: 0, cached_token: 0, kv_block_second: 0 },
  amounts: { prompt: 0, cached: 0, completion: 0, kv_rent: 0 },
  subtotal: total,
  cap: Infinity,
  total,
  charged: true,
  currency: 'value',
});

const quote = (price: number) => ({ reason: 'price_above_bid' as const, price_per_token: price, price_per_kv_block_second: 0, min_value: 1, value_counted: 0.5, retryable: true, expected_wait_ms: 100 });

const base = (id: string, start: number): RequestTimeline => ({ id, tenant: 't', start, chunks: [], end: null, status: null, done: false });

/** Three completed requests, two 429s, a 402, a 500 and one that never got an answer. */
function handMade(): RequestTimeline[] {
  return [
    {
      ...base('a', 0),
      expect: { value: 2, slo: { ttftMs: 150 } },
      chunks: [100, 120, 150, 200],
      end: 210,
      status: 200,
      done: true,
      usage: { prompt_tokens: 10, completion_tokens: 5, cached_tokens: 4 },
      bill: bill(0.5),
    },
    {
      ...base('b', 50),
      expect: { bid: 0.5, slo: { ttftMs: 100 } },
      chunks: [250, 300],
      end: 300,
      status: 200,
      done: true,
      usage: { prompt_tokens: 20, completion_tokens: 2, cached_tokens: 0 },
      bill: bill(0.25),
    },
    { ...base('c', 100), expect: { bid: 0.5 }, chunks: [400], end: 400, status: 200, done: true, usage: { prompt_tokens: 8, completion_tokens: 1 } },
    { ...base('d', 150), status: 429, promptTokensHint: 9, quote: quote(0.01) },
    { ...base('e', 160), status: 429, quote: quote(0.03) },
    { ...base('f', 170), status: 402, serverError: 'budget exhausted' },
    { ...base('g', 180), status: 500, serverError: 'internal error' },
    { ...base('h', 190), clientError: 'ECONNRESET' },
  ];
}

describe('bench serve: metric arithmetic on hand-made timelines', () => {
  test('vLLM definitions: TTFT, TPOT, pooled ITL, E2EL, throughput, percentiles', () => {
    const { summary: s, samples } = summarizeTimelines(handMade(), { durationS: 2, percentiles: [50, 99, 99.9], basePrice: 0.01 });
    assert.deepEqual(samples.ttft, [100, 200, 300]);
    assert.deepEqual(samples.tpot, [27.5, 50]); // (210−100)/4 and (300−250)/1; the one-token request has none
    assert.deepEqual(samples.itl, [20, 30, 50, 50]);
    assert.deepEqual(samples.e2el, [210, 250, 300]);
    assert.equal(s.completed, 3);
    assert.equal(s.failed, 5);
    assert.equal(s.total_input_tokens, 38);
    assert.equal(s.total_output_tokens, 8);
    close(s.duration, 2, 'duration');
    close(s.request_throughput, 1.5, 'request_throughput');
    close(s.output_throughput, 4, 'output_throughput');
    close(s.total_token_throughput, 23, 'total_token_throughput');
    assert.equal(s.request_goodput, null);
    close(s.mean_ttft_ms, 200, 'mean ttft');
    close(s.median_ttft_ms, 200, 'median ttft');
    close(s.std_ttft_ms, Math.sqrt(20000 / 3), 'std ttft');
    close(s.p99_ttft_ms, 298, 'p99 ttft'); // numpy linear: 200 + 0.98 × 100
    close(s.p50_ttft_ms, 200, 'p50 ttft');
    close(s['p99.9_ttft_ms'], 299.8, 'p99.9 ttft');
    close(s.mean_tpot_ms, 38.75, 'mean tpot');
    close(s.median_tpot_ms, 38.75, 'median tpot');
    close(s.std_tpot_ms, 11.25, 'std tpot');
    close(s.p99_tpot_ms, 49.775, 'p99 tpot');
    close(s.mean_itl_ms, 37.5, 'mean itl');
    close(s.median_itl_ms, 40, 'median itl');
    close(s.std_itl_ms, Math.sqrt(168.75), 'std itl');
    close(s.p99_itl_ms, 50, 'p99 itl');
    close(s.mean_e2el_ms, 760 / 3, 'mean e2el');
    close(s.median_e2el_ms, 250, 'median e2el');
    close(s.p99_e2el_ms, 299, 'p99 e2el');
    assert.equal(s.max_concurrent_requests, 3);
    assert.equal(s.max_output_tokens_per_s, 7);
    // The simulator's nearest-rank keys beside vLLM's interpolated ones.
    assert.equal(s.ttft_p50_ms, 200);
    assert.equal(s.ttft_p99_ms, 300);
    assert.equal(s.tpot_p50_ms, 27.5);
  });

  test('goodput counts completed requests within every given bound (TPOT 0 for one token)', () => {
    const tl = handMade();
    const g = (slo: Parameters<typeof summarizeTimelines>[1]) => summarizeTimelines(tl, { durationS: 2, ...slo }).summary.request_goodput;
    assert.equal(g({ slo: { ttftMs: 250, tpotMs: 40 } }), 0.5); // a only: b's TPOT is 50, c's TTFT 300
    assert.equal(g({ slo: { e2elMs: 260 } }), 1); // a and b
    assert.equal(g({ slo: { tpotMs: 1 } }), 0.5); // c alone: one token, TPOT taken as 0
    assert.equal(g({ slo: { ttftMs: 0 } }), 0);
  });

  test('outcomes, value realized by each request’s own SLO, welfare, bills, quotes', () => {
    const { summary: s, outcomes } = summarizeTimelines(handMade(), { durationS: 2, basePrice: 0.01, policy: 'shadow', preempted: 4 });
    assert.deepEqual(
      outcomes.map((o) => [o.id, o.outcome, o.met_slo, o.value]),
      [
        ['a', 'completed', true, 2],
        ['b', 'completed', false, 0], // TTFT 200 > its 100
        ['c', 'completed', true, 0.5], // bid 0.5 × 1 token
        ['d', 'rejected', false, 0],
        ['e', 'rejected', false, 0],
        ['f', 'rejected', false, 0],
        ['g', 'aborted', false, 0],
        ['h', 'aborted', false, 0],
      ],
    );
    assert.equal(outcomes[7]?.lost, true);
    assert.equal(outcomes[6]?.lost, undefined);
    assert.equal(outcomes[6]?.error, 'internal error');
    assert.deepEqual(outcomes[3]?.quote, { reason: 'price_above_bid', message: '', pricePerToken: 0.01, pricePerKvBlockSecond: 0, minValue: 1, valueCounted: 0.5, retryable: true, expectedWaitMs: 100 });
    assert.equal(outcomes[3]?.prompt_tokens, 9);
    assert.equal(outcomes[3]?.output_tokens, 0);
    assert.deepEqual([outcomes[0]?.ttft_ms, outcomes[0]?.tpot_ms, outcomes[0]?.e2e_ms, outcomes[0]?.cached_tokens], [100, 27.5, 210, 4]);
    assert.equal(outcomes[2]?.tpot_ms, null);
    assert.equal(outcomes[3]?.ttft_ms, null);
    assert.equal(s.policy, 'shadow');
    assert.equal(s.preempted, 4);
    assert.equal(s.requests, 8);
    assert.deepEqual([s.rejected, s.budget_exhausted, s.aborted, s.lost], [2, 1, 1, 1]);
    assert.equal(s.slo_met, 2);
    close(s.goodput_rps, 1, 'goodput_rps');
    close(s.value_realized, 2.5, 'value realized');
    // Computed tokens: a (10 − 4 cached) + 5, b 20 + 2, c 8 + 1 = 42 at 0.01.
    close(s.welfare, 2.5 - 0.42, 'welfare');
    close(s.billed, 0.75, 'billed');
    close(s.cache_hit_rate, 4 / 38, 'cache hit rate');
    close(s.mean_quote_price, 0.02, 'mean quote price');
  });

  test('edge cases: nothing completed gives vLLM zeros, not NaN', () => {
    const { summary: s } = summarizeTimelines([{ ...base('x', 0), status: 429 }], { durationS: 1 });
    assert.equal(s.completed, 0);
    assert.equal(s.mean_ttft_ms, 0);
    assert.equal(s.p99_itl_ms, 0);
    assert.equal(s.ttft_p99_ms, null);
    assert.equal(s.mean_quote_price, null);
    assert.equal(s.cache_hit_rate, 0);
    assert.equal(npPercentile([], 50), 0);
    assert.equal(npPercentile([1, 2, 3, 4], 50), 2.5);
  });

  test('arrivals: gamma gaps rescaled so the last send is at N/rate, deterministic by seed', () => {
    const a = arrivalSchedule(50, 10, 1, 7);
    assert.equal(a.length, 50);
    close(a[49], 5, 'last arrival');
    for (let i = 1; i < a.length; i++) assert.ok((a[i] as number) >= (a[i - 1] as number));
    assert.ok((a[0] as number) > 0); // vLLM waits a gap before the first request too
    assert.deepEqual(arrivalSchedule(50, 10, 1, 7), a);
    assert.notDeepEqual(arrivalSchedule(50, 10, 1, 8), a);
    assert.deepEqual(arrivalSchedule(3, Infinity, 1, 7), [0, 0, 0]);
    const uniform = arrivalSchedule(4, 2, Infinity, 0);
    [0.5, 1, 1.5, 2].forEach((x, i) => close(uniform[i], x, `uniform ${i}`));
    close(arrivalSchedule(20, 4, 0.3, 1)[19], 5, 'bursty last arrival');
  });

  test('random lengths follow vLLM’s range ratio; prompts share text exactly where prefixes do', () => {
    for (const l of randomLengths(200, 100, 10, 0.5, 3)) {
      assert.ok(l.input >= 50 && l.input <= 150, `input ${l.input}`);
      assert.ok(l.output >= 5 && l.output <= 15, `output ${l.output}`);
    }
    assert.deepEqual(new Set(randomLengths(20, 30, 7, 0, 1).map((l) => `${l.input}/${l.output}`)), new Set(['30/7']));
    assert.equal(promptText(40, 1).split(' ').length, 40);
    assert.equal(promptText(40, 1), promptText(40, 1));
    assert.notEqual(promptText(40, 1), promptText(40, 2));
    const x = promptText(40, 1, [11, 12, 13], 8).split(' ');
    const y = promptText(40, 2, [11, 12, 99], 8).split(' ');
    assert.deepEqual(x.slice(0, 16), y.slice(0, 16));
    assert.notDeepEqual(x.slice(16, 24), y.slice(16, 24));
    assert.equal(x.length, 40);
  });

  test('CLI parsing: --slo pairs, --percentiles, --rate inf, bad input', async () => {
    assert.deepEqual(parseSlo(['ttft:500', 'tpot:50']), { ttftMs: 500, tpotMs: 50 });
    assert.deepEqual(parseSlo('e2el:3000'), { e2elMs: 3000 });
    assert.throws(() => parseSlo(['latency:5']), /ttft, tpot, e2el/);
    assert.throws(() => parseSlo(['ttft:-1']), /milliseconds/);
    assert.deepEqual(parsePercentiles('50,90,99.9'), [50, 90, 99.9]);
    assert.throws(() => parsePercentiles('101'), /\[0, 100\]/);
    assert.equal((await benchOptionsFromCli({ url: 'http://127.0.0.1:1', rate: 'inf' })).rate, Infinity);
    const bad = (o: Parameters<typeof benchOptionsFromCli>[0], re: RegExp) => assert.rejects(benchOptionsFromCli(o), (e: Error & { code?: string }) => e.code === 'MARGINAL_INVALID_ARGUMENT' && re.test(e.message));
    await bad({ url: 'http://127.0.0.1:1', rate: '0' }, /rate/);
    await bad({ url: 'http://127.0.0.1:1', rate: 'fast' }, /rate/);
    await bad({ url: 'http://127.0.0.1:1', endpoint: '/v1/embeddings' }, /endpoint/);
    await bad({ url: 'http://127.0.0.1:1', requests: '2.5' }, /integer/);
    await assert.rejects(benchServe({ url: 'not a url' }), /absolute http/);
    await assert.rejects(benchServe({ url: 'ftp://127.0.0.1/' }), /http\(s\) URL/);
    await assert.rejects(benchServe({ url: 'http://127.0.0.1:1', rate: -1 }), /rate/);
  });

  test('the human table has vLLM’s layout', () => {
    const { summary } = summarizeTimelines(handMade(), { durationS: 2, slo: { ttftMs: 250 } });
    const text = formatBenchSummary(summary, { maxConcurrency: 4, rate: 10, percentiles: [99] });
    const lines = text.split('\n');
    assert.equal(lines[0], '============ Serving Benchmark Result ============');
    assert.ok(lines.includes('Successful requests:                     3'));
    assert.ok(lines.includes('Request goodput (req/s):                 1.00')); // a and b within 250 ms
    assert.ok(lines.includes('---------------Time to First Token----------------'));
    assert.ok(lines.includes('P99 TTFT (ms):                           298.00'));
  });
});

describe('bench serve against a fake server: every kind of answer', () => {
  let server: HttpServer;
  let url: string;
  let scrapes = 0;
  before(async () => {
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      if (req.method === 'GET' && req.url === '/v1/models') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ object: 'list', data: [{ id: 'fake', policy: 'shadow', max_model_len: 4096 }] }));
        return;
      }
      if (req.method === 'GET' && req.url === '/metrics') {
        scrapes++;
        res.writeHead(200, { 'content-type': 'text/plain' }).end(`# HELP x\nvllm:num_preemptions_total{model_name="fake"} ${scrapes === 1 ? 3 : 5}\n`);
        return;
      }
      let raw = '';
      req.on('data', (d: Buffer) => (raw += d.toString()));
      req.on('end', () => {
        const body = JSON.parse(raw) as { max_tokens: number; stream_options?: { include_usage?: boolean } };
        const sse = (o: unknown) => res.write(`data: ${JSON.stringify(o)}\n\n`);
        const choice = (text: string, finish: string | null = null) => ({ choices: [{ index: 0, text, finish_reason: finish }] });
        // The output length picks the answer, so the client's send order does not matter.
        switch (body.max_tokens) {
          case 1:
          case 2:
            res.writeHead(429, { 'content-type': 'application/json', 'x-marginal-price': String(body.max_tokens * 0.01), 'retry-after': '1' });
            res.end(JSON.stringify({ error: { message: 'price above bid', type: 'rate_limit_error' }, quote: { price_per_token: body.max_tokens === 1 ? 0.01 : 0.03, min_value: 1, expected_wait_ms: 500, reason: 'price above bid' } }));
            return;
          case 3:
            res.writeHead(402, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: 'budget exhausted' } }));
            return;
          case 4:
            res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: 'internal error' } }));
            return;
          case 5:
            res.writeHead(200, { 'content-type': 'text/event-stream' });
            sse(choice('a'));
            sse({ error: { message: 'engine failed', type: 'server_error' } });
            res.end('data: [DONE]\n\n');
            return;
          case 6:
            res.writeHead(200, { 'content-type': 'text/event-stream' });
            sse(choice('a'));
            setTimeout(() => res.socket?.destroy(), 20);
            return;
          case 7:
            res.writeHead(200, { 'content-type': 'text/event-stream' });
            // One network write holding three events: they share one arrival time, as in vLLM.
            res.write(['x', 'y'].map((t) => `data: ${JSON.stringify(choice(t))}\n\n`).join(''));
            setTimeout(() => {
              sse(choice('z'));
              sse({ ...choice('', 'length'), bill: bill(0.125) });
              if (body.stream_options?.include_usage) sse({ choices: [], usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18, prompt_tokens_details: { cached_tokens: 3 } }, bill: bill(0.125) });
              res.end('data: [DONE]\n\n');
            }, 10);
            return;
          default:
            // Never answers: the client's timeout must end it.
            return;
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  test('429s with quotes, 402, 500, an error event, a cut stream and a timeout are told apart', async () => {
    const trace: TraceRequest[] = [1, 2, 3, 4, 5, 6, 7, 8].map((n, i) => ({ id: `r${n}`, t: i * 0.001, promptTokens: 5, outputTokens: n, tenant: 'default', prefix: [], prefixBlockTokens: 16 }));
    const r = await benchServe({ url: `${url}/v1/`, trace, timeoutMs: 500, percentiles: [99] });
    assert.deepEqual(
      r.outcomes.map((o) => [o.id, o.outcome, o.status, o.lost ?? false]),
      [
        ['r1', 'rejected', 429, false],
        ['r2', 'rejected', 429, false],
        ['r3', 'rejected', 402, false],
        ['r4', 'aborted', 500, false],
        ['r5', 'aborted', 200, false],
        ['r6', 'aborted', 200, true],
        ['r7', 'completed', 200, false],
        ['r8', 'aborted', null, true],
      ],
    );
    const s = r.summary;
    assert.equal(r.model, 'fake');
    assert.equal(s.policy, 'shadow');
    assert.equal(s.preempted, 2);
    assert.deepEqual([s.completed, s.rejected, s.budget_exhausted, s.aborted, s.lost], [1, 2, 1, 2, 2]);
    close(s.mean_quote_price, 0.02, 'mean quote price');
    assert.equal(r.outcomes[4]?.error, 'engine failed');
    assert.match(r.outcomes[7]?.error ?? '', /timed out/);
    const ok = r.outcomes[6];
    assert.deepEqual([ok?.output_tokens, ok?.prompt_tokens, ok?.cached_tokens, ok?.bill?.total], [7, 11, 3, 0.125]);
    assert.equal(r.timelines[6]?.chunks.length, 3);
    assert.equal(r.samples.itl.length, 2);
    assert.equal(r.samples.itl[0], 0); // x and y came in one read
    close(s.billed, 0.125, 'billed');
  });
});

describe('bench serve against the real server on a synthetic model', () => {
  let url: string;
  let stop: () => Promise<void>;
  before(async () => {
    const model = await loadModelDir(synthTiny());
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 4 });
    const { app } = buildServer({ model, generator: new Generator(engine, model) });
    await app.listen({ host: '127.0.0.1', port: 0 });
    url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    stop = async () => {
      await app.close();
      await engine.dispose();
    };
  });
  after(async () => stop());

  const checkRun = (r: Awaited<ReturnType<typeof benchServe>>, n: number, maxOutput: number) => {
    assert.equal(r.summary.requests, n);
    assert.equal(r.summary.completed, n, JSON.stringify(r.outcomes.filter((o) => o.outcome !== 'completed')));
    assert.equal(r.summary.lost, 0);
    assert.equal(r.summary.failed, 0);
    assert.deepEqual(
      r.outcomes.map((o) => o.id),
      Array.from({ length: n }, (_, i) => String(i)),
    );
    let itls = 0;
    let out = 0;
    r.timelines.forEach((t, i) => {
      const usage = t.usage;
      assert.ok(usage?.completion_tokens !== undefined && usage.prompt_tokens !== undefined, 'usage came back');
      assert.equal(r.outcomes[i]?.output_tokens, usage.completion_tokens);
      assert.equal(r.outcomes[i]?.prompt_tokens, usage.prompt_tokens);
      assert.ok(t.chunks.length <= usage.completion_tokens);
      assert.ok(usage.completion_tokens <= maxOutput);
      itls += Math.max(0, t.chunks.length - 1);
      out += usage.completion_tokens;
    });
    assert.equal(r.samples.itl.length, itls);
    assert.equal(r.summary.total_output_tokens, out);
    assert.equal(r.samples.ttft.length, n);
    assert.equal(r.summary.policy, 'fcfs', 'read from /v1/models');
    assert.equal(r.model, 'synthetic-tiny');
  };

  test('20 requests at a high rate, open loop', async () => {
    const r = await benchServe({ url, requests: 20, rate: 500, inputLen: 16, outputLen: 8, seed: 1 });
    checkRun(r, 20, 8);
    assert.equal(r.summary.request_goodput, null);
  });

  test('20 requests, closed loop with max concurrency 4, goodput with generous SLOs', async () => {
    const r = await benchServe({ url, requests: 20, maxConcurrency: 4, inputLen: 16, outputLen: 8, rangeRatio: 0.5, seed: 2, slo: { ttftMs: 600_000, e2elMs: 600_000 } });
    checkRun(r, 20, 12);
    assert.ok(r.summary.max_concurrent_requests <= 4, `peak ${r.summary.max_concurrent_requests}`);
    assert.ok((r.summary.request_goodput ?? 0) > 0);
  });

  test('the chat endpoint streams deltas the same way', async () => {
    const r = await benchServe({ url, endpoint: '/v1/chat/completions', requests: 5, inputLen: 8, outputLen: 8 });
    checkRun(r, 5, 8);
  });

  test('one definition of realized value: bench serve and the server\'s /metrics agree on the same run', async () => {
    const path = join(tempDir('bench'), 'agree.jsonl');
    const reqs: TraceRequest[] = Array.from({ length: 12 }, (_, i) => ({
      id: String(i),
      t: i * 0.01,
      promptTokens: 8 + (i % 5),
      outputTokens: 4 + (i % 4),
      // Values, bids, SLOs some of which are missed, and requests with no value (the server's default bid).
      ...(i % 3 === 0 ? { value: 1 + i } : i % 3 === 1 ? { bid: 0.05 } : {}),
      ...(i % 4 === 0 ? { slo: { ttftMs: 0.001 } } : i % 4 === 1 ? { slo: { ttftMs: 600_000, tpotMs: 600_000 } } : {}),
      tenant: 'default',
      prefix: [],
      prefixBlockTokens: 16,
    }));
    await writeTrace(path, reqs);
    const trace = await readTraceFromCli({ trace: path });
    const before = await (await fetch(`${url}/metrics`)).text();
    const r = await benchServe({ url, trace });
    const after = await (await fetch(`${url}/metrics`)).text();
    const delta = (name: string) => (promCounter(after, name) ?? NaN) - (promCounter(before, name) ?? 0);
    assert.equal(r.summary.completed, 12);
    close(r.summary.value_realized, delta('marginal_value_realized_total'), 'value realized: bench vs /metrics');
    close(r.summary.billed, delta('marginal_revenue_total'), 'billed: bench vs /metrics');
    assert.ok(r.outcomes.some((o) => !o.met_slo) && r.outcomes.some((o) => o.met_slo && o.value > 0));
  });

  test('input lengths past the model context are refused before sending', async () => {
    await assert.rejects(benchServe({ url, requests: 2, inputLen: 300, outputLen: 8 }), /context of 256/);
  });

  test('a JSONL trace replays in order with its own values', async () => {
    const path = join(tempDir('bench'), 'trace.jsonl');
    const reqs: TraceRequest[] = [
      { id: 'a', t: 0, promptTokens: 12, outputTokens: 6, value: 1.5, slo: { ttftMs: 600_000, tpotMs: 600_000 }, tenant: 'interactive', prefix: [1, 2], prefixBlockTokens: 4 },
      { id: 'b', t: 0.02, promptTokens: 10, outputTokens: 4, bid: 0.25, tenant: 'batch', prefix: [1, 2], prefixBlockTokens: 4 },
      // Missed for sure: no answer comes back within a microsecond.
      { id: 'c', t: 0.04, promptTokens: 8, outputTokens: 5, value: 3, slo: { ttftMs: 0.001 }, tenant: 'standard', prefix: [], prefixBlockTokens: 16 },
      { id: 'd', t: 0.05, promptTokens: 9, outputTokens: 3, value: 2, deadlineMs: 600_000, tenant: 'batch', prefix: [], prefixBlockTokens: 16 },
    ];
    await writeTrace(path, reqs);
    const trace = await readTraceFromCli({ trace: path });
    const r = await benchServe({ url, trace, basePrice: 0 });
    assert.deepEqual(
      r.outcomes.map((o) => [o.id, o.tenant, o.outcome, o.met_slo]),
      [
        ['a', 'interactive', 'completed', true],
        ['b', 'batch', 'completed', true],
        ['c', 'standard', 'completed', false],
        ['d', 'batch', 'completed', true],
      ],
    );
    const outB = r.outcomes[1]?.output_tokens ?? NaN;
    assert.deepEqual(
      r.outcomes.map((o) => o.value),
      [1.5, 0.25 * outB, 0, 2],
    );
    close(r.summary.value_realized, 1.5 + 0.25 * outB + 2, 'value realized');
    for (const o of r.outcomes) assert.equal(r.timelines.find((t) => t.id === o.id)?.outcome?.value_realized, o.value, 'the server\'s verdict');
    close(r.summary.welfare, r.summary.value_realized, 'welfare at base price 0');
    assert.equal(r.summary.lost, 0);
    assert.equal(r.summary.slo_met, 3);
  });
});
