import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { InvalidArgumentError } from '../errors.js';
import { parseApiKeys } from '../server/tenants.js';
import { benchServe, percentileWord, type BenchEndpoint, type BenchServeOptions, type BenchSummary, type GoodputSlo } from '../bench/serve.js';
import { readTraceFromCli, type TraceCliOptions } from './sim.js';

/**
 * Options of `marginal bench serve`, as commander hands them over. Numbers may arrive as
 * strings (options declared without a parser): they are parsed and checked here, so that
 * `--rate inf` works, which commander's finite-number parsers would refuse.
 */
export interface BenchServeCliOptions extends Partial<TraceCliOptions> {
  url: string;
  endpoint?: string;
  model?: string;
  rate?: number | string;
  burstiness?: number | string;
  maxConcurrency?: number | string;
  requests?: number | string;
  inputLen?: number | string;
  outputLen?: number | string;
  rangeRatio?: number | string;
  temperature?: number | string;
  /** `ttft:500 tpot:50 e2el:5000`, any subset (vLLM's --goodput). */
  slo?: string[] | string;
  /** Comma-separated, e.g. "50,90,99" (vLLM's --metric-percentiles); default "99". */
  percentiles?: string;
  json?: boolean;
  requestsOut?: string;
  apiKey?: string;
  /** The server's --api-keys file: a trace's tenants send with their own keys. */
  apiKeys?: string;
  basePrice?: number | string;
  defaultBid?: number | string;
  clientRetries?: number | string;
  clientMode?: string;
  /** Per-request timeout, seconds (default 300). */
  timeout?: number | string;
  quiet?: boolean;
}

function num(v: number | string | undefined, name: string, opts: { int?: boolean; allowInf?: boolean } = {}): number | undefined {
  if (v === undefined) return undefined;
  let n: number;
  if (typeof v === 'number') n = v;
  else {
    const s = v.trim().toLowerCase();
    n = opts.allowInf && (s === 'inf' || s === 'infinity') ? Infinity : s === '' ? NaN : Number(s);
  }
  if (Number.isNaN(n) || (!opts.allowInf && !Number.isFinite(n))) throw new InvalidArgumentError(`${name} must be a number${opts.allowInf ? ' or inf' : ''} (got ${JSON.stringify(v)})`);
  if (opts.int && Number.isFinite(n) && !Number.isInteger(n)) throw new InvalidArgumentError(`${name} must be an integer (got ${JSON.stringify(v)})`);
  return n;
}

/** vLLM's --goodput syntax: KEY:VALUE pairs, keys ttft, tpot, e2el, values in ms. */
export function parseSlo(v: string[] | string | undefined): GoodputSlo | undefined {
  if (v === undefined) return undefined;
  const pairs = (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(/[\s,]+/)).filter((s) => s !== '');
  if (pairs.length === 0) return undefined;
  const slo: GoodputSlo = {};
  const keys = { ttft: 'ttftMs', tpot: 'tpotMs', e2el: 'e2elMs' } as const;
  for (const p of pairs) {
    const m = /^([a-z0-9]+):(.+)$/i.exec(p);
    const key = m?.[1]?.toLowerCase();
    if (!m || key === undefined || !(key in keys)) throw new InvalidArgumentError(`--slo takes KEY:MS pairs with KEY one of ttft, tpot, e2el (got ${JSON.stringify(p)})`);
    const ms = Number(m[2]);
    if (!(ms >= 0 && ms < Infinity)) throw new InvalidArgumentError(`--slo ${key} must be a number of milliseconds >= 0 (got ${JSON.stringify(m[2])})`);
    slo[keys[key as keyof typeof keys]] = ms;
  }
  return slo;
}

export function parsePercentiles(v: string | undefined): number[] {
  if (v === undefined) return [99];
  const ps = v.split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  if (ps.length === 0 || ps.some((p) => !(p >= 0 && p <= 100))) throw new InvalidArgumentError(`--percentiles must be comma-separated numbers in [0, 100] (got ${JSON.stringify(v)})`);
  return ps;
}

/** Tenant → the first key the server's --api-keys file lists for it. */
async function tenantKeys(path: string): Promise<Map<string, string>> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new InvalidArgumentError(`cannot read api keys file ${path}: ${(e as Error).message}`);
  }
  parseApiKeys(json, `api keys file ${path}`);
  const out = new Map<string, string>();
  for (const k of (json as { keys: { key: string; tenant: string }[] }).keys) if (!out.has(k.tenant)) out.set(k.tenant, k.key);
  return out;
}

