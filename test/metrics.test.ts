import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Registry } from 'prom-client';
import { ServerMetrics, type FinishedRequestMetrics } from '../src/server/metrics.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Exposition {
  types: Map<string, string>;
  samples: Sample[];
}

/** A strict reader of the Prometheus text format (0.0.4), enough to check what a scraper sees. */
function parse(text: string): Exposition {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ')) continue;
    const t = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (t) {
      assert.ok(!types.has(t[1]!), `family ${t[1]} declared twice`);
      types.set(t[1]!, t[2]!);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `unparseable line: ${line}`);
    const labels: Record<string, string> = {};
    const body = m[2] ?? '';
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/gy;
    let consumed = 0;
    for (let l = re.exec(body); l !== null; l = re.exec(body)) {
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_s, c: string) => (c === 'n' ? '\n' : c));
      consumed = re.lastIndex;
    }
    assert.equal(consumed, body.length, `bad label set in: ${line}`);
    const raw = m[3]!;
    samples.push({ name: m[1]!, labels, value: raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : Number(raw) });
  }
  return { types, samples };
}

function find(e: Exposition, name: string, match: Record<string, string> = {}): Sample[] {
  return e.samples.filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v));
}

function value(e: Exposition, name: string, match: Record<string, string> = {}): number {
  const found = find(e, name, match);
  assert.equal(found.length, 1, `expected one sample ${name}${JSON.stringify(match)}, got ${found.length}`);
  return found[0]!.value;
}

function buckets(e: Exposition, name: string): Array<[string, number]> {
  return find(e, `${name}_bucket`).map((s) => [s.labels.le!, s.value]);
}

const opts = { modelName: 'acme/tiny-llama', blockSize: 16, numBlocks: 1000, maxSequences: 64, maxContext: 2048 };

const finishedBase: FinishedRequestMetrics = {
  finishReason: 'stop',
  e2eSeconds: 1.2,
  queueSeconds: 0.05,
  promptTokens: 120,
  outputTokens: 30,
  tpotSeconds: 0.03,
  realizedValue: 0.5,
  computeCost: 0.1,
  billTotal: 0.2,
};

const VLLM_TYPES: Record<string, string> = {
  'vllm:num_requests_running': 'gauge',
  'vllm:num_requests_waiting': 'gauge',
  'vllm:kv_cache_usage_perc': 'gauge',
  'vllm:gpu_cache_usage_perc': 'gauge',
  'vllm:num_requests_swapped': 'gauge',
  'vllm:cache_config_info': 'gauge',
  'vllm:prefix_cache_queries_total': 'counter',
  'vllm:prefix_cache_hits_total': 'counter',
  'vllm:num_preemptions_total': 'counter',
  'vllm:prompt_tokens_total': 'counter',
  'vllm:generation_tokens_total': 'counter',
  'vllm:request_success_total': 'counter',
  'vllm:time_to_first_token_seconds': 'histogram',
  'vllm:inter_token_latency_seconds': 'histogram',
  'vllm:time_per_output_token_seconds': 'histogram',
  'vllm:request_time_per_output_token_seconds': 'histogram',
  'vllm:e2e_request_latency_seconds': 'histogram',
  'vllm:request_queue_time_seconds': 'histogram',
  'vllm:request_prompt_tokens': 'histogram',
  'vllm:request_generation_tokens': 'histogram',
};

const MARGINAL_TYPES: Record<string, string> = {
  marginal_price_token: 'gauge',
  marginal_price_kv_block_second: 'gauge',
  marginal_welfare: 'gauge',
  marginal_value_realized_total: 'counter',
  marginal_compute_cost_total: 'counter',
  marginal_revenue_total: 'counter',
  marginal_requests_rejected_total: 'counter',
  marginal_swaps_total: 'counter',
  marginal_budget_remaining: 'gauge',
  marginal_batch_token_utilization: 'gauge',
  marginal_requests_admitted_total: 'counter',
  marginal_tenant_requests_total: 'counter',
  marginal_tenant_value_realized_total: 'counter',
  marginal_tenant_billed_total: 'counter',
};

