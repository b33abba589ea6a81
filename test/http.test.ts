import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { parseCurveFile } from '../src/economy/curves.js';
import { Ledger } from '../src/economy/ledger.js';
import { Generator } from '../src/serving/generator.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { buildServer, type Server } from '../src/server/app.js';
import type { QuoteBody } from '../src/server/quote.js';
import { parseApiKeys } from '../src/server/tenants.js';
import { importStories260K, stories260K, tempDir } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';
import { testProviders } from './helpers/providers.js';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

interface Live {
  server: Server;
  base: string;
  client: OpenAI;
  engine: OnnxEngine;
  generator: Generator;
  close(): Promise<void>;
}

async function start(model: LoadedModel, opts: { policy?: string; maxSequences?: number; curves?: ReturnType<typeof parseCurveFile>; apiKeys?: unknown; ledger?: Ledger } = {}): Promise<Live> {
  const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: opts.maxSequences ?? 8 });
  const tenants = opts.apiKeys ? parseApiKeys(opts.apiKeys) : undefined;
  const generator = new Generator(engine, model, {
    policy: opts.policy ?? 'shadow',
    defaultBid: () => 0.01,
    ...(opts.curves ? { curves: opts.curves } : {}),
    ...(opts.ledger ? { ledger: opts.ledger } : {}),
  });
  const server = buildServer({ model, generator, ...(tenants ? { tenants } : {}) });
  await server.app.listen({ host: '127.0.0.1', port: 0 });
  const base = `http://127.0.0.1:${(server.app.server.address() as AddressInfo).port}`;
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
  return {
    server,
    base,
    client,
    engine,
    generator,
    close: async () => {
      await server.drain();
      await engine.dispose();
    },
  };
}

async function post(base: string, path: string, body: string | object, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, unknown> & { error?: { message: string; type: string; param: string | null; code: string | null } }; headers: Headers }> {
  const res = await fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    json = { raw: text };
  }
  return { status: res.status, json, headers: res.headers };
}

async function metricValue(base: string, name: string, label = ''): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => (l.startsWith(name + '{') || l.startsWith(name + ' ')) && l.includes(label));
  if (line === undefined) throw new Error(`metric ${name} not exposed`);
  return Number(line.split(' ').pop());
}

