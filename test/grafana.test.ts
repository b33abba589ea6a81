import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseCurveFile } from '../src/economy/curves.js';
import { Ledger } from '../src/economy/ledger.js';
import { Generator } from '../src/serving/generator.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { buildServer, type Server } from '../src/server/app.js';
import { parseApiKeys } from '../src/server/tenants.js';
import { synthTiny, tempDir } from './helpers/models.js';

interface Target {
  expr: string;
  refId: string;
  datasource?: { type: string; uid: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type: string; uid: string };
  targets?: Target[];
  panels?: Panel[];
}
interface Dashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query: unknown; datasource?: { uid: string } }> };
}

const dashboard = JSON.parse(readFileSync(fileURLToPath(new URL('../deploy/grafana/marginal.json', import.meta.url)), 'utf8')) as Dashboard;

function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
}

const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan']);

/** The series a PromQL expression reads, the labels its selectors match, and those it groups by. */
export function promqlNames(expr: string): { metrics: Set<string>; matchers: Array<[string, string]>; grouping: Set<string> } {
  let e = expr.replace(/\$\{?\w+\}?/g, 'VAR').replace(/\[[^\]]*\]/g, '');
  const grouping = new Set<string>();
  e = e.replace(/\b(?:by|without|on|ignoring)\s*\(([^)]*)\)/g, (_m, labels: string) => {
    for (const l of labels.split(',').map((x) => x.trim()).filter(Boolean)) grouping.add(l);
    return ' ';
  });
  const metrics = new Set<string>();
  const matchers: Array<[string, string]> = [];
  e = e.replace(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}/g, (_m, name: string, body: string) => {
    for (const m of body.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"/g)) matchers.push([name, m[1] as string]);
    return ` ${name} `;
  });
  e = e.replace(/"(?:[^"\\]|\\.)*"/g, ' ').replace(/\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b/gi, ' ');
  for (const m of e.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const name = m[1] as string;
    if (m[2] !== undefined || KEYWORDS.has(name.toLowerCase()) || name === 'VAR') continue;
    metrics.add(name);
  }
  return { metrics, matchers, grouping };
}