describe('ServerMetrics exposition', () => {
  it('declares every family under vLLM\'s exposed name and type, and ours', async () => {
    const e = parse(await new ServerMetrics(opts).text());
    for (const [name, type] of Object.entries({ ...VLLM_TYPES, ...MARGINAL_TYPES })) {
      assert.equal(e.types.get(name), type, `# TYPE ${name} ${type}`);
    }
    // Counters are exposed with _total, as Python's prometheus_client writes them; no bare family.
    assert.equal(e.types.has('vllm:prompt_tokens'), false);
    assert.equal(e.types.has('vllm:request_success'), false);
    for (const name of e.types.keys()) assert.match(name, /^(vllm:|marginal_)/);
  });

  it('exposes the EPP\'s gauges at 0 before the first step, labelled model_name and engine', async () => {
    const e = parse(await new ServerMetrics(opts).text());
    for (const name of ['vllm:num_requests_running', 'vllm:num_requests_waiting', 'vllm:kv_cache_usage_perc', 'vllm:gpu_cache_usage_perc']) {
      const s = find(e, name);
      assert.equal(s.length, 1, name);
      assert.deepEqual(s[0]!.labels, { model_name: 'acme/tiny-llama', engine: '0' });
      assert.equal(s[0]!.value, 0);
    }
    for (const name of ['vllm:prompt_tokens_total', 'vllm:generation_tokens_total', 'vllm:num_preemptions_total', 'vllm:prefix_cache_queries_total', 'vllm:prefix_cache_hits_total']) {
      assert.equal(value(e, name, { model_name: 'acme/tiny-llama', engine: '0' }), 0, name);
    }
    // vLLM pre-creates one request_success child per finish reason.
    for (const reason of ['stop', 'length', 'abort']) {
      assert.equal(value(e, 'vllm:request_success_total', { model_name: 'acme/tiny-llama', finished_reason: reason }), 0);
    }
    assert.equal(value(e, 'vllm:time_to_first_token_seconds_count', { model_name: 'acme/tiny-llama' }), 0);
  });

  it('publishes the cache config as an info gauge the EPP can parse', async () => {
    const e = parse(await new ServerMetrics({ ...opts, numCpuBlocks: 256 }).text());
    const info = find(e, 'vllm:cache_config_info');
    assert.equal(info.length, 1);
    const { labels } = info[0]!;
    assert.equal(info[0]!.value, 1);
    assert.equal(labels.block_size, '16');
    assert.equal(labels.num_gpu_blocks, '1000');
    assert.equal(labels.num_cpu_blocks, '256');
    assert.equal(labels.engine, '0');
    assert.equal(labels.enable_prefix_caching, 'True');
    assert.equal(labels.kv_cache_size_tokens, '16000');
    assert.equal(labels.kv_cache_max_concurrency, String(16000 / 2048));
    // The EPP reads these two with strconv.Atoi.
    assert.match(labels.block_size!, /^\d+$/);
    assert.match(labels.num_gpu_blocks!, /^\d+$/);
    const none = parse(await new ServerMetrics({ ...opts, maxContext: 1000 }).text());
    assert.equal(find(none, 'vllm:cache_config_info')[0]!.labels.num_cpu_blocks, 'None');
    assert.equal(find(none, 'vllm:cache_config_info')[0]!.labels.kv_cache_max_concurrency, '16.0');
  });

  it('uses vLLM\'s histogram buckets', async () => {
    const e = parse(await new ServerMetrics(opts).text());
    const les = (name: string) => buckets(e, name).map(([le]) => le);
    assert.deepEqual(les('vllm:time_to_first_token_seconds'), ['0.001', '0.005', '0.01', '0.02', '0.04', '0.06', '0.08', '0.1', '0.25', '0.5', '0.75', '1.0', '2.5', '5.0', '7.5', '10.0', '20.0', '40.0', '80.0', '160.0', '640.0', '2560.0', '+Inf']);
    const itl = ['0.01', '0.025', '0.05', '0.075', '0.1', '0.15', '0.2', '0.3', '0.4', '0.5', '0.75', '1.0', '2.5', '5.0', '7.5', '10.0', '20.0', '40.0', '80.0', '+Inf'];
    assert.deepEqual(les('vllm:inter_token_latency_seconds'), itl);
    assert.deepEqual(les('vllm:time_per_output_token_seconds'), itl);
    assert.deepEqual(les('vllm:request_time_per_output_token_seconds'), itl);
    const latency = ['0.3', '0.5', '0.8', '1.0', '1.5', '2.0', '2.5', '5.0', '10.0', '15.0', '20.0', '30.0', '40.0', '50.0', '60.0', '120.0', '240.0', '480.0', '960.0', '1920.0', '7680.0', '+Inf'];
    assert.deepEqual(les('vllm:e2e_request_latency_seconds'), latency);
    assert.deepEqual(les('vllm:request_queue_time_seconds'), latency);
    // build_1_2_5_buckets(max_model_len = 2048)
    const tokens = ['1.0', '2.0', '5.0', '10.0', '20.0', '50.0', '100.0', '200.0', '500.0', '1000.0', '2000.0', '+Inf'];
    assert.deepEqual(les('vllm:request_prompt_tokens'), tokens);
    assert.deepEqual(les('vllm:request_generation_tokens'), tokens);
    for (const s of find(e, 'vllm:request_prompt_tokens_bucket')) {
      assert.deepEqual({ ...s.labels, le: undefined }, { model_name: 'acme/tiny-llama', engine: '0', le: undefined });
    }
  });

  it('reports what it is driven with', async () => {
    const m = new ServerMetrics(opts);
    m.step({ running: 7, waiting: 3, kvUsage: 0.625, priceToken: 1.5e-4, priceKvBlockSecond: 2e-6 });
    m.prefixQuery(100, 64);
    m.prefixQuery(50, 0);
    m.preempted(2, false);
    m.preempted(1, true);
    m.promptTokens(86);
    m.promptTokens(50);
    for (let i = 0; i < 5; i++) m.generationTokens(1);
    m.firstToken(0.03);
    m.firstToken(3);
    m.interToken(0.02);
    m.interToken(0.02);
    m.interToken(0.5);
    m.finished(finishedBase);
    m.finished({ ...finishedBase, finishReason: 'length', e2eSeconds: 100, queueSeconds: 0.4, promptTokens: 3, outputTokens: 1, tpotSeconds: null, realizedValue: 0, computeCost: 0.7, billTotal: 0.05 });
    m.finished({ ...finishedBase, finishReason: 'abort' });
    m.rejected('price');
    m.rejected('price');
    m.rejected('budget');
    m.budget('team-a', 12.5);
    m.budget('team-b', 3);
    m.budget('team-a', 11);
    const e = parse(await m.text());
    const L = { model_name: 'acme/tiny-llama', engine: '0' };

    assert.equal(value(e, 'vllm:num_requests_running', L), 7);
    assert.equal(value(e, 'vllm:num_requests_waiting', L), 3);
    assert.equal(value(e, 'vllm:kv_cache_usage_perc', L), 0.625);
    assert.equal(value(e, 'vllm:gpu_cache_usage_perc', L), 0.625);
    assert.equal(value(e, 'vllm:prefix_cache_queries_total', L), 150);
    assert.equal(value(e, 'vllm:prefix_cache_hits_total', L), 64);
    assert.equal(value(e, 'vllm:num_preemptions_total', L), 3);
    assert.equal(value(e, 'vllm:prompt_tokens_total', L), 136);
    assert.equal(value(e, 'vllm:generation_tokens_total', L), 5);
    assert.equal(value(e, 'vllm:request_success_total', { ...L, finished_reason: 'stop' }), 1);
    assert.equal(value(e, 'vllm:request_success_total', { ...L, finished_reason: 'length' }), 1);
    assert.equal(value(e, 'vllm:request_success_total', { ...L, finished_reason: 'abort' }), 1);

    const ttft = new Map(buckets(e, 'vllm:time_to_first_token_seconds'));
    assert.equal(ttft.get('0.02'), 0);
    assert.equal(ttft.get('0.04'), 1);
    assert.equal(ttft.get('2.5'), 1);
    assert.equal(ttft.get('5.0'), 2);
    assert.equal(ttft.get('+Inf'), 2);
    assert.equal(value(e, 'vllm:time_to_first_token_seconds_count', L), 2);
    assert.ok(Math.abs(value(e, 'vllm:time_to_first_token_seconds_sum', L) - 3.03) < 1e-12);

    for (const name of ['vllm:inter_token_latency_seconds', 'vllm:time_per_output_token_seconds']) {
      const itl = new Map(buckets(e, name));
      assert.equal(itl.get('0.01'), 0, name);
      assert.equal(itl.get('0.025'), 2, name);
      assert.equal(itl.get('0.4'), 2, name);
      assert.equal(itl.get('0.5'), 3, name);
      assert.equal(value(e, `${name}_count`, L), 3);
    }
    // Only requests with a defined TPOT (two or more tokens) are observed.
    assert.equal(value(e, 'vllm:request_time_per_output_token_seconds_count', L), 2);
    assert.equal(value(e, 'vllm:e2e_request_latency_seconds_count', L), 3);
    assert.ok(Math.abs(value(e, 'vllm:e2e_request_latency_seconds_sum', L) - 102.4) < 1e-9);
    assert.equal(new Map(buckets(e, 'vllm:e2e_request_latency_seconds')).get('1.0'), 0);
    assert.equal(new Map(buckets(e, 'vllm:e2e_request_latency_seconds')).get('1.5'), 2);
    assert.equal(new Map(buckets(e, 'vllm:e2e_request_latency_seconds')).get('120.0'), 3);
    assert.equal(new Map(buckets(e, 'vllm:request_queue_time_seconds')).get('0.3'), 2);
    assert.equal(new Map(buckets(e, 'vllm:request_queue_time_seconds')).get('0.5'), 3);
    assert.equal(new Map(buckets(e, 'vllm:request_prompt_tokens')).get('5.0'), 1);
    assert.equal(new Map(buckets(e, 'vllm:request_prompt_tokens')).get('200.0'), 3);
    assert.equal(value(e, 'vllm:request_prompt_tokens_sum', L), 243);
    assert.equal(new Map(buckets(e, 'vllm:request_generation_tokens')).get('1.0'), 1);
    assert.equal(new Map(buckets(e, 'vllm:request_generation_tokens')).get('50.0'), 3);
    assert.equal(value(e, 'vllm:request_generation_tokens_sum', L), 61);

    assert.equal(value(e, 'marginal_price_token'), 1.5e-4);
    assert.equal(value(e, 'marginal_price_kv_block_second'), 2e-6);
    assert.ok(Math.abs(value(e, 'marginal_value_realized_total') - 1.0) < 1e-12);
    assert.ok(Math.abs(value(e, 'marginal_compute_cost_total') - 0.9) < 1e-12);
    assert.ok(Math.abs(value(e, 'marginal_revenue_total') - 0.45) < 1e-12);
    assert.ok(Math.abs(value(e, 'marginal_welfare') - (1.0 - 0.9)) < 1e-12);
    assert.equal(value(e, 'marginal_requests_rejected_total', { reason: 'price' }), 2);
    assert.equal(value(e, 'marginal_requests_rejected_total', { reason: 'budget' }), 1);
    assert.equal(value(e, 'marginal_swaps_total'), 1);
    assert.equal(value(e, 'marginal_budget_remaining', { tenant: 'team-a' }), 11);
    assert.equal(value(e, 'marginal_budget_remaining', { tenant: 'team-b' }), 3);
  });

  it('lets welfare fall below zero', async () => {
    const m = new ServerMetrics(opts);
    m.finished({ ...finishedBase, realizedValue: 0, computeCost: 0.25 });
    m.finished({ ...finishedBase, realizedValue: 0.1, computeCost: 0.2 });
    const e = parse(await m.text());
    assert.ok(Math.abs(value(e, 'marginal_welfare') + 0.35) < 1e-12);
  });

  it('keeps counters monotone across scrapes and ignores bad input', async () => {
    const m = new ServerMetrics(opts);
    m.generationTokens(4);
    const first = parse(await m.text());
    assert.equal(value(first, 'vllm:generation_tokens_total', { model_name: 'acme/tiny-llama' }), 4);
    // A second scrape with nothing new must not count again.
    const again = parse(await m.text());
    assert.equal(value(again, 'vllm:generation_tokens_total', { model_name: 'acme/tiny-llama' }), 4);
    m.generationTokens(3);
    m.generationTokens(-2);
    m.generationTokens(Number.NaN);
    m.promptTokens(Infinity);
    m.interToken(Number.NaN);
    m.firstToken(Infinity);
    m.rejected('price');
    const e = parse(await m.text());
    assert.equal(value(e, 'vllm:generation_tokens_total', { model_name: 'acme/tiny-llama' }), 7);
    assert.equal(value(e, 'vllm:prompt_tokens_total', { model_name: 'acme/tiny-llama' }), 0);
    assert.equal(value(e, 'vllm:inter_token_latency_seconds_count', { model_name: 'acme/tiny-llama' }), 0);
    assert.equal(value(e, 'vllm:inter_token_latency_seconds_sum', { model_name: 'acme/tiny-llama' }), 0);
    assert.equal(value(e, 'vllm:time_to_first_token_seconds_count', { model_name: 'acme/tiny-llama' }), 0);
    assert.equal(value(e, 'marginal_requests_rejected_total', { reason: 'price' }), 1);
  });

  it('gives each server its own registry, and refuses two in one', async () => {
    const a = new ServerMetrics(opts);
    const b = new ServerMetrics({ ...opts, modelName: 'other/model' });
    assert.notEqual(a.registry, b.registry);
    a.step({ running: 1, waiting: 0, kvUsage: 0.1, priceToken: 0, priceKvBlockSecond: 0 });
    b.step({ running: 9, waiting: 4, kvUsage: 0.9, priceToken: 0, priceKvBlockSecond: 0 });
    a.generationTokens(2);
    const ea = parse(await a.text());
    const eb = parse(await b.text());
    assert.equal(value(ea, 'vllm:num_requests_running', { model_name: 'acme/tiny-llama' }), 1);
    assert.equal(value(eb, 'vllm:num_requests_running', { model_name: 'other/model' }), 9);
    assert.equal(find(ea, 'vllm:num_requests_running', { model_name: 'other/model' }).length, 0);
    assert.equal(value(ea, 'vllm:generation_tokens_total', { model_name: 'acme/tiny-llama' }), 2);
    assert.equal(value(eb, 'vllm:generation_tokens_total', { model_name: 'other/model' }), 0);

    const shared = new Registry();
    const c = new ServerMetrics({ ...opts, registry: shared });
    assert.equal(c.registry, shared);
    assert.throws(() => new ServerMetrics({ ...opts, registry: shared }), /already been registered/);
  });

  it('serves the Prometheus text content type and escapes label values', async () => {
    const m = new ServerMetrics({ ...opts, modelName: 'we"ird\\name' });
    assert.equal(m.contentType, 'text/plain; version=0.0.4; charset=utf-8');
    m.budget('tenant "x"', 1);
    const text = await m.text();
    assert.ok(text.endsWith('\n'));
    const e = parse(text);
    assert.equal(value(e, 'vllm:num_requests_waiting', { model_name: 'we"ird\\name' }), 0);
    assert.equal(value(e, 'marginal_budget_remaining', { tenant: 'tenant "x"' }), 1);
  });
});