/** Turns the CLI's options into the library's, checking each (InvalidArgumentError → exit 2). */
export async function benchOptionsFromCli(o: BenchServeCliOptions): Promise<BenchServeOptions> {
  if (typeof o.url !== 'string' || o.url === '') throw new InvalidArgumentError('--url is required (e.g. --url http://127.0.0.1:8000)');
  const b: BenchServeOptions = { url: o.url };
  const endpoint = o.endpoint ?? '/v1/completions';
  if (endpoint !== '/v1/completions' && endpoint !== '/v1/chat/completions') throw new InvalidArgumentError(`--endpoint must be /v1/completions or /v1/chat/completions (got ${JSON.stringify(endpoint)})`);
  b.endpoint = endpoint as BenchEndpoint;
  if (o.model !== undefined) b.model = o.model;
  const set = <K extends keyof BenchServeOptions>(k: K, v: BenchServeOptions[K] | undefined) => {
    if (v !== undefined) b[k] = v;
  };
  set('rate', num(o.rate, '--rate', { allowInf: true }));
  set('burstiness', num(o.burstiness, '--burstiness', { allowInf: true }));
  set('maxConcurrency', num(o.maxConcurrency, '--max-concurrency', { int: true }));
  set('requests', num(o.requests, '--requests', { int: true }));
  set('inputLen', num(o.inputLen, '--input-len', { int: true }));
  set('outputLen', num(o.outputLen, '--output-len', { int: true }));
  set('rangeRatio', num(o.rangeRatio, '--range-ratio'));
  set('seed', num(o.seed, '--seed', { int: true }));
  set('temperature', num(o.temperature, '--temperature'));
  set('basePrice', num(o.basePrice, '--base-price'));
  set('defaultBid', num(o.defaultBid, '--default-bid'));
  const retries = num(o.clientRetries, '--client-retries', { int: true });
  if (retries !== undefined) {
    if (retries < 0 || retries > 100) throw new InvalidArgumentError(`--client-retries must be in [0, 100] (got ${retries})`);
    const mode = o.clientMode ?? 'retry';
    if (mode !== 'retry' && mode !== 'agent') throw new InvalidArgumentError(`--client-mode must be retry or agent (got ${JSON.stringify(mode)})`);
    b.client = { mode, retries };
  }
  const timeout = num(o.timeout, '--timeout');
  if (timeout !== undefined) {
    if (!(timeout > 0)) throw new InvalidArgumentError(`--timeout must be > 0 seconds (got ${timeout})`);
    b.timeoutMs = timeout * 1000;
  }
  set('slo', parseSlo(o.slo));
  b.percentiles = parsePercentiles(o.percentiles);
  const apiKey = o.apiKey ?? process.env.OPENAI_API_KEY;
  if (apiKey) b.apiKey = apiKey;
  if (o.apiKeys !== undefined) b.tenantKeys = await tenantKeys(o.apiKeys);
  if (o.trace !== undefined) {
    if (o.rate !== undefined || o.burstiness !== undefined || o.inputLen !== undefined || o.outputLen !== undefined || o.rangeRatio !== undefined) {
      throw new InvalidArgumentError('--trace sets arrivals and lengths: drop --rate, --burstiness, --input-len, --output-len and --range-ratio (use --rate-scale and --length-scale)');
    }
    // The workload seed is --seed too, parsed above (commander may hand it over as a string).
    const { seed: _seed, ...rest } = o;
    b.trace = await readTraceFromCli({ ...rest, trace: o.trace, ...(b.seed !== undefined ? { seed: b.seed } : {}) } as TraceCliOptions);
  }
  // Validated again by benchServe; checked here too so a bad option fails before any request.
  if (b.rate !== undefined && !(b.rate > 0)) throw new InvalidArgumentError(`--rate must be > 0 or inf (got ${b.rate})`);
  return b;
}