describe('Grafana dashboard deploy/grafana/marginal.json', () => {
  const panels = allPanels(dashboard.panels);
  const targets = panels.flatMap((p) => p.targets ?? []);

  test('is importable as is: a datasource variable, unique panel ids, every query on it', () => {
    assert.equal(typeof dashboard.uid, 'string');
    assert.equal(dashboard.title, 'marginal');
    assert.ok(dashboard.schemaVersion >= 36);
    const ids = panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
    const ds = dashboard.templating.list.find((v) => v.name === 'datasource');
    assert.equal(ds?.type, 'datasource');
    assert.equal(ds?.query, 'prometheus');
    for (const p of panels) {
      assert.ok(p.gridPos.w > 0 && p.gridPos.x + p.gridPos.w <= 24, `${p.title} fits the grid`);
      if (p.type === 'row') continue;
      assert.equal(p.datasource?.uid, '${datasource}', `${p.title}: panel data source`);
      assert.ok((p.targets ?? []).length > 0, `${p.title} has queries`);
      for (const t of p.targets ?? []) assert.equal(t.datasource?.uid, '${datasource}', `${p.title}/${t.refId}: query data source`);
    }
    assert.ok(targets.length >= 30);
  });

  test('the query parser finds names, matchers and grouping labels', () => {
    const n = promqlNames('histogram_quantile(0.99, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{model_name="$model_name"}[$__rate_interval]))) / on() group_left 1e-3');
    assert.deepEqual([...n.metrics], ['vllm:time_to_first_token_seconds_bucket']);
    assert.deepEqual(n.matchers, [['vllm:time_to_first_token_seconds_bucket', 'model_name']]);
    assert.deepEqual([...n.grouping], ['le']);
    assert.deepEqual([...promqlNames('sum(rate(a_total[5m])) / sum(rate(b_total[5m]))').metrics], ['a_total', 'b_total']);
  });

  describe('against the series a live server exports', () => {
    let server: Server;
    let engine: OnnxEngine;
    let exposition: string;
    /** Every sample name on the wire, with the label names seen on it. */
    const series = new Map<string, Set<string>>();

    before(async () => {
      const model = await loadModelDir(synthTiny());
      engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 4 });
      const ledger = new Ledger();
      ledger.setBudget('acme', 5);
      const generator = new Generator(engine, model, {
        policy: 'shadow',
        ledger,
        defaultBid: () => 0.01,
        curves: parseCurveFile({ tokens: { kind: 'power', p0: 1e-4, scale: 0.05, exponent: 2 } }),
      });
      server = buildServer({ model, generator, tenants: parseApiKeys({ keys: [{ key: 'sk-acme-0001', tenant: 'acme', budget: 5 }] }), console: false });
      await server.app.listen({ host: '127.0.0.1', port: 0 });
      const base = `http://127.0.0.1:${(server.app.server.address() as AddressInfo).port}`;
      const send = (body: object) => fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer sk-acme-0001' }, body: JSON.stringify(body) }).then((r) => r.status);
      // Served, streamed, and turned away: every family gets samples.
      assert.equal(await send({ prompt: 'the cat sat', max_tokens: 8 }), 200);
      assert.equal(await send({ prompt: 'the cat sat', max_tokens: 8, stream: true }), 200);
      assert.equal(await send({ prompt: 'the cat sat', max_tokens: 8, bid: 1e-9 }), 429);
      exposition = await (await fetch(`${base}/metrics`)).text();
      for (const line of exposition.split('\n')) {
        const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? /.exec(line);
        if (!m) continue;
        const labels = series.get(m[1] as string) ?? new Set<string>();
        for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="/g)) labels.add(l[1] as string);
        series.set(m[1] as string, labels);
      }
    });
    after(async () => {
      await server.drain();
      await engine.dispose();
    });

    test('every query names series the server exports, with the labels it matches and groups by', () => {
      const used = new Set<string>();
      for (const t of targets) {
        const n = promqlNames(t.expr);
        assert.ok(n.metrics.size > 0, `no series in ${t.expr}`);
        for (const m of n.metrics) {
          assert.ok(series.has(m), `${t.expr}: ${m} is not exported`);
          used.add(m);
        }
        for (const [m, label] of n.matchers) assert.ok(series.get(m)?.has(label), `${t.expr}: ${m} has no label ${label}`);
        for (const label of n.grouping) {
          assert.ok([...n.metrics].some((m) => series.get(m)?.has(label)), `${t.expr}: nothing to group by ${label}`);
        }
      }
      for (const v of dashboard.templating.list.filter((x) => x.type === 'query')) {
        const q = (v.query as { query: string }).query;
        const m = /^label_values\(([^,]+),\s*(\w+)\)$/.exec(q);
        assert.ok(m, q);
        assert.ok(series.get((m[1] as string).trim())?.has(m[2] as string), q);
      }
      // The economy is on the dashboard, not just vLLM's view.
      for (const name of ['marginal_price_token', 'marginal_price_kv_block_second', 'marginal_requests_rejected_total', 'marginal_welfare', 'marginal_tenant_billed_total', 'vllm:num_requests_swapped']) {
        assert.ok(used.has(name), `the dashboard charts ${name}`);
      }
    });

    test('promtool parses every query', (t) => {
      if (spawnSync('promtool', ['--version']).status !== 0) {
        if (process.env.CI === 'true') assert.fail('promtool not found: .ci/run installs it (apt-get install prometheus)');
        t.skip('promtool not installed (apt-get install prometheus)');
        return;
      }
      // Grafana's variables as a real query would have them, then each query as a recording rule.
      const exprs = targets.map((x) => x.expr.replace(/\$__rate_interval/g, '1m').replace(/\$__range/g, '1h').replace(/\$model_name/g, 'm'));
      const yaml = ['groups:', '  - name: dashboard', '    rules:', ...exprs.flatMap((e, i) => [`      - record: dashboard:query_${i}`, `        expr: ${JSON.stringify(e)}`])].join('\n');
      const file = join(tempDir('rules'), 'dashboard.rules.yml');
      writeFileSync(file, yaml + '\n');
      const r = spawnSync('promtool', ['check', 'rules', file], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.match(r.stdout, new RegExp(`SUCCESS: ${exprs.length} rules found`));
    });
  });
});
