import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { Ledger } from '../src/economy/ledger.js';
import { Generator } from '../src/serving/generator.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { buildServer, type Server } from '../src/server/app.js';
import type { QuoteBody } from '../src/server/quote.js';
import { parseApiKeys } from '../src/server/tenants.js';
import { synthTiny } from './helpers/models.js';
import { testProviders } from './helpers/providers.js';

/** The economy over HTTP: 429 semantics, escrowed budgets, one price everywhere, the SDK's retries. */

interface Live {
  server: Server;
  base: string;
  ledger: Ledger;
  close(): Promise<void>;
}

async function start(model: LoadedModel, keys?: unknown, maxValue = 10): Promise<Live> {
  const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 8 });
  const tenants = keys ? parseApiKeys(keys) : undefined;
  const ledger = new Ledger({ defaultMaxValue: maxValue });
  for (const t of tenants?.tenants() ?? []) {
    if (Number.isFinite(t.budget)) ledger.setBudget(t.name, t.budget);
    if (t.maxValue !== undefined) ledger.setMaxValue(t.name, t.maxValue);
  }
  const generator = new Generator(engine, model, { policy: 'shadow', ledger, defaultBid: (tenant) => tenants?.tenants().find((t) => t.name === tenant)?.defaultBid ?? 0.01 });
  const server = buildServer({ model, generator, ...(tenants ? { tenants } : {}) });
  await server.app.listen({ host: '127.0.0.1', port: 0 });
  const base = `http://127.0.0.1:${(server.app.server.address() as AddressInfo).port}`;
  return {
    server,
    base,
    ledger,
    close: async () => {
      await server.drain();
      await engine.dispose();
    },
  };
}

async function post(base: string, body: object, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, unknown>; headers: Headers; text: string }> {
  const res = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    json = {};
  }
  return { status: res.status, json, headers: res.headers, text };
}

async function metric(base: string, name: string, label = ''): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  let sum = 0;
  for (const l of text.split('\n')) if ((l.startsWith(name + '{') || l.startsWith(name + ' ')) && l.includes(label)) sum += Number(l.split(' ').pop());
  return sum;
}

const quoteOf = (r: { json: Record<string, unknown> }) => (r.json.error as { quote: QuoteBody }).quote;

