/**
 * Prometheus metrics under vLLM V1's exact exposed names, so the Gateway API Inference Extension's
 * endpoint picker (EPP) and llm-d can scrape this server as if it were vLLM, plus the economy's own
 * `marginal_*` series.
 *
 * Names follow what vLLM's Python prometheus_client puts on the wire: a Counter registered as
 * `vllm:prompt_tokens` is exposed as `vllm:prompt_tokens_total` (the client appends `_total`), so our
 * prom-client counters carry the suffix in their name. Every vLLM series has the labels
 * `model_name` and `engine` ("0": one engine core), as in vLLM V1's PrometheusStatLogger, except
 * `vllm:cache_config_info`, whose labels are the cache config and `engine` only.
 */
import { Counter, Gauge, Registry, type Metric } from 'prom-client';

export interface MetricsSnapshot {
  running: number;
  waiting: number;
  /** Fraction of KV blocks held, 0–1. */
  kvUsage: number;
  priceToken: number;
  priceKvBlockSecond: number;
}

export type MetricsFinishReason = 'stop' | 'length' | 'abort';

export interface FinishedRequestMetrics {
  finishReason: MetricsFinishReason;
  e2eSeconds: number;
  queueSeconds: number;
  promptTokens: number;
  outputTokens: number;
  /** Mean time per output token after the first; null when fewer than two tokens were generated. */
  tpotSeconds: number | null;
  realizedValue: number;
  /** The request's compute at the base price (no congestion premium). */
  computeCost: number;
  billTotal: number;
}

export interface ServerMetricsOptions {
  modelName: string;
  blockSize: number;
  numBlocks: number;
  maxSequences: number;
  maxContext: number;
  /** Size of the host swap pool in blocks, when the engine has one (vLLM's num_cpu_blocks). */
  numCpuBlocks?: number;
  /** Defaults to a fresh Registry, never prom-client's global one, so several servers can live in one process. */
  registry?: Registry;
}

// vLLM's bucket boundaries (vllm/v1/metrics/loggers.py, PrometheusStatLogger), kept identical so
// dashboards and histogram_quantile() give the same answers against either server.
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0];
const INTER_TOKEN_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0];

/** vLLM's build_1_2_5_buckets(max_model_len): 1, 2, 5, 10, 20, 50, … up to max. */
function buckets125(max: number): number[] {
  const out: number[] = [];
  for (let scale = 1; ; scale *= 10) {
    for (const m of [1, 2, 5]) {
      if (m * scale > max) return out;
      out.push(m * scale);
    }
  }
}

/** Python's str(float): the exposition vLLM produces writes `le="1.0"`, not `le="1"`. */
function pyFloat(x: number): string {
  if (x === Infinity) return '+Inf';
  return Number.isInteger(x) && Math.abs(x) < 1e16 ? x.toFixed(1) : String(x);
}

/**
 * A counter whose hot path is one float add: prom-client's own inc() hashes the label set on
 * every call, which is measurable when it runs once per generated token. The sum reaches
 * prom-client only when the registry is scraped (flush from the counter's collect hook).
 */
class Tally {
  value = 0;
  private flushed = 0;
  constructor(private readonly child: Counter.Internal) {
    // Present at 0 from the start, as vLLM pre-creates its children: rate() needs the first sample.
    child.inc(0);
  }
  add(n: number): void {
    // A counter only goes up; NaN or negative input would corrupt every rate() over it.
    if (n > 0 && n !== Infinity) this.value += n;
  }
  flush(): void {
    const d = this.value - this.flushed;
    if (d > 0) {
      this.child.inc(d);
      this.flushed = this.value;
    }
  }
}

/**
 * One histogram series with fixed labels and fixed buckets. prom-client's Histogram allocates and
 * hashes labels on every observe (~250 ns); the inter-token histogram sees every token, so this
 * keeps plain counts and renders them in prom-client's value format only when scraped.
 */
class FixedHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly bounds: Float64Array;
  private readonly counts: Float64Array;
  private sum = 0;
  private count = 0;
  constructor(
    readonly name: string,
    readonly help: string,
    buckets: readonly number[],
    private readonly labels: Readonly<Record<string, string>>,
  ) {
    this.bounds = Float64Array.from(buckets);
    this.counts = new Float64Array(buckets.length);
  }
  observe(v: number): void {
    // One NaN would turn _sum into NaN for the life of the process.
    if (!Number.isFinite(v)) return;
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]!) i++;
    if (i < b.length) this.counts[i]! += 1;
    this.sum += v;
    this.count += 1;
  }
  reset(): void {
    this.counts.fill(0);
    this.sum = 0;
    this.count = 0;
  }
  /** The shape prom-client's Registry renders (name, help, type, values with optional metricName). */
  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: Array<{ value: number; labels: Record<string, string>; metricName: string }> }> {
    const values: Array<{ value: number; labels: Record<string, string>; metricName: string }> = [];
    const bucket = `${this.name}_bucket`;
    let acc = 0;
    for (let i = 0; i < this.bounds.length; i++) {
      acc += this.counts[i]!;
      values.push({ value: acc, labels: { ...this.labels, le: pyFloat(this.bounds[i]!) }, metricName: bucket });
    }
    values.push({ value: this.count, labels: { ...this.labels, le: '+Inf' }, metricName: bucket });
    values.push({ value: this.sum, labels: this.labels, metricName: `${this.name}_sum` });
    values.push({ value: this.count, labels: this.labels, metricName: `${this.name}_count` });
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

export class ServerMetrics {
  readonly registry: Registry;
  readonly contentType: string;

  private readonly base: Readonly<Record<string, string>>;
  private readonly tallies: Tally[] = [];

  private readonly running: Gauge.Internal<string>;
  private readonly waiting: Gauge.Internal<string>;
  private readonly kvUsage: Gauge.Internal<string>;
  private readonly gpuCacheUsage: Gauge.Internal<string>;
  private readonly priceToken: Gauge;
  private readonly priceKv: Gauge;
  private readonly welfareGauge: Gauge;
  private readonly budgetGauge: Gauge<'tenant'>;
  private readonly budgetChildren = new Map<string, Gauge.Internal<'tenant'>>();

  private readonly prefixQueries: Tally;
  private readonly prefixHits: Tally;
  private readonly preemptions: Tally;
  private readonly promptTokenTally: Tally;
  private readonly generationTokenTally: Tally;
  private readonly success: Record<MetricsFinishReason, Tally>;
  private readonly valueRealized: Tally;
  private readonly computeCost: Tally;
  private readonly revenue: Tally;
  private readonly swaps: Tally;
  private readonly kvBytesCopied: Tally;
  private readonly kvBlockCopies: Tally;
  private readonly rejectedCounter: Counter<'reason'>;
  private readonly rejectedByReason = new Map<string, Tally>();

  private readonly ttft: FixedHistogram;
  private readonly itl: FixedHistogram;
  private readonly tpotLegacy: FixedHistogram;
  private readonly requestTpot: FixedHistogram;
  private readonly e2e: FixedHistogram;
  private readonly queue: FixedHistogram;
  private readonly requestPrompt: FixedHistogram;
  private readonly requestGeneration: FixedHistogram;

  private welfare = 0;

  constructor(opts: ServerMetricsOptions) {
    const registry = opts.registry ?? new Registry();
    this.registry = registry;
    this.contentType = registry.contentType;
    const registers = [registry];
    const labelNames = ['model_name', 'engine'] as const;
    this.base = Object.freeze({ model_name: opts.modelName, engine: '0' });
    const base = this.base;
    const flushAll = (): void => {
      for (const t of this.tallies) t.flush();
    };

    const gauge = (name: string, help: string): Gauge.Internal<string> => {
      const g = new Gauge({ name, help, labelNames, registers });
      const child = g.labels(base);
      // Present before the first step: the EPP treats a missing family as a failed scrape.
      child.set(0);
      return child;
    };
    const tally = (name: string, help: string, labels: Record<string, string> = base): Tally => {
      const c = new Counter({ name, help, labelNames: Object.keys(labels), registers, collect: flushAll });
      const t = new Tally(c.labels(labels));
      this.tallies.push(t);
      return t;
    };
    const histogram = (name: string, help: string, buckets: readonly number[]): FixedHistogram => {
      const h = new FixedHistogram(name, help, buckets, base);
      // The Registry only reads name/help/type/aggregator and calls get() and reset(); its typings
      // list prom-client's own classes, hence the cast.
      registry.registerMetric(h as unknown as Metric);
      return h;
    };

    // --- Scheduler state: what the EPP reads (queue depth, running, KV utilization).
    this.running = gauge('vllm:num_requests_running', 'Number of requests in model execution batches.');
    this.waiting = gauge('vllm:num_requests_waiting', 'Number of requests waiting to be processed.');
    this.kvUsage = gauge('vllm:kv_cache_usage_perc', 'KV-cache usage. 1 means 100 percent usage.');
    // Renamed to kv_cache_usage_perc in vLLM 0.9, but EPP releases before that rename default
    // --kvCacheUsagePercentageMetric to this name.
    this.gpuCacheUsage = gauge('vllm:gpu_cache_usage_perc', 'GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.');

    // Info-style gauge fixed at 1; the EPP parses block_size and num_gpu_blocks with Atoi, so they stay
    // plain integers. Other values are rendered as Python's str() would, as vLLM does.
    const kvTokens = opts.numBlocks * opts.blockSize;
    const cacheInfo: Record<string, string> = {
      engine: '0',
      block_size: String(opts.blockSize),
      cache_dtype: 'auto',
      enable_prefix_caching: 'True',
      num_gpu_blocks: String(opts.numBlocks),
      num_cpu_blocks: opts.numCpuBlocks === undefined ? 'None' : String(opts.numCpuBlocks),
      kv_cache_size_tokens: String(kvTokens),
      kv_cache_max_concurrency: opts.maxContext > 0 ? pyFloat(kvTokens / opts.maxContext) : 'None',
    };
    new Gauge({ name: 'vllm:cache_config_info', help: 'Information of the LLMEngine CacheConfig', labelNames: Object.keys(cacheInfo), registers }).labels(cacheInfo).set(1);

    // --- Counters. vLLM V1 counts prefix-cache queries and hits in tokens.
    this.prefixQueries = tally('vllm:prefix_cache_queries_total', 'Prefix cache queries, in terms of number of queried tokens.');
    this.prefixHits = tally('vllm:prefix_cache_hits_total', 'Prefix cache hits, in terms of number of cached tokens.');
    this.preemptions = tally('vllm:num_preemptions_total', 'Cumulative number of preemption from the engine.');
    this.promptTokenTally = tally('vllm:prompt_tokens_total', 'Number of prefill tokens processed.');
    this.generationTokenTally = tally('vllm:generation_tokens_total', 'Number of generation tokens processed.');
    const successCounter = new Counter({ name: 'vllm:request_success_total', help: 'Count of successfully processed requests.', labelNames: [...labelNames, 'finished_reason'], registers, collect: flushAll });
    const successTally = (reason: MetricsFinishReason): Tally => {
      const t = new Tally(successCounter.labels({ ...base, finished_reason: reason }));
      this.tallies.push(t);
      return t;
    };
    this.success = { stop: successTally('stop'), length: successTally('length'), abort: successTally('abort') };

    // --- Histograms.
    this.ttft = histogram('vllm:time_to_first_token_seconds', 'Histogram of time to first token in seconds.', TTFT_BUCKETS);
    this.itl = histogram('vllm:inter_token_latency_seconds', 'Histogram of inter-token latency in seconds.', INTER_TOKEN_BUCKETS);
    // The pre-0.11 name of the inter-token histogram (same observations); dashboards and
    // autoscalers written against older vLLM still query it.
    this.tpotLegacy = histogram('vllm:time_per_output_token_seconds', 'Histogram of time per output token in seconds. DEPRECATED: Use vllm:inter_token_latency_seconds instead.', INTER_TOKEN_BUCKETS);
    this.requestTpot = histogram('vllm:request_time_per_output_token_seconds', 'Histogram of time_per_output_token_seconds per request.', INTER_TOKEN_BUCKETS);
    this.e2e = histogram('vllm:e2e_request_latency_seconds', 'Histogram of e2e request latency in seconds.', REQUEST_LATENCY_BUCKETS);
    this.queue = histogram('vllm:request_queue_time_seconds', 'Histogram of time spent in WAITING phase for request.', REQUEST_LATENCY_BUCKETS);
    const tokenBuckets = buckets125(opts.maxContext);
    this.requestPrompt = histogram('vllm:request_prompt_tokens', 'Number of prefill tokens processed.', tokenBuckets);
    this.requestGeneration = histogram('vllm:request_generation_tokens', 'Number of generation tokens processed.', tokenBuckets);

    // --- The economy.
    this.priceToken = new Gauge({ name: 'marginal_price_token', help: 'Current shadow price of one batched token.', registers });
    this.priceKv = new Gauge({ name: 'marginal_price_kv_block_second', help: 'Current rent of one KV block for one second.', registers });
    // A gauge although cumulative: value realized minus compute can fall, and a counter may not.
    this.welfareGauge = new Gauge({ name: 'marginal_welfare_total', help: 'Cumulative value realized minus compute at the base price.', registers });
    this.valueRealized = tally('marginal_value_realized_total', 'Cumulative value realized by finished requests (value of those that met their SLO).', {});
    this.computeCost = tally('marginal_compute_cost_total', 'Cumulative compute of finished requests at the base price.', {});
    this.revenue = tally('marginal_revenue_total', 'Cumulative sum of the bills of finished requests.', {});
    this.swaps = tally('marginal_swaps_total', 'Preemptions that swapped KV to host memory instead of dropping it.', {});
    this.kvBytesCopied = tally('marginal_kv_bytes_copied_total', 'Bytes of keys and values the engine copied outside the graph: new positions into their blocks, block copies, swaps, staging.', {});
    this.kvBlockCopies = tally('marginal_kv_block_copies_total', 'KV blocks copied before a write into a shared block (copy-on-write); prefix-cache hits share blocks without copying.', {});
    this.rejectedCounter = new Counter({ name: 'marginal_requests_rejected_total', help: 'Requests turned away with a price quote, by reason.', labelNames: ['reason'], registers, collect: flushAll });
    this.budgetGauge = new Gauge({ name: 'marginal_budget_remaining', help: "Tenant's remaining budget.", labelNames: ['tenant'], registers });
    this.priceToken.set(0);
    this.priceKv.set(0);
    this.welfareGauge.set(0);
  }

  /** Called once per engine step with the scheduler's state. */
  step(s: MetricsSnapshot): void {
    this.running.set(s.running);
    this.waiting.set(s.waiting);
    this.kvUsage.set(s.kvUsage);
    this.gpuCacheUsage.set(s.kvUsage);
    this.priceToken.set(s.priceToken);
    this.priceKv.set(s.priceKvBlockSecond);
  }

  /** Per admitted request: prompt tokens looked up in the prefix cache and tokens found. */
  prefixQuery(queriedTokens: number, hitTokens: number): void {
    this.prefixQueries.add(queriedTokens);
    this.prefixHits.add(hitTokens);
  }

  /** KV bytes the engine copied and blocks copied on write, since the last call. */
  kvCopies(bytes: number, blocks: number): void {
    this.kvBytesCopied.add(bytes);
    this.kvBlockCopies.add(blocks);
  }

  /** n streams preempted; swapped when their KV went to host memory rather than being dropped. */
  preempted(n: number, swapped: boolean): void {
    // vLLM counted swap-mode preemptions in num_preemptions too.
    this.preemptions.add(n);
    if (swapped) this.swaps.add(n);
  }

  /** Prompt tokens computed this step (cache hits excluded). */
  promptTokens(n: number): void {
    this.promptTokenTally.add(n);
  }

  /** Tokens generated this step. */
  generationTokens(n: number): void {
    this.generationTokenTally.add(n);
  }

  /** Time to first token of one request. */
  firstToken(seconds: number): void {
    this.ttft.observe(seconds);
  }

  /** One gap between consecutive tokens of a stream. */
  interToken(seconds: number): void {
    this.itl.observe(seconds);
    this.tpotLegacy.observe(seconds);
  }

  finished(r: FinishedRequestMetrics): void {
    this.success[r.finishReason].add(1);
    this.e2e.observe(r.e2eSeconds);
    this.queue.observe(r.queueSeconds);
    this.requestPrompt.observe(r.promptTokens);
    this.requestGeneration.observe(r.outputTokens);
    if (r.tpotSeconds !== null) this.requestTpot.observe(r.tpotSeconds);
    this.valueRealized.add(r.realizedValue);
    this.computeCost.add(r.computeCost);
    this.revenue.add(r.billTotal);
    const dw = r.realizedValue - r.computeCost;
    if (Number.isFinite(dw)) {
      this.welfare += dw;
      this.welfareGauge.set(this.welfare);
    }
  }

  rejected(reason: string): void {
    let t = this.rejectedByReason.get(reason);
    if (t === undefined) {
      t = new Tally(this.rejectedCounter.labels({ reason }));
      this.tallies.push(t);
      this.rejectedByReason.set(reason, t);
    }
    t.add(1);
  }

  budget(tenant: string, remaining: number): void {
    let g = this.budgetChildren.get(tenant);
    if (g === undefined) {
      g = this.budgetGauge.labels({ tenant });
      this.budgetChildren.set(tenant, g);
    }
    g.set(remaining);
  }

  /** The exposition text for GET /metrics. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}