describe('ServerMetrics for the console and dashboards', () => {
  it('reports swapped streams, batch-token utilization, admissions and per-tenant outcomes', async () => {
    const m = new ServerMetrics(opts);
    m.step({ running: 3, waiting: 2, swapped: 1, kvUsage: 0.5, tokenUtilization: 0.75, priceToken: 1e-4, priceKvBlockSecond: 1e-6 });
    m.admitted(4);
    m.admitted(1);
    m.tenantFinished('acme', 'completed', 0.5, 0.02);
    m.tenantFinished('acme', 'completed', 0, 0.03);
    m.tenantFinished('acme', 'rejected', 0, 0);
    m.tenantFinished('lab', 'aborted', 0, 0.01);
    const e = parse(await m.text());
    const L = { model_name: 'acme/tiny-llama', engine: '0' };
    assert.equal(value(e, 'vllm:num_requests_swapped', L), 1);
    assert.equal(value(e, 'marginal_batch_token_utilization'), 0.75);
    assert.equal(value(e, 'marginal_requests_admitted_total'), 5);
    assert.equal(value(e, 'marginal_tenant_requests_total', { tenant: 'acme', outcome: 'completed' }), 2);
    assert.equal(value(e, 'marginal_tenant_requests_total', { tenant: 'acme', outcome: 'rejected' }), 1);
    assert.equal(value(e, 'marginal_tenant_requests_total', { tenant: 'acme', outcome: 'aborted' }), 0);
    assert.equal(value(e, 'marginal_tenant_requests_total', { tenant: 'lab', outcome: 'aborted' }), 1);
    assert.ok(Math.abs(value(e, 'marginal_tenant_billed_total', { tenant: 'acme' }) - 0.05) < 1e-12);
    assert.equal(value(e, 'marginal_tenant_value_realized_total', { tenant: 'acme' }), 0.5);
  });

  it('totals() are the numbers the next scrape reports', async () => {
    const m = new ServerMetrics(opts);
    m.generationTokens(7);
    m.promptTokens(30);
    m.prefixQuery(40, 16);
    m.preempted(2, true);
    m.admitted(3);
    m.rejected('price_above_bid');
    m.rejected('slo_unreachable');
    m.rejected('price_above_bid');
    m.finished({ ...finishedBase, realizedValue: 1, computeCost: 0.25, billTotal: 0.5 });
    const t = m.totals();
    const e = parse(await m.text());
    assert.equal(t.generationTokens, value(e, 'vllm:generation_tokens_total', { model_name: 'acme/tiny-llama' }));
    assert.equal(t.promptTokens, value(e, 'vllm:prompt_tokens_total', { model_name: 'acme/tiny-llama' }));
    assert.equal(t.prefixQueriedTokens, 40);
    assert.equal(t.prefixHitTokens, 16);
    assert.equal(t.preemptions, 2);
    assert.equal(t.swaps, 2);
    assert.equal(t.admitted, 3);
    assert.deepEqual(t.rejected, { price_above_bid: 2, slo_unreachable: 1 });
    assert.equal(t.welfare, value(e, 'marginal_welfare'));
    assert.equal(t.revenue, 0.5);
  });
});