describe('the economy over HTTP (synthetic model)', () => {
  let model: LoadedModel;
  before(async () => {
    model = await loadModelDir(synthTiny());
  });

  test('an SLO that cannot be met is answered at once with slo_unreachable, not retryable, and a meaningful quote', async () => {
    const live = await start(model);
    try {
      for (const extra of [{ slo: { ttft_ms: 1e-6 } }, { deadline_ms: 1e-300 }]) {
        const r = await post(live.base, { prompt: 'hello there', max_tokens: 8, temperature: 0, ...extra });
        assert.equal(r.status, 429, r.text);
        const q = quoteOf(r);
        assert.equal(q.reason, 'slo_unreachable');
        assert.equal(q.retryable, false, 'not even an idle server meets it');
        assert.equal(q.expected_wait_ms, null);
        assert.equal(r.headers.get('x-should-retry'), 'false');
        assert.equal(r.headers.get('retry-after'), null);
        assert.ok(q.value_counted > 0, 'the default bid counted it at something');
        for (const v of Object.values(q)) assert.ok(v === null || typeof v !== 'number' || Number.isFinite(v));
      }
      assert.equal(await metric(live.base, 'vllm:generation_tokens_total'), 0, 'nothing ran');
    } finally {
      await live.close();
    }
  });

  test('plain and streamed 429s carry the same headers and body', async () => {
    const live = await start(model);
    try {
      const body = { prompt: 'hello there', max_tokens: 8, temperature: 0, bid: 1e-12 };
      // The floor price is 0 by default: make the idle price matter with a bid of zero worth and a tight SLO.
      const plain = await post(live.base, { ...body, slo: { ttft_ms: 1e-6 } });
      const streamed = await post(live.base, { ...body, slo: { ttft_ms: 1e-6 }, stream: true });
      assert.equal(plain.status, 429);
      assert.equal(streamed.status, 429);
      assert.match(streamed.headers.get('content-type') ?? '', /application\/json/);
      for (const h of ['x-marginal-reason', 'x-marginal-price-token', 'x-marginal-price-kv-block-second', 'x-marginal-min-value', 'x-should-retry', 'retry-after']) {
        assert.equal(streamed.headers.get(h), plain.headers.get(h), h);
      }
      assert.deepEqual(quoteOf(streamed), quoteOf(plain));
      assert.equal((plain.json.error as { code: string }).code, 'slo_unreachable');
    } finally {
      await live.close();
    }
  });

  test('the official OpenAI SDK does not retry a 429 that says x-should-retry: false', async () => {
    const live = await start(model);
    try {
      const client = new OpenAI({ baseURL: `${live.base}/v1`, apiKey: 'unused', maxRetries: 2, timeout: 30_000 });
      const before = await metric(live.base, 'marginal_requests_rejected_total');
      await assert.rejects(
        client.completions.create({ model: model.name, prompt: 'hi', max_tokens: 4, slo: { ttft_ms: 1e-6 } } as unknown as OpenAI.CompletionCreateParamsNonStreaming),
        (e: unknown) => {
          const err = e as { status?: number; error?: { quote?: QuoteBody; code?: string } };
          assert.equal(err.status, 429);
          assert.equal(err.error?.code, 'slo_unreachable');
          assert.equal(err.error?.quote?.reason, 'slo_unreachable', 'the SDK error object exposes the quote');
          return true;
        },
      );
      assert.equal((await metric(live.base, 'marginal_requests_rejected_total')) - before, 1, 'exactly one attempt');
    } finally {
      await live.close();
    }
  });

  test('64 concurrent requests against a tiny budget (official client) never overdraw it', async () => {
    const live = await start(model, { keys: [{ key: 'sk-tiny-00001', tenant: 'tiny', budget: 0.01, default_bid: 0.01 }] });
    try {
      const client = new OpenAI({ baseURL: `${live.base}/v1`, apiKey: 'sk-tiny-00001', maxRetries: 0, timeout: 60_000 });
      const results = await Promise.allSettled(
        Array.from({ length: 64 }, () => client.completions.create({ model: model.name, prompt: 'Once upon a time', max_tokens: 16, temperature: 0, value: 0.004 } as unknown as OpenAI.CompletionCreateParamsNonStreaming)),
      );
      const ok = results.filter((r) => r.status === 'fulfilled');
      const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      assert.ok(ok.length >= 1, 'some were served');
      for (const f of failed) {
        const e = f.reason as { status?: number; error?: { code?: string } };
        assert.ok(e.status === 429 || e.status === 402, `status ${e.status}`);
        assert.ok(['value_cap', 'budget_exhausted', 'price_above_bid'].includes(e.error?.code ?? ''), e.error?.code);
      }
      let billed = 0;
      for (const r of ok) billed += ((r as PromiseFulfilledResult<unknown>).value as { bill: { total: number } }).bill.total;
      const account = live.ledger.account('tiny');
      assert.ok(account.spent <= 0.01 + 1e-12, `spent ${account.spent}`);
      assert.ok(Math.abs(account.spent - billed) < 1e-12, 'the ledger charged exactly the bills');
      assert.equal(account.escrowed, 0);
      assert.ok((await metric(live.base, 'marginal_budget_remaining', 'tiny')) >= 0);
    } finally {
      await live.close();
    }
  });

  test('a claim is capped: value 1e308 counts at --max-value, and /metrics stays finite', async () => {
    const live = await start(model, undefined, 3);
    try {
      const r = await post(live.base, { prompt: 'Once upon a time', max_tokens: 4, temperature: 0, value: 1e308 });
      assert.equal(r.status, 200, r.text);
      const outcome = r.json.outcome as { value_counted: number };
      assert.equal(outcome.value_counted, 3);
      assert.ok((r.json.bill as { cap: number }).cap <= 3);
      const text = await (await fetch(`${live.base}/metrics`)).text();
      assert.ok(!/\b(Infinity|NaN)\b/.test(text));
      assert.ok(Math.abs((await metric(live.base, 'marginal_value_realized_total')) - 3) < 1e-9);
    } finally {
      await live.close();
    }
  });
});

describe('quotes tell a client when waiting helps', () => {
  let model: LoadedModel;
  let live: Live;
  before(async () => {
    model = await loadModelDir(synthTiny());
    live = await start(model, { keys: [{ key: 'sk-tight-0001', tenant: 'tight', budget: 1, default_bid: 0.01 }] });
  });
  after(async () => live.close());

  test('value_cap while money is in flight is retryable, with the quoted wait', async () => {
    const auth = { authorization: 'Bearer sk-tight-0001' };
    // The first request escrows the whole budget for as long as it runs.
    const first = fetch(`${live.base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...auth }, body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 200, temperature: 0, value: 1 }) });
    for (let i = 0; i < 200 && live.ledger.account('tight').inFlight === 0; i++) await new Promise((r) => setTimeout(r, 5));
    const second = await post(live.base, { prompt: 'hello', max_tokens: 4, temperature: 0, value: 1 }, auth);
    assert.equal(second.status, 429, second.text);
    const q = quoteOf(second);
    assert.equal(q.reason, 'value_cap');
    assert.equal(q.retryable, true);
    assert.ok((q.expected_wait_ms as number) >= 0);
    assert.ok(Number(second.headers.get('retry-after')) >= 1);
    assert.equal(second.headers.get('x-should-retry'), 'true');
    const done = await first;
    assert.equal(done.status, 200);
    const bill = ((await done.json()) as { bill: { total: number } }).bill;
    assert.ok(bill.total <= 1);
    // Spend the rest: a request whose charge can be the whole remainder.
    const account = live.ledger.account('tight');
    assert.ok(account.spent + account.escrowed <= 1 + 1e-12);
  });
});
