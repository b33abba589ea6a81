import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseCurveFile } from '../src/economy/curves.js';
import { Ledger } from '../src/economy/ledger.js';
import { Generator } from '../src/serving/generator.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { createLogger, resolveLogLevel, type LogLevel } from '../src/log.js';
import { loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { buildServer, type Server } from '../src/server/app.js';
import type { MarketView } from '../src/server/console/market.js';
import { percentiles, Sampler, type Tick } from '../src/server/console/sampler.js';
import type { RequestRecord } from '../src/server/journal.js';
import type { MetricsTotals } from '../src/server/metrics.js';
import { parseApiKeys } from '../src/server/tenants.js';
import { buildConsole } from '../web/build.mjs';
import { synthTiny, tempDir } from './helpers/models.js';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
// p_tok = 1e-4 + 0.05·u²: a bid of 1e-9 per token never clears, so 429s are deterministic.
const curveSpec = { tokens: { kind: 'power', p0: 1e-4, scale: 0.05, exponent: 2 }, kv: { kind: 'linear', p0: 0, slope: 1e-6 } };

interface Live {
  server: Server;
  base: string;
  lines: Array<Record<string, unknown>>;
  engine: OnnxEngine;
  generator: Generator;
  close(): Promise<void>;
}

async function start(model: LoadedModel, assetsDir: string, o: { level?: LogLevel; apiKeys?: unknown; metricsKey?: string; ledger?: Ledger } = {}): Promise<Live> {
  const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 4 });
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger(o.level ?? 'info', { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  const generator = new Generator(engine, model, { policy: 'shadow', defaultBid: () => 0.01, curves: parseCurveFile(curveSpec), ...(o.ledger ? { ledger: o.ledger } : {}) });
  const server = buildServer({
    model,
    generator,
    logger,
    console: { assetsDir },
    ...(o.apiKeys ? { tenants: parseApiKeys(o.apiKeys) } : {}),
    ...(o.metricsKey ? { metricsKey: o.metricsKey } : {}),
  });
  await server.app.listen({ host: '127.0.0.1', port: 0 });
  const base = `http://127.0.0.1:${(server.app.server.address() as AddressInfo).port}`;
  return {
    server,
    base,
    lines,
    engine,
    generator,
    close: async () => {
      await server.drain();
      await engine.dispose();
    },
  };
}

async function post(base: string, path: string, body: object, key?: string) {
  const res = await fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) }, body: JSON.stringify(body) });
  return { status: res.status, json: (await res.json()) as Record<string, any>, headers: res.headers };
}

async function getJson(base: string, path: string, key?: string) {
  const res = await fetch(base + path, { headers: key ? { authorization: `Bearer ${key}` } : {} });
  return { status: res.status, json: (await res.json()) as Record<string, any> };
}

/** Polls until `ok` holds (the journal records a request once its response has closed). */
async function until(ok: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(ok(), what);
}

const requestLines = (live: Live) => live.lines.filter((l) => l.msg === 'request');