export async function runBenchServe(o: BenchServeCliOptions): Promise<void> {
  const opts = await benchOptionsFromCli(o);
  const stop = new AbortController();
  // The first Ctrl-C stops sending and cancels what is in flight, then prints what was
  // measured; `once`, so a second Ctrl-C falls through to Node's default and exits at once.
  const onSigint = () => {
    process.stderr.write('\nmarginal: interrupted, cancelling requests in flight (Ctrl-C again to quit now)\n');
    stop.abort();
  };
  process.once('SIGINT', onSigint);
  opts.signal = stop.signal;
  opts.progress = !o.quiet && !o.json && process.stderr.isTTY === true;
  try {
    const r = await benchServe(opts);
    for (const w of r.warnings) process.stderr.write(`marginal: warning: ${w}\n`);
    if (o.requestsOut) {
      const out = createWriteStream(o.requestsOut);
      for (const line of r.outcomes) out.write(JSON.stringify(line) + '\n');
      await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));
    }
    process.stdout.write(o.json ? JSON.stringify(r.summary) + '\n' : formatBenchSummary(r.summary, { maxConcurrency: opts.maxConcurrency, rate: opts.trace ? undefined : opts.rate, percentiles: opts.percentiles ?? [99], model: r.model }));
    if (r.summary.lost > 0) process.stderr.write(`marginal: warning: ${r.summary.lost} requests lost (no answer, a timeout or a cut stream); see --requests-out\n`);
    if (r.summary.interrupted) process.exitCode = 130;
  } finally {
    process.off('SIGINT', onSigint);
  }
}

/** Python's "{s:{c}^{n}}".format(...): centered, the odd pad character on the right. */
function center(s: string, n: number, c: string): string {
  const pad = Math.max(0, n - s.length);
  const left = Math.floor(pad / 2);
  return c.repeat(left) + s + c.repeat(pad - left);
}

/** vLLM's result table ("{:<40} {:<10}"), then what a priced server adds. */
export function formatBenchSummary(s: BenchSummary, ctx: { maxConcurrency?: number | undefined; rate?: number | undefined; percentiles: readonly number[]; model?: string | undefined }): string {
  const lines: string[] = [];
  const row = (label: string, v: string | number) => lines.push(`${label.padEnd(40)} ${String(v).padEnd(10)}`.trimEnd());
  const f2 = (x: number | null) => (x === null ? '-' : x.toFixed(2));
  lines.push(center(' Serving Benchmark Result ', 50, '='));
  row('Successful requests:', s.completed);
  row('Failed requests:', s.failed);
  if (ctx.maxConcurrency !== undefined) row('Maximum request concurrency:', ctx.maxConcurrency);
  if (ctx.rate !== undefined && ctx.rate !== Infinity) row('Request rate configured (RPS):', f2(ctx.rate));
  row('Benchmark duration (s):', f2(s.duration));
  row('Total input tokens:', s.total_input_tokens);
  row('Total generated tokens:', s.total_output_tokens);
  row('Request throughput (req/s):', f2(s.request_throughput));
  if (s.request_goodput !== null) row('Request goodput (req/s):', f2(s.request_goodput));
  row('Output token throughput (tok/s):', f2(s.output_throughput));
  row('Peak output token throughput (tok/s):', f2(s.max_output_tokens_per_s));
  row('Peak concurrent requests:', f2(s.max_concurrent_requests));
  row('Total Token throughput (tok/s):', f2(s.total_token_throughput));
  const metric = (key: 'ttft' | 'tpot' | 'itl' | 'e2el', name: string, header: string) => {
    lines.push(center(header, 50, '-'));
    row(`Mean ${name} (ms):`, f2(s[`mean_${key}_ms`]));
    row(`Median ${name} (ms):`, f2(s[`median_${key}_ms`]));
    for (const p of ctx.percentiles) row(`P${percentileWord(p)} ${name} (ms):`, f2(s[`p${percentileWord(p)}_${key}_ms`] ?? null));
  };
  metric('ttft', 'TTFT', 'Time to First Token');
  metric('tpot', 'TPOT', 'Time per Output Token (excl. 1st token)');
  metric('itl', 'ITL', 'Inter-token Latency');
  metric('e2el', 'E2EL', 'End-to-end Latency');
  lines.push(center('Economy', 50, '-'));
  if (ctx.model !== undefined) row('Model:', ctx.model);
  row('Policy:', s.policy);
  row('Rejected with a quote (429):', s.rejected);
  if (s.mean_quote_price !== null) row('Mean quoted price (per token):', s.mean_quote_price.toPrecision(4));
  row('Budget exhausted (402):', s.budget_exhausted);
  row('Other errors:', s.aborted);
  row('Lost (must be 0):', s.lost);
  if (s.preempted !== null) row('Preemptions:', s.preempted);
  row('Met their own SLO:', s.slo_met);
  row('Value realized:', s.value_realized.toFixed(4));
  row(`Welfare (base price ${s.base_price}):`, s.welfare.toFixed(4));
  row('Billed:', s.billed.toFixed(4));
  row('Prefix cache hit rate (%):', f2(s.cache_hit_rate * 100));
  lines.push('='.repeat(50));
  if (s.interrupted) lines.push('(interrupted: only the requests sent before Ctrl-C are counted)');
  return lines.join('\n') + '\n';
}
