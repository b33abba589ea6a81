import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { BrowserContext, Page } from 'playwright-core';
import { parseCurveFile } from '../src/economy/curves.js';
import { Generator } from '../src/serving/generator.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { buildServer, type Server } from '../src/server/app.js';
import { chromiumPath, launchChromium } from '../web/browser.js';
import { buildConsole } from '../web/build.mjs';
import { runLoad } from '../web/load.js';
import { importStories260K, stories260K, tempDir } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';

function browserSkipReason(): string | false {
  const shared = sharedSkipReason();
  if (shared) return shared;
  if (existsSync(chromiumPath) || process.env.CI === 'true') return false;
  return `${chromiumPath} not found (apt-get install chromium)`;
}

describe('the console in a real browser', { skip: browserSkipReason() }, () => {
  let server: Server;
  let engine: OnnxEngine;
  let base: string;
  let context: BrowserContext;
  let page: Page;
  const consoleErrors: string[] = [];
  const pageErrors: string[] = [];
  const shots = tempDir('console-shots');

  before(async () => {
    const assetsDir = join(tempDir('console'), 'assets');
    await buildConsole(assetsDir);
    const model = await loadModelDir(importStories260K());
    engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 8 });
    const generator = new Generator(engine, model, {
      policy: 'shadow',
      defaultBid: () => 0.01,
      // p_tok = 1e-4 + 0.05·u²: a bid of 1e-9 a token never clears.
      curves: parseCurveFile({ tokens: { kind: 'power', p0: 1e-4, scale: 0.05, exponent: 2 }, kv: { kind: 'mm1', p0: 0, scale: 1e-5, max_utilization: 0.99 } }),
    });
    server = buildServer({ model, generator, console: { assetsDir } });
    await server.app.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${(server.app.server.address() as AddressInfo).port}`;
    context = await launchChromium();
    page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => pageErrors.push(e.message));
  });

  after(async () => {
    await context?.close();
    await server?.drain();
    await engine?.dispose();
  });

  const ticks = async () => Number((await page.getAttribute('body', 'data-ticks')) ?? 0);
  // Functions passed to the page run there, where `document` exists (this project's types have no
  // DOM, hence `any`); they are functions, not strings, because the console's CSP forbids eval.
  const waitTicks = async (n: number) =>
    page.waitForFunction((want) => Number((globalThis as any).document.body.dataset.ticks ?? 0) >= want, n, { timeout: 30_000 });
  const canvas = (chart: string) => page.$eval(`[data-chart="${chart}"] canvas`, (c) => (c as unknown as { toDataURL(): string }).toDataURL());
  const tile = async (name: string) => (await page.textContent(`[data-tile="${name}"] .value`)) ?? '';

  test('loads live with no console errors', async () => {
    await page.goto(`${base}/console`);
    await page.waitForSelector('#status[data-state="live"]', { timeout: 30_000 });
    await waitTicks(1);
    assert.equal(await page.isHidden('#auth'), true, 'no key needed without a keys file');
    assert.match((await page.textContent('#server-info')) ?? '', /stories260K/);
    assert.equal(await page.locator('[data-chart] canvas').count() >= 10, true, 'every chart is drawn');
    assert.deepEqual(consoleErrors, []);
    assert.deepEqual(pageErrors, []);
  });

  test('its charts, tiles and tables move while a load generator runs', async () => {
    // Idle, the market stands still: the price curve chart is the same two ticks apart.
    const t0 = await ticks();
    const idleCurve = await canvas('curve-token');
    await waitTicks(t0 + 2);
    assert.equal(await canvas('curve-token'), idleCurve, 'nothing moves at idle');
    const before = { throughput: await canvas('throughput'), streams: await canvas('streams'), events: await canvas('events') };

    const load = runLoad({ base, clients: 8, maxRequests: 400, until: Date.now() + 12_000 });
    let busyTokens = 0;
    let admitted = 0;
    for (let i = 0; i < 30 && (busyTokens === 0 || admitted === 0); i++) {
      await waitTicks((await ticks()) + 1);
      busyTokens = Math.max(busyTokens, Number((await tile('tokens/s')).replace(/,/g, '')) || 0);
      admitted = Math.max(admitted, Number(await tile('admitted/s')) || 0);
    }
    assert.ok(busyTokens > 0, 'tokens/s shows the load');
    assert.ok(admitted > 0, 'admissions/s shows the load');
    const t1 = await ticks();
    await waitTicks(t1 + 2);
    await page.screenshot({ path: join(shots, 'console-under-load.png'), fullPage: true });
    assert.notEqual(await canvas('curve-token'), idleCurve, 'the operating point moved along the price curve');
    assert.notEqual(await canvas('throughput'), before.throughput);
    assert.notEqual(await canvas('streams'), before.streams);
    assert.notEqual(await canvas('events'), before.events);
    const result = await load;
    assert.ok((result.byStatus[200] ?? 0) > 0 && (result.byStatus[429] ?? 0) > 0, JSON.stringify(result));
    await waitTicks((await ticks()) + 2);
    assert.ok((await page.locator('#requests tbody tr[data-outcome="completed"]').count()) > 0, 'completed requests listed');
    assert.ok((await page.locator('#requests tbody tr[data-outcome="rejected"]').count()) > 0, 'rejected requests listed');
    assert.match((await page.textContent('#requests tbody tr[data-outcome="rejected"] td.detail')) ?? '', /price_above_bid: (needs value ≥ \S+|nothing clears now) \(counted/);
    const completed = Number(await page.textContent('#tenants tr[data-tenant="anonymous"] td:nth-child(6)'));
    assert.ok(completed > 0, 'the tenant table counts completions');
    assert.ok((await page.locator('[data-chart="events"] .u-legend').textContent())?.includes('rejected price_above_bid'), 'a series per rejection reason');
    assert.deepEqual(consoleErrors, []);
    assert.deepEqual(pageErrors, []);
  });

  test('the playground streams a completion and shows its bill', async () => {
    await page.selectOption('#playground select[name=mode]', 'completion');
    await page.fill('#playground textarea[name=prompt]', 'Zoo');
    await page.fill('#playground input[name=max_tokens]', '57');
    await page.fill('#playground input[name=temperature]', '0');
    await page.fill('#playground input[name=bid]', '');
    // The page asks for a stream and the server sends it as events; how many network reads the
    // browser coalesces them into depends on the machine's load, so the test counts the events.
    const streamed = page.waitForResponse((r) => r.url().endsWith('/v1/completions') && r.request().method() === 'POST', { timeout: 30_000 });
    await page.click('#send');
    const response = await streamed;
    assert.equal((JSON.parse(response.request().postData() ?? '{}') as { stream?: boolean }).stream, true, 'the playground asks for a stream');
    assert.match(response.headers()['content-type'] ?? '', /^text\/event-stream/);
    const events = (await response.text()).split('\n').filter((l) => l.startsWith('data: {')).length;
    assert.ok(events > 2, `the text came in pieces (${events} events)`);
    await page.waitForFunction(() => ((globalThis as any).document.getElementById('pg-output')?.textContent ?? '').length > 0, undefined, { timeout: 30_000 });
    await page.waitForSelector('#pg-bill', { timeout: 30_000 });
    assert.equal('Zoo' + (await page.textContent('#pg-output')), stories260K.referenceZoo);
    const total = Number(await page.getAttribute('#pg-bill [data-total]', 'data-total'));
    assert.ok(total > 0, 'a priced bill');
    assert.match((await page.textContent('#pg-bill')) ?? '', /completion tokens57/);
    await page.locator('.playground').screenshot({ path: join(shots, 'playground-bill.png') });
    assert.deepEqual(consoleErrors, []);
  });

  test('a 429 shows its quote', async () => {
    await page.fill('#playground input[name=bid]', '1e-9');
    await page.click('#send');
    await page.waitForSelector('#pg-quote', { timeout: 30_000 });
    assert.equal(await page.getAttribute('#pg-quote', 'data-status'), '429');
    assert.match((await page.textContent('#pg-quote h3')) ?? '', /price_above_bid/);
    const minValue = (await page.textContent('#pg-quote dd[data-field="minimum value"]')) ?? '';
    assert.ok(Number(minValue) > 0 || minValue === 'none clears now', minValue);
    assert.ok(Number(await page.textContent('#pg-quote dd[data-field="price per token"]')) > 0);
    const counted = Number(await page.textContent('#pg-quote dd[data-field="value counted"]'));
    assert.ok(counted > 0 && counted <= 57e-9 * 1.01, `the claim, at most 1e-9 a token for 57 tokens: ${counted}`);
    // Whether waiting helps, as the headers say it.
    const retry = (await page.locator('#pg-quote dd[data-field="retry-after"], #pg-quote dd[data-field="retry"]').first().textContent()) ?? '';
    assert.match(retry, /^(\d+ s|no \(x-should-retry: false\))$/);
    await page.locator('.playground').screenshot({ path: join(shots, 'playground-429.png') });
    // The browser itself reports the 429 response; the page raised nothing.
    assert.ok(consoleErrors.every((e) => /status of 429/.test(e)), consoleErrors.join('\n'));
    assert.deepEqual(pageErrors, []);
  });
});