describe('console sampler', () => {
  test('percentiles are nearest-rank p50, p90, p99', () => {
    assert.deepEqual(percentiles(Array.from({ length: 100 }, (_, i) => 100 - i)), [50, 90, 99]);
    assert.deepEqual(percentiles([7, null, 3]), [3, 7, 7]);
    assert.equal(percentiles([]), null);
    assert.equal(percentiles([null, Number.NaN]), null);
  });

  test('counters become per-second rates; latency and hit rate cover the window only', () => {
    let now = 1_000_000;
    const totals: MetricsTotals = { promptTokens: 0, generationTokens: 0, prefixQueriedTokens: 0, prefixHitTokens: 0, admitted: 0, preemptions: 0, swaps: 0, rejected: {}, valueRealized: 0, revenue: 0, welfare: 0 };
    const market: MarketView = {
      info: { model: 'm', synthetic: true, policy: 'shadow', provider: 'cpu', flavour: 'fast', maxSequences: 4, maxBatchTokens: 64, maxContext: 128, blockSize: 16, totalBlocks: 32, keys: false },
      snapshot: () => ({ priceToken: 2e-4, priceKv: 1e-6, reserveToken: 1e-4, reserveKv: 1e-6, utilTokens: 0.5, utilKv: 0.25, running: 3, waiting: 2, swapped: 1 }),
      reserveTokenPrice: (u) => u * u,
      reserveKvPrice: (u) => 2 * u,
      totals: () => structuredClone(totals),
      tenants: () => [],
    };
    const s = new Sampler(market, { windowSeconds: 30, history: 3, clock: () => now });
    const first = s.tick();
    assert.equal(first.sample.generationTps, 0, 'no rate before a previous sample');
    assert.deepEqual(first.curves.u.slice(0, 3), [0, 0.025, 0.05]);
    assert.equal(first.curves.token[20], 0.25);
    assert.equal(first.curves.kv[40], 2);

    now += 2000;
    totals.generationTokens = 300;
    totals.admitted = 4;
    totals.rejected = { price_above_bid: 6 };
    totals.prefixQueriedTokens = 100;
    totals.prefixHitTokens = 25;
    const rec = (ttft: number, tpot: number): RequestRecord => ({ id: 'x', time: now, method: 'POST', path: '/v1/completions', status: 200, outcome: 'completed', tenant: 'a', error_code: null, e2e_ms: 1, ttft_ms: ttft, tpot_ms: tpot });
    s.record(rec(10, 1));
    s.record(rec(30, 3));
    s.record({ ...rec(5000, 500), outcome: 'rejected' });
    const second = s.tick();
    assert.equal(second.sample.generationTps, 150);
    assert.equal(second.sample.admittedPs, 2);
    assert.deepEqual(second.sample.rejectedPs, { price_above_bid: 3 });
    assert.equal(second.sample.hitRate, 0.25);
    assert.deepEqual(second.sample.ttftMs, [10, 30, 30], 'rejected requests have no latency to count');
    assert.equal(second.requests.length, 3);
    assert.equal(second.sample.running, 3);

    // 31 s later: the window has moved past both requests and past the old prefix counts.
    now += 31_000;
    totals.prefixQueriedTokens = 200;
    totals.prefixHitTokens = 125;
    const third = s.tick();
    assert.equal(third.sample.ttftMs, null);
    assert.equal(third.sample.hitRate, 1, 'hits over queries within the last 30 s only');
    assert.equal(third.requests.length, 0, 'each request is sent once');
    s.tick();
    assert.equal(s.history.length, 3, 'history is bounded');
  });
});