/** promtool from Debian's `prometheus` package, which .ci/run installs; absent on a bare developer machine. */
function promtool(): string | undefined {
  const r = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? 'promtool' : undefined;
}

describe('promtool check metrics', () => {
  it('finds nothing to report but vLLM\'s own colon names', async (t) => {
    const tool = promtool();
    if (tool === undefined) {
      if (process.env.CI === 'true') assert.fail('promtool not found: .ci/run installs it (apt-get install prometheus)');
      t.skip('promtool not installed (apt-get install prometheus)');
      return;
    }
    // Every family populated, so that promtool sees each one's samples too.
    const m = new ServerMetrics(opts);
    m.step({ running: 1, waiting: 1, swapped: 1, kvUsage: 0.2, tokenUtilization: 0.3, priceToken: 1e-4, priceKvBlockSecond: 1e-6 });
    m.prefixQuery(10, 5);
    m.preempted(1, true);
    m.promptTokens(5);
    m.generationTokens(5);
    m.firstToken(0.1);
    m.interToken(0.01);
    m.admitted(1);
    m.finished(finishedBase);
    m.rejected('price_above_bid');
    m.budget('acme', 3);
    m.tenantFinished('acme', 'completed', 1, 0.1);
    const r = spawnSync(tool, ['check', 'metrics'], { input: await m.text(), encoding: 'utf8' });
    const problems = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.trim() !== '');
    const ours = problems.filter((l) => !/^vllm:\S+ metric names should not contain ':'$/.test(l));
    assert.deepEqual(ours, []);
    // And it does check: the colon names are reported, one per vLLM family.
    assert.ok(problems.length >= Object.keys(VLLM_TYPES).length, problems.join('\n'));
  });
});