describe('OpenAI-compatible server on stories260K', { skip: sharedSkipReason() }, () => {
  let model: LoadedModel;
  let live: Live;
  before(async () => {
    model = await loadModelDir(importStories260K());
    live = await start(model);
  });
  after(async () => live.close());

  test('the official openai client: completions, chat, streaming with usage, cached tokens and bills', async () => {
    const { client } = live;
    const plain = await client.completions.create({ model: 'stories260K', prompt: 'Zoo', max_tokens: 57, temperature: 0 });
    assert.equal('Zoo' + plain.choices[0]?.text, stories260K.referenceZoo);
    assert.equal(plain.choices[0]?.finish_reason, 'length');
    assert.equal(plain.usage?.completion_tokens, 57);
    assert.equal(plain.usage?.prompt_tokens, 4);
    assert.equal(typeof (plain.usage as unknown as { prompt_tokens_details: { cached_tokens: number } }).prompt_tokens_details.cached_tokens, 'number');
    const bill = (plain as unknown as { bill: { total: number; completion_tokens: number } }).bill;
    assert.equal(bill.completion_tokens, 57);
    assert.ok(bill.total >= 0);

    let streamed = '';
    let usage: { completion_tokens: number } | undefined;
    for await (const chunk of await client.completions.create({ model: 'stories260K', prompt: 'Zoo', max_tokens: 57, temperature: 0, stream: true, stream_options: { include_usage: true } })) {
      streamed += chunk.choices[0]?.text ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(streamed, plain.choices[0]?.text);
    assert.equal(usage?.completion_tokens, 57);

    const chat = await client.chat.completions.create({ model: 'stories260K', messages: [{ role: 'user', content: 'Tell me a story about a cat.' }], max_tokens: 40, temperature: 0 });
    assert.equal(chat.object, 'chat.completion');
    assert.equal(chat.choices[0]?.message.role, 'assistant');
    assert.ok((chat.choices[0]?.message.content ?? '').length > 0);
    let chatStreamed = '';
    let sawRole = false;
    for await (const chunk of await client.chat.completions.create({ model: 'stories260K', messages: [{ role: 'user', content: 'Tell me a story about a cat.' }], max_tokens: 40, temperature: 0, stream: true })) {
      if (chunk.choices[0]?.delta.role === 'assistant') sawRole = true;
      chatStreamed += chunk.choices[0]?.delta.content ?? '';
    }
    assert.ok(sawRole);
    assert.equal(chatStreamed, chat.choices[0]?.message.content);
  });

  test('greedy completion over HTTP equals marginal generate', async () => {
    const prompt = 'The little bird';
    const cliOut = spawnSync(process.execPath, [cli, 'generate', '--model', model.dir, '--prompt', prompt, '--max-tokens', '40', '--temperature', '0'], { encoding: 'utf8', env: { ...process.env, MARGINAL_PROVIDERS: 'cpu' } });
    assert.equal(cliOut.status, 0, cliOut.stderr);
    const http = await live.client.completions.create({ model: 'stories260K', prompt, max_tokens: 40, temperature: 0 });
    assert.equal(http.choices[0]?.text, cliOut.stdout);
  });

  test('price headers on every response; /v1/models, /health and vLLM metrics', async () => {
    const models = await fetch(`${live.base}/v1/models`);
    assert.ok(models.headers.get('x-marginal-price-token') !== null);
    const body = (await models.json()) as { data: { id: string; max_model_len: number; synthetic: boolean }[] };
    assert.equal(body.data[0]?.id, 'stories260K');
    assert.equal(body.data[0]?.synthetic, false);
    assert.equal((await fetch(`${live.base}/health`)).status, 200);
    const text = await (await fetch(`${live.base}/metrics`)).text();
    for (const name of ['vllm:num_requests_waiting', 'vllm:num_requests_running', 'vllm:kv_cache_usage_perc', 'vllm:cache_config_info', 'vllm:time_to_first_token_seconds', 'vllm:e2e_request_latency_seconds', 'marginal_price_token']) {
      assert.ok(text.includes(name), `metrics expose ${name}`);
    }
  });

  test('malformed and hostile requests get the documented 4xx while concurrent good requests keep being served', async () => {
    const { base, client } = live;
    const good = Array.from({ length: 4 }, () => client.completions.create({ model: 'stories260K', prompt: 'Zoo', max_tokens: 57, temperature: 0, stream: false }));
    const big = 'x'.repeat(3 * 1024 * 1024);
    const deep = '['.repeat(20000) + ']'.repeat(20000);
    const C = '/v1/completions';
    const H = '/v1/chat/completions';
    const cases: [string, string, string | object, number, string?, Record<string, string>?][] = [
      ['invalid JSON', C, '{"prompt": "x",', 400],
      ['empty body', C, '', 400],
      ['array body', C, '[1,2]', 400],
      ['missing prompt', C, { max_tokens: 3 }, 400],
      ['prompt a number', C, { prompt: 42 }, 400],
      ['two prompts', C, { prompt: ['a', 'b'] }, 400, 'prompt'],
      ['token out of vocabulary', C, { prompt: [1, 100000] }, 400, 'prompt'],
      ['negative token', C, { prompt: [1, -4] }, 400],
      ['max_tokens 0', C, { prompt: 'x', max_tokens: 0 }, 400, 'max_tokens'],
      ['max_tokens a string', C, { prompt: 'x', max_tokens: '10' }, 400],
      ['max_tokens past the context', C, { prompt: 'x', max_tokens: 100000 }, 400, 'max_tokens'],
      ['temperature -1', C, { prompt: 'x', temperature: -1 }, 400, 'temperature'],
      ['temperature 3', C, { prompt: 'x', temperature: 3 }, 400, 'temperature'],
      ['top_p 0', C, { prompt: 'x', top_p: 0 }, 400, 'top_p'],
      ['top_p 1.5', C, { prompt: 'x', top_p: 1.5 }, 400, 'top_p'],
      ['n 0', C, { prompt: 'x', n: 0 }, 400, 'n'],
      ['five stop strings', C, { prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e'] }, 400, 'stop'],
      ['empty stop string', C, { prompt: 'x', stop: [''] }, 400, 'stop'],
      ['fractional seed', C, { prompt: 'x', seed: 1.5 }, 400],
      ['unknown model', C, { prompt: 'x', model: 'gpt-9' }, 404, 'model'],
      ['prompt longer than the context', C, { prompt: 'Once upon a time there was a cat. '.repeat(80) }, 400],
      ['logprobs past 20', C, { prompt: 'x', logprobs: 21 }, 400, 'logprobs'],
      ['best_of below n', C, { prompt: 'x', n: 3, best_of: 2 }, 400, 'best_of'],
      ['best_of streamed', C, { prompt: 'x', best_of: 3, stream: true }, 400, 'best_of'],
      ['presence_penalty 3', C, { prompt: 'x', presence_penalty: 3 }, 400, 'presence_penalty'],
      ['logit_bias outside the vocabulary', C, { prompt: 'x', logit_bias: { '100000': 5 } }, 400, 'logit_bias'],
      ['logit_bias 200', C, { prompt: 'x', logit_bias: { '5': 200 } }, 400, 'logit_bias'],
      ['repetition_penalty 0', C, { prompt: 'x', repetition_penalty: 0 }, 400, 'repetition_penalty'],
      ['min_p 2', C, { prompt: 'x', min_p: 2 }, 400, 'min_p'],
      ['min_tokens above max_tokens', C, { prompt: 'x', max_tokens: 3, min_tokens: 4 }, 400, 'min_tokens'],
      ['stop_token_ids outside the vocabulary', C, { prompt: 'x', stop_token_ids: [99999] }, 400, 'stop_token_ids'],
      ['a field no API defines', C, { prompt: 'x', frobnicate: 1 }, 400, 'frobnicate'],
      ['beam search', C, { prompt: 'x', use_beam_search: true }, 400, 'use_beam_search'],
      ['include_stop_str_in_output', C, { prompt: 'x', include_stop_str_in_output: true }, 400, 'include_stop_str_in_output'],
      ['chat top_logprobs without logprobs', H, { messages: [{ role: 'user', content: 'x' }], top_logprobs: 3 }, 400, 'top_logprobs'],
      ['chat echo', H, { messages: [{ role: 'user', content: 'x' }], echo: true }, 400, 'echo'],
      ['chat audio', H, { messages: [{ role: 'user', content: 'x' }], audio: { voice: 'alloy' } }, 400, 'audio'],
      ['negative SLO', C, { prompt: 'x', slo: { ttft_ms: -5 } }, 400],
      ['unknown SLO field', C, { prompt: 'x', slo: { p99_ms: 5 } }, 400],
      ['negative bid', C, { prompt: 'x', bid: -1 }, 400],
      ['priority a string', C, { prompt: 'x', priority: 'high' }, 400],
      ['stream a string', C, { prompt: 'x', stream: 'yes' }, 400],
      ['body over the limit', C, { prompt: big }, 413],
      ['text/plain body', C, 'prompt=x', 415, undefined, { 'content-type': 'text/plain' }],
      ['prototype pollution', C, '{"prompt": "x", "__proto__": {"admin": true}}', 400],
      ['deeply nested JSON', C, `{"prompt": ${deep}}`, 400],
      ['chat without messages', H, { messages: [] }, 400],
      ['chat with an unknown role', H, { messages: [{ role: 'wizard', content: 'x' }] }, 400],
      ['chat with an image', H, { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x' } }] }] }, 400, 'messages[0].content'],
      ['chat with a nameless tool', H, { messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: {} }] }, 400, 'tools'],
      ['chat JSON schema without a schema', H, { messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_schema' } }, 400, 'response_format'],
    ];
    assert.ok(cases.length >= 30);
    for (const [name, path, body, status, param, headers] of cases) {
      const r = await post(base, path, body, headers ?? {});
      assert.equal(r.status, status, `${name}: ${JSON.stringify(r.json).slice(0, 300)}`);
      assert.equal(typeof r.json.error?.message, 'string', `${name}: OpenAI-style error body`);
      assert.ok(r.json.error?.type, `${name}: error.type`);
      if (param !== undefined) assert.equal(r.json.error?.param, param, `${name}: error.param`);
    }
    assert.equal((await fetch(`${base}/v1/nope`)).status, 404);
    assert.equal((await fetch(`${base}/v1/completions`)).status, 404);
    for (const r of await Promise.all(good)) assert.equal('Zoo' + r.choices[0]?.text, stories260K.referenceZoo);
    assert.equal((await fetch(`${base}/health`)).status, 200);
  });

  test('a client that disconnects mid-stream frees its KV blocks within a step', async () => {
    const { base } = live;
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => {});
      req.end(JSON.stringify({ prompt: 'Once upon a time', max_tokens: 500, temperature: 0.9, stream: true }));
      setTimeout(() => reject(new Error('no first chunk')), 30_000);
    });
    let running = 1;
    let usage = 1;
    for (let i = 0; i < 200 && (running > 0 || usage > 0); i++) {
      await new Promise((r) => setTimeout(r, 20));
      running = await metricValue(base, 'vllm:num_requests_running');
      usage = await metricValue(base, 'vllm:kv_cache_usage_perc');
    }
    assert.equal(running, 0);
    assert.equal(usage, 0);
    assert.equal(live.generator.scheduler.blocks.heldBlocks, 0);
    for (let i = 0; i < 100 && live.engine.openSequences > 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(live.engine.openSequences, 0, 'the engine holds nothing either');
    assert.equal(await metricValue(base, 'vllm:request_success_total', 'finished_reason="abort"'), 1, 'it ended by abort, not by running to completion');
  });
});

describe('overload, budgets and API keys', { skip: sharedSkipReason() }, () => {
  let model: LoadedModel;
  before(async () => {
    model = await loadModelDir(importStories260K());
  });

  test('an overload burst: requests that cannot clear get 429 with a quote; every admitted request completes', async () => {
    const curves = parseCurveFile({ tokens: { kind: 'power', p0: 1e-4, scale: 0.05, exponent: 2 }, kv: { kind: 'linear', p0: 0, slope: 0 } });
    const live = await start(model, { maxSequences: 4, curves });
    try {
      const burst = Array.from({ length: 40 }, (_, i) =>
        post(live.base, '/v1/completions', {
          prompt: 'Once upon a time',
          max_tokens: 48,
          temperature: 0,
          // A quarter bid far below the floor (turned away at once); the rest compete on value with a tight TTFT.
          ...(i % 4 === 0 ? { bid: 1e-9 } : { value: i % 2 ? 1 : 0.002, slo: { ttft_ms: 300 } }),
        }),
      );
      const results = await Promise.all(burst);
      const rejected = results.filter((r) => r.status === 429);
      const served = results.filter((r) => r.status === 200);
      assert.equal(rejected.length + served.length, 40, JSON.stringify(results.filter((r) => r.status !== 200 && r.status !== 429).map((r) => r.json)));
      assert.ok(rejected.length >= 10, `${rejected.length} rejected`);
      for (const r of rejected) {
        assert.equal(r.json.error?.type, 'rate_limit_error');
        const quote = (r.json.error as unknown as { quote: QuoteBody }).quote;
        assert.deepEqual(quote, (r.json as unknown as { quote: QuoteBody }).quote, 'the quote inside error and beside it');
        assert.equal(r.json.error?.code, quote.reason);
        assert.ok(['price_above_bid', 'slo_unreachable'].includes(quote.reason), quote.reason);
        assert.ok(quote.price_per_token > 0 && (quote.min_value === null || quote.min_value > 0));
        assert.equal(Number(r.headers.get('x-marginal-price-token')), quote.price_per_token, 'one price: header and quote');
        assert.equal(r.headers.get('x-marginal-reason'), quote.reason);
        if (quote.retryable) {
          assert.equal(Number(r.headers.get('retry-after')), Math.max(1, Math.ceil((quote.expected_wait_ms as number) / 1000)));
          assert.equal(r.headers.get('x-should-retry'), 'true');
        } else {
          assert.equal(r.headers.get('retry-after'), null, 'no retry-after when waiting cannot help');
          assert.equal(r.headers.get('x-should-retry'), 'false');
          assert.equal(quote.expected_wait_ms, null);
        }
      }
      // A bid a thousand times below the floor can never clear: told so, not invited back.
      const hopeless = results.filter((_, i) => i % 4 === 0);
      for (const r of hopeless) {
        assert.equal(r.status, 429);
        assert.equal((r.json.error as unknown as { quote: QuoteBody }).quote.reason, 'price_above_bid');
        assert.equal(r.headers.get('x-should-retry'), 'false');
      }
      for (const r of served) {
        const choice = (r.json.choices as { finish_reason: string; text: string }[])[0];
        assert.equal(choice?.finish_reason, 'length');
        assert.equal((r.json.usage as { completion_tokens: number }).completion_tokens, 48);
      }
      assert.equal(live.generator.scheduler.blocks.heldBlocks, 0);
    } finally {
      await live.close();
    }
  });

  test('API keys: 401 without a valid key; a spent budget gets 402; another tenant is unaffected', async () => {
    const ledger = new Ledger();
    ledger.setBudget('poor', 0);
    const live = await start(model, { apiKeys: { keys: [{ key: 'sk-poor-0001', tenant: 'poor', budget: 0 }, { key: 'sk-rich-0001', tenant: 'rich', default_bid: 0.05 }] }, ledger });
    try {
      const body = { prompt: 'Zoo', max_tokens: 8, temperature: 0 };
      assert.equal((await post(live.base, '/v1/completions', body)).status, 401);
      const wrong = await post(live.base, '/v1/completions', body, { authorization: 'Bearer sk-nobody-01' });
      assert.equal(wrong.status, 401);
      assert.equal(wrong.json.error?.code, 'invalid_api_key');
      const poor = await post(live.base, '/v1/completions', body, { authorization: 'Bearer sk-poor-0001' });
      assert.equal(poor.status, 402, JSON.stringify(poor.json));
      assert.equal(poor.json.error?.code, 'budget_exhausted');
      const rich = await post(live.base, '/v1/completions', body, { authorization: 'Bearer sk-rich-0001' });
      assert.equal(rich.status, 200);
    } finally {
      await live.close();
    }
  });

  test('marginal serve: SIGTERM stops accepting, finishes the stream in flight, exits 0', async () => {
    const dir = model.dir;
    const port = await new Promise<number>((resolve) => {
      const s = createServer();
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const child = spawn(process.execPath, [cli, 'serve', '--model', dir, '--port', String(port), '--providers', testProviders().join(',')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout.on('data', (d) => (log += d));
    child.stderr.on('data', (d) => (log += d));
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 300; i++) {
      try {
        if ((await fetch(`${base}/health`)).status === 200) break;
      } catch {
        /* not up yet */
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
    const stream = await client.completions.create({ model: 'stories260K', prompt: 'Zoo', max_tokens: 57, temperature: 0, stream: true });
    let text = '';
    let first = true;
    for await (const chunk of stream) {
      if (first) {
        first = false;
        child.kill('SIGTERM');
      }
      text += chunk.choices[0]?.text ?? '';
    }
    assert.equal('Zoo' + text, stories260K.referenceZoo, log);
    assert.equal(await exited, 0, log);
    await assert.rejects(fetch(`${base}/health`));
  });
});

describe('server configuration', () => {
  test('api keys file errors name the field', () => {
    assert.throws(() => parseApiKeys({ keys: [{ key: 'short', tenant: 'a' }] }), /keys\[0\]\.key/);
    assert.throws(() => parseApiKeys({ keys: [{ key: 'sk-long-enough', tenant: '' }] }), /keys\[0\]\.tenant/);
    assert.throws(() => parseApiKeys({ keys: 'x' }), /"keys" must be an array/);
    const dir = tempDir('keys');
    writeFileSync(join(dir, 'k.json'), '{');
    const r = spawnSync(process.execPath, [cli, 'serve', '--api-keys', join(dir, 'k.json'), '--port', '1'], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /not valid JSON/);
  });
});