describe('console, request journal and logs on a live server', () => {
  let model: LoadedModel;
  let assetsDir: string;
  before(async () => {
    model = await loadModelDir(synthTiny());
    assetsDir = join(tempDir('console'), 'assets');
    await buildConsole(assetsDir);
  });

  test('serves the built page with a strict content security policy, and says when it is not built', async () => {
    const live = await start(model, assetsDir);
    try {
      const page = await fetch(`${live.base}/console`);
      assert.equal(page.status, 200);
      assert.match(page.headers.get('content-type') ?? '', /text\/html/);
      assert.match(page.headers.get('content-security-policy') ?? '', /default-src 'self'/);
      const html = await page.text();
      assert.match(html, /<script type="module" src="\/console\/console.js">/);
      const js = await fetch(`${live.base}/console/console.js`);
      assert.equal(js.status, 200);
      assert.match(js.headers.get('content-type') ?? '', /javascript/);
      assert.ok((await js.text()).length > 10_000, 'the bundle includes the chart library');
      const again = await fetch(`${live.base}/console/console.js`, { headers: { 'if-none-match': js.headers.get('etag') ?? '' } });
      assert.equal(again.status, 304);
      assert.equal((await fetch(`${live.base}/console/`)).status, 200);
    } finally {
      await live.close();
    }
    const bare = await start(model, tempDir('no-assets'));
    try {
      const page = await fetch(`${bare.base}/console`);
      assert.equal(page.status, 503);
      assert.match(await page.text(), /npm run build/);
      assert.equal((await getJson(bare.base, '/console/api/state')).status, 200, 'the data does not need the page');
    } finally {
      await bare.close();
    }
  });

  test('one info line per finished API request, and the same record in the console: bill, quote, outcome', async () => {
    const live = await start(model, assetsDir);
    try {
      const ok = await post(live.base, '/v1/completions', { prompt: 'the cat', max_tokens: 9, temperature: 0 });
      assert.equal(ok.status, 200);
      const rejected = await post(live.base, '/v1/completions', { prompt: 'the cat', max_tokens: 9, bid: 1e-9 });
      assert.equal(rejected.status, 429);
      const bad = await post(live.base, '/v1/completions', { prompt: 'the cat', max_tokens: 'nine' });
      assert.equal(bad.status, 400);
      const chat = await post(live.base, '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }], max_tokens: 5, value: 1 });
      assert.equal(chat.status, 200);
      const two = await post(live.base, '/v1/completions', { prompt: 'the dog', max_tokens: 4, n: 2, temperature: 1, seed: 3 });
      assert.equal(two.status, 200, JSON.stringify(two.json));
      // Not API requests: no line.
      await fetch(`${live.base}/metrics`);
      await fetch(`${live.base}/health`);
      await fetch(`${live.base}/console`);
      await until(() => requestLines(live).length >= 5, 'five request lines');
      await new Promise((r) => setTimeout(r, 50));
      const lines = requestLines(live);
      assert.equal(lines.length, 5, JSON.stringify(lines));
      for (const l of live.lines) {
        assert.equal(typeof l.level, 'string');
        assert.match(String(l.time), /^\d{4}-\d\d-\d\dT/);
      }
      const [okLine, rejLine, badLine, chatLine, twoLine] = lines as [Record<string, any>, Record<string, any>, Record<string, any>, Record<string, any>, Record<string, any>];
      assert.equal(okLine.level, 'info');
      assert.equal(okLine.id, ok.json.id);
      assert.equal(okLine.outcome, 'completed');
      assert.equal(okLine.status, 200);
      assert.equal(okLine.finish_reason, 'length');
      assert.equal(okLine.completion_tokens, 9);
      assert.equal(okLine.prompt_tokens, ok.json.usage.prompt_tokens);
      assert.equal(okLine.bill_total, ok.json.bill.total);
      assert.equal(okLine.tenant, 'anonymous');
      assert.ok(okLine.ttft_ms > 0 && okLine.e2e_ms >= okLine.ttft_ms && okLine.tpot_ms > 0, JSON.stringify(okLine));
      assert.equal(rejLine.outcome, 'rejected');
      assert.equal(rejLine.status, 429);
      assert.equal(rejLine.error_code, 'price_above_bid');
      assert.equal(rejLine.quote.min_value, rejected.json.quote.min_value);
      assert.equal(rejLine.quote.reason, 'price_above_bid');
      assert.ok(rejected.json.error.message.endsWith(rejLine.quote.message), 'the message the client got');
      assert.equal(badLine.outcome, 'invalid');
      assert.equal(badLine.status, 400);
      assert.equal(badLine.error_code, 'invalid_request');
      assert.equal(chatLine.path, '/v1/chat/completions');
      assert.equal(chatLine.value, 1);
      // Two choices are one request: one line, both runs' tokens, the bill the client got.
      assert.equal(twoLine.id, two.json.id);
      assert.equal(twoLine.completion_tokens, two.json.usage.completion_tokens);
      assert.equal(twoLine.completion_tokens, 8);
      assert.ok(Math.abs(twoLine.bill_total - two.json.bill.total) < 1e-15);

      const state = await getJson(live.base, '/console/api/state');
      assert.equal(state.status, 200);
      const s = state.json;
      assert.equal(s.info.model, model.name);
      assert.equal(s.info.policy, 'shadow');
      assert.ok(s.history.length >= 1);
      const byId = new Map((s.requests as RequestRecord[]).map((r) => [r.id, r]));
      assert.deepEqual(byId.get(ok.json.id)?.bill, ok.json.bill, 'the itemized bill the client got');
      assert.equal(byId.get(rejLine.id)?.quote?.price_per_token, rejected.json.quote.price_per_token);
      const anon = (s.tenants as Array<{ tenant: string; requests: Record<string, number>; budget: number | null; spent: number }>).find((t) => t.tenant === 'anonymous');
      assert.deepEqual(anon?.requests, { completed: 3, rejected: 1, aborted: 0, failed: 0 }, 'requests as clients count them: n = 2 is one');
      assert.equal(anon?.budget, null);
      assert.ok(Math.abs((anon?.spent ?? 0) - (ok.json.bill.total + chat.json.bill.total + two.json.bill.total)) < 1e-12);
    } finally {
      await live.close();
    }
  });

  test('a client that leaves mid-stream is logged once, as aborted, after the scheduler freed it', async () => {
    const live = await start(model, assetsDir);
    try {
      await new Promise<void>((resolve, reject) => {
        const req = httpRequest(`${live.base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.on('error', () => {});
        req.end(JSON.stringify({ prompt: 'the cat', max_tokens: 100, stream: true }));
        setTimeout(() => reject(new Error('no first chunk')), 30_000);
      });
      await until(() => requestLines(live).length >= 1, 'the aborted request is logged');
      const [line] = requestLines(live) as [Record<string, any>];
      assert.equal(line.outcome, 'aborted');
      assert.equal(line.status, 200, 'the stream had started');
      assert.ok(line.completion_tokens < 100);
      assert.equal(live.generator.scheduler.blocks.heldBlocks, 0, 'the pool holds nothing');
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(requestLines(live).length, 1);
    } finally {
      await live.close();
    }
  });

  test('at warn, nothing is logged per request', async () => {
    const live = await start(model, assetsDir, { level: 'warn' });
    try {
      await post(live.base, '/v1/completions', { prompt: 'the cat', max_tokens: 5 });
      await post(live.base, '/v1/completions', { prompt: 'the cat', max_tokens: 5, bid: 1e-9 });
      await post(live.base, '/v1/completions', { prompt: 42 });
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(live.lines, []);
      // The requests were journaled all the same: the console still sees them.
      assert.equal((await getJson(live.base, '/console/api/state')).json.requests.length, 3);
    } finally {
      await live.close();
    }
  });

  test('the event stream sends the state, then a tick a second with new requests and the curves', async () => {
    const live = await start(model, assetsDir);
    const controller = new AbortController();
    let closed = false;
    try {
      const res = await fetch(`${live.base}/console/api/events`, { signal: controller.signal });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      const events: Array<{ event: string; data: any }> = [];
      const next = async () => {
        for (;;) {
          const at = buffer.indexOf('\n\n');
          if (at >= 0) {
            const block = buffer.slice(0, at);
            buffer = buffer.slice(at + 2);
            const event = /^event: (.*)$/m.exec(block)?.[1];
            const data = /^data: (.*)$/m.exec(block)?.[1];
            if (event && data) return { event, data: JSON.parse(data) };
            continue;
          }
          const { value, done } = await reader.read();
          if (done) throw new Error('stream ended');
          buffer += decoder.decode(value, { stream: true });
        }
      };
      events.push(await next());
      assert.equal(events[0]?.event, 'state');
      assert.equal(events[0]?.data.info.model, model.name);
      const done = await post(live.base, '/v1/completions', { prompt: 'the dog', max_tokens: 4 });
      let seen: Tick | undefined;
      for (let i = 0; i < 10 && seen === undefined; i++) {
        const e = await next();
        assert.equal(e.event, 'tick');
        if ((e.data as Tick).requests.some((r) => r.id === done.json.id)) seen = e.data as Tick;
      }
      assert.ok(seen, 'the finished request arrives in a tick');
      // The reserve curve as the curve file defines it: 1e-4 + 0.05·u².
      const half = seen.curves.u.indexOf(0.5);
      assert.ok(Math.abs((seen.curves.token[half] as number) - (1e-4 + 0.05 * 0.25)) < 1e-15);
      assert.ok(Math.abs((seen.curves.kv[seen.curves.u.length - 1] as number) - 1e-6) < 1e-18);
      assert.ok(seen.sample.t > 1e9);
      // A console left open must not hold the server's shutdown: the drain ends the stream.
      closed = true;
      await live.close();
      await assert.rejects(async () => {
        for (;;) await next();
      }, /stream ended/);
    } finally {
      controller.abort();
      if (!closed) await live.close();
    }
  });

  test('with a keys file the console needs an admin key; --metrics-key guards /metrics', async () => {
    const ledger = new Ledger();
    ledger.setBudget('acme', 1);
    const apiKeys = { keys: [{ key: 'sk-ops-admin-1', tenant: 'ops', admin: true }, { key: 'sk-acme-0001', tenant: 'acme', budget: 1 }] };
    const live = await start(model, assetsDir, { apiKeys, metricsKey: 'scrape-secret', ledger });
    try {
      assert.equal((await fetch(`${live.base}/console`)).status, 200, 'the page holds no data');
      const anonymous = await getJson(live.base, '/console/api/state');
      assert.equal(anonymous.status, 401);
      assert.match(anonymous.json.error.message, /admin key/);
      assert.equal((await getJson(live.base, '/console/api/state', 'sk-unknown-99')).status, 401);
      const tenant = await getJson(live.base, '/console/api/state', 'sk-acme-0001');
      assert.equal(tenant.status, 403);
      assert.equal(tenant.json.error.code, 'admin_key_required');
      assert.equal((await fetch(`${live.base}/console/api/events`, { headers: { authorization: 'Bearer sk-acme-0001' } })).status, 403);

      const spent = await post(live.base, '/v1/completions', { prompt: 'the cat', max_tokens: 6 }, 'sk-acme-0001');
      assert.equal(spent.status, 200);
      await until(() => requestLines(live).length >= 1, 'request logged');
      const admin = await getJson(live.base, '/console/api/state', 'sk-ops-admin-1');
      assert.equal(admin.status, 200);
      assert.equal(admin.json.info.keys, true);
      const acme = (admin.json.tenants as Array<{ tenant: string; budget: number; spent: number; remaining: number; requests: Record<string, number> }>).find((t) => t.tenant === 'acme');
      assert.equal(acme?.budget, 1);
      assert.ok(Math.abs((acme?.spent ?? 0) - spent.json.bill.total) < 1e-12);
      assert.ok(Math.abs((acme?.remaining ?? 0) - (1 - spent.json.bill.total)) < 1e-12);
      assert.equal(acme?.requests.completed, 1);
      assert.ok(admin.json.tenants.some((t: { tenant: string }) => t.tenant === 'ops'));

      assert.equal((await fetch(`${live.base}/metrics`)).status, 401);
      assert.equal((await fetch(`${live.base}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status, 401);
      const scraped = await fetch(`${live.base}/metrics`, { headers: { authorization: 'Bearer scrape-secret' } });
      assert.equal(scraped.status, 200);
      assert.match(await scraped.text(), /marginal_tenant_billed_total\{tenant="acme"\}/);
      assert.equal((await fetch(`${live.base}/metrics`, { headers: { authorization: 'Bearer sk-ops-admin-1' } })).status, 200);
      assert.equal((await fetch(`${live.base}/metrics`, { headers: { authorization: 'Bearer sk-acme-0001' } })).status, 401);
      assert.throws(() => parseApiKeys({ keys: [{ key: 'sk-ops-admin-1', tenant: 'ops', admin: 'yes' }] }), /keys\[0\]\.admin/);
    } finally {
      await live.close();
    }
  });
});

describe('marginal serve prints only JSON lines', () => {
  let dir: string;
  before(() => {
    dir = synthTiny();
  });

  /** Starts the CLI on a free port, found from its own log line. */
  async function serve(args: string[], env: Record<string, string> = {}) {
    const child = spawn(process.execPath, [cli, 'serve', '--model', dir, '--port', '0', '--providers', 'cpu', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stderr = '';
    let stdout = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.stdout.on('data', (d) => (stdout += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    return { child, exited, out: () => ({ stderr, stdout }) };
  }
  const parseLines = (text: string) => text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, any>);

  test('start-up lines, one line per request at info; a bad level is a usage error', async () => {
    const s = await serve([], { MARGINAL_LOG_LEVEL: 'info' });
    let base = '';
    for (let i = 0; i < 600 && base === ''; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const listening = parseLines(s.out().stderr).find((l) => typeof l.console === 'string');
      if (listening) base = String(listening.console).replace(/\/console$/, '');
    }
    assert.ok(base, s.out().stderr);
    const r = await post(base, '/v1/completions', { prompt: 'the cat', max_tokens: 3 });
    assert.equal(r.status, 200);
    await until(() => parseLines(s.out().stderr).some((l) => l.msg === 'request'), 'request line');
    s.child.kill('SIGTERM');
    assert.equal(await s.exited, 0);
    const { stderr, stdout } = s.out();
    assert.equal(stdout, '');
    const lines = parseLines(stderr);
    assert.ok(lines.every((l) => typeof l.level === 'string' && typeof l.time === 'string' && typeof l.msg === 'string'), stderr);
    assert.ok(lines.some((l) => /native addon|TypeScript/.test(l.msg)), 'the engine start-up line');
    assert.ok(lines.some((l) => /^serving synthetic-tiny/.test(l.msg)));
    assert.equal(lines.filter((l) => l.msg === 'request').length, 1);
    assert.ok(lines.some((l) => /SIGTERM/.test(l.msg)));

    const quiet = await serve(['--log-level', 'warn']);
    await new Promise((r) => setTimeout(r, 300));
    quiet.child.kill('SIGTERM');
    await quiet.exited;
    assert.equal(quiet.out().stderr, '', 'nothing at warn when all is well');

    const bad = await serve(['--log-level', 'loud']);
    assert.equal(await bad.exited, 2);
    assert.match(bad.out().stderr, /--log-level must be one of trace, debug, info, warn, error, fatal, silent/);
    assert.throws(() => resolveLogLevel(undefined, 'chatty'), /MARGINAL_LOG_LEVEL/);
    assert.equal(resolveLogLevel(undefined, ''), 'info');
    assert.equal(resolveLogLevel('WARN', 'debug'), 'warn');

    const keys = join(tempDir('keys'), 'k.json');
    writeFileSync(keys, '{');
    const broken = await serve(['--api-keys', keys]);
    assert.equal(await broken.exited, 2);
    const [fatal] = parseLines(broken.out().stderr);
    assert.equal(fatal?.level, 'fatal');
    assert.match(String(fatal?.msg), /not valid JSON/);
  });
});
