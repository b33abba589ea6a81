/**
 * Regenerates the console screenshots in docs/: serves stories260K (from ../shared) with three
 * tenants, drives a few minutes of mixed traffic in phases (light, a burst past capacity, a
 * cool-down), then photographs the console and its playground in headless chromium.
 *
 *     npm run build && node --import tsx web/screenshots.ts [--minutes 4]
 */
import { mkdirSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseCurveFile } from '../src/economy/curves.js';
import { Ledger } from '../src/economy/ledger.js';
import { Generator } from '../src/serving/generator.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { importLlama2c } from '../src/models/importers.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { buildServer } from '../src/server/app.js';
import { parseApiKeys } from '../src/server/tenants.js';
import { launchChromium } from './browser.js';
import { runLoad } from './load.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const shared = join(root, '..', 'shared', 'models', 'stories260K');
const docs = join(root, 'docs');
const minutesArg = process.argv.indexOf('--minutes');
const minutes = minutesArg > 0 ? Number(process.argv[minutesArg + 1]) : 4;

const modelDir = join(root, 'models', 'stories260K');
importLlama2c(join(shared, 'stories260K.bin'), join(shared, 'tok512.bin'), modelDir);
const model = await loadModelDir(modelDir);
const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 8 });
const keys = {
  keys: [
    { key: 'sk-ops-admin-1', tenant: 'ops', admin: true },
    { key: 'sk-acme-000001', tenant: 'acme', budget: 40, default_bid: 0.02 },
    { key: 'sk-lab-0000001', tenant: 'lab', budget: 10 },
    { key: 'sk-batch-00001', tenant: 'batch', default_bid: 0.002 },
  ],
};
const tenants = parseApiKeys(keys);
const ledger = new Ledger();
for (const t of tenants.tenants()) if (Number.isFinite(t.budget)) ledger.setBudget(t.name, t.budget);
const generator = new Generator(engine, model, {
  policy: 'shadow',
  ledger,
  defaultBid: (tenant) => tenants.tenants().find((t) => t.name === tenant)?.defaultBid ?? 0.01,
  curves: parseCurveFile({ tokens: { kind: 'power', p0: 1e-4, scale: 0.05, exponent: 2 }, kv: { kind: 'mm1', p0: 0, scale: 1e-5, max_utilization: 0.99 } }),
});
const server = buildServer({ model, generator, tenants });
await server.app.listen({ host: '127.0.0.1', port: 0 });
const base = `http://127.0.0.1:${(server.app.server.address() as AddressInfo).port}`;
const tenantKeys = keys.keys.filter((k) => !k.admin).map((k) => k.key);

const context = await launchChromium({ width: 1440, height: 1000 });
const page = context.pages()[0] ?? (await context.newPage());
await page.goto(`${base}/console`);
await page.fill('#auth-key', 'sk-ops-admin-1');
await page.click('#auth button');
await page.waitForSelector('#status[data-state="live"]');

const phase = async (seconds: number, clients: number, longest: number) => {
  process.stderr.write(`load: ${clients} clients for ${seconds} s\n`);
  await runLoad({ base, keys: tenantKeys, clients, longest, until: Date.now() + seconds * 1000 });
};
const total = minutes * 60;
await phase(total * 0.3, 3, 120);
await phase(total * 0.4, 24, 300);
const tail = phase(total * 0.3, 6, 200);
await new Promise((r) => setTimeout(r, total * 0.15 * 1000));

mkdirSync(docs, { recursive: true });
await page.setViewportSize({ width: 1440, height: 1000 });
await page.screenshot({ path: join(docs, 'console.png'), fullPage: true });
await page.selectOption('#playground select[name=mode]', 'completion');
await page.fill('#playground textarea[name=prompt]', 'Once upon a time');
await page.fill('#playground input[name=value]', '1');
await page.fill('#playground input[name=ttft_ms]', '2000');
await page.click('#send');
await page.waitForSelector('#pg-bill', { timeout: 60_000 });
await page.locator('.playground').screenshot({ path: join(docs, 'console-playground.png') });
await page.fill('#playground input[name=value]', '');
await page.fill('#playground input[name=bid]', '1e-9');
await page.click('#send');
await page.waitForSelector('#pg-quote', { timeout: 60_000 });
await page.locator('.playground').screenshot({ path: join(docs, 'console-429.png') });
await tail;
await context.close();
await server.drain();
await engine.dispose();
process.stderr.write(`wrote ${join(docs, 'console.png')}, console-playground.png, console-429.png\n`);
