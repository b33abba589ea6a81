/**
 * `marginal bench serve`: a serving benchmark against any OpenAI-compatible server, with the
 * metric definitions of vLLM's `vllm bench serve` (vllm/benchmarks/serve.py,
 * vllm/benchmarks/lib/endpoint_request_func.py) so that its numbers can be set beside vLLM's,
 * plus what only a priced server has: quotes, bills, realized value and welfare.
 *
 * The metric arithmetic (summarizeTimelines) is pure: it takes per-request timelines that the
 * load generator (benchServe) records with performance.now(), or that a test writes by hand.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import cliProgress from 'cli-progress';
import type { Bill } from '../economy/ledger.js';
import { Rng } from '../sampling/rng.js';
import { InvalidArgumentError } from '../errors.js';
import { fmix32 } from '../random.js';
import { mean as finiteMean, meetsSlo, percentile, realizedValue, tpotMs, type Expectation, type RequestOutcome } from '../sim/metrics.js';
import { DEFAULT_BASE_PRICE } from '../sim/simulator.js';
import { answerQuote } from '../sim/client.js';
import { declared, type ClientBehaviour, type TraceRequest } from '../sim/trace.js';
import type { Quote } from '../scheduler/request.js';
import type { QuoteBody } from '../server/quote.js';

// ---------------------------------------------------------------------------------------------
// Timelines and the metric arithmetic
// ---------------------------------------------------------------------------------------------

export type { QuoteBody };

/** A marginal server's verdict on a finished request (response extension `outcome`). */
export interface ServerVerdict {
  value_counted: number;
  slo_met: boolean;
  value_realized: number;
}

/** The wire quote back in the scheduler's terms. */
export function quoteFromBody(q: QuoteBody, message = ''): Quote {
  return {
    reason: q.reason,
    message,
    pricePerToken: q.price_per_token,
    pricePerKvBlockSecond: q.price_per_kv_block_second,
    minValue: q.min_value ?? Infinity,
    valueCounted: q.value_counted,
    retryable: q.retryable,
    expectedWaitMs: q.expected_wait_ms,
    ...(q.predicted_ttft_ms !== undefined ? { predictedTtftMs: q.predicted_ttft_ms } : {}),
    ...(q.predicted_e2e_ms !== undefined ? { predictedE2eMs: q.predicted_e2e_ms } : {}),
  };
}

/** What the client saw of one request. Times are milliseconds on one clock (performance.now()). */
export interface RequestTimeline {
  /** The trace id, else the request's 0-based index. */
  id: string;
  tenant: string;
  /** The economics the request carried, to judge its realized value by its own SLO. */
  expect?: Omit<Expectation, 'arrival'>;
  /** Prompt tokens asked for; stands in for usage.prompt_tokens when the server sent none. */
  promptTokensHint?: number;
  /** When the request was sent (after any client-side concurrency wait, as vLLM measures). */
  start: number;
  /** Arrival of every chunk whose text (completions) or delta.content (chat) is non-empty. */
  chunks: number[];
  /** Arrival of the last chunk that carried choices (content or finish_reason); null if none did. */
  end: number | null;
  /** HTTP status; null when no response arrived (connection refused, timeout before headers). */
  status: number | null;
  /** The stream ended properly: `data: [DONE]`, or a finish_reason and a clean end of body. */
  done: boolean;
  /** An error event the server sent inside a 200 stream, or the error body of a non-200. */
  serverError?: string;
  /** What went wrong on the client's side: network error, timeout, truncated stream. */
  clientError?: string;
  /** Stopped by the user (Ctrl-C): not the server's fault, so not lost. */
  cancelled?: boolean;
  usage?: { prompt_tokens?: number; completion_tokens?: number; cached_tokens?: number };
  bill?: Bill | null;
  quote?: QuoteBody;
  /** The server's verdict, where the server gives one (a marginal server does). */
  outcome?: ServerVerdict;
  /** Attempts sent for this request (1 + retries after 429 quotes); the timeline is the last one's. */
  attempts?: number;
}

export type BenchOutcomeKind = 'completed' | 'rejected' | 'budget' | 'aborted' | 'lost';

/**
 * A per-request line of `--requests-out`: the simulator's RequestOutcome (DESIGN.md §5) plus what
 * a client also knows. Lost requests appear as outcome "aborted" with `lost: true`.
 */
export interface BenchOutcome extends RequestOutcome {
  status: number | null;
  error?: string;
  lost?: true;
}

/** vLLM's `--goodput` bounds, in ms; a request is good when it completed within each one given. */
export interface GoodputSlo {
  ttftMs?: number;
  tpotMs?: number;
  e2elMs?: number;
}

export type LatencyMetric = 'ttft' | 'tpot' | 'itl' | 'e2el';

/** The summary object of `marginal bench serve --json`. */
export interface BenchSummary {
  // --- vLLM's keys (vllm/benchmarks/serve.py, `result`), same names and units.
  duration: number;
  completed: number;
  failed: number;
  total_input_tokens: number;
  total_output_tokens: number;
  request_throughput: number;
  /** null without --slo, as vLLM writes None without --goodput. */
  request_goodput: number | null;
  output_throughput: number;
  total_token_throughput: number;
  max_output_tokens_per_s: number;
  max_concurrent_requests: number;
  mean_ttft_ms: number;
  median_ttft_ms: number;
  std_ttft_ms: number;
  mean_tpot_ms: number;
  median_tpot_ms: number;
  std_tpot_ms: number;
  mean_itl_ms: number;
  median_itl_ms: number;
  std_itl_ms: number;
  mean_e2el_ms: number;
  median_e2el_ms: number;
  std_e2el_ms: number;
  /** `p99_ttft_ms`, `p99.9_itl_ms`, …: one per --percentiles value and metric. */
  [percentileKey: `p${string}_${LatencyMetric}_ms`]: number;
  // --- Ours.
  policy: string;
  requests: number;
  /** 429s: turned away with a price quote. */
  rejected: number;
  /** 402s: the tenant's budget is spent. */
  budget_exhausted: number;
  /** Definite errors other than those (other 4xx/5xx, an error event in the stream), and Ctrl-C. */
  aborted: number;
  /** Neither completed nor answered definitely (network error, timeout, cut stream): must be 0. */
  lost: number;
  /** The server's preemption counter over the run (/metrics), null where it exposes none. */
  preempted: number | null;
  /** Requests that met their own slo/deadline fields (DESIGN.md §5). */
  slo_met: number;
  value_realized: number;
  /** value_realized − computed tokens × base_price, as the simulator's welfare. */
  welfare: number;
  base_price: number;
  /** Σ bill.total. */
  billed: number;
  /** Σ cached_tokens / Σ prompt_tokens over requests whose usage came back. */
  cache_hit_rate: number;
  /** Mean price_per_token of the 429 quotes; null without any. */
  mean_quote_price: number | null;
  // --- The simulator's contract keys (DESIGN.md §5), so `sim` and `bench serve` compare line by line.
  /** slo_met / duration. */
  goodput_rps: number;
  /** total_output_tokens / duration. */
  throughput_tok_s: number;
  /** Nearest-rank percentiles as the simulator computes them (vLLM's pXX keys interpolate). */
  ttft_p50_ms: number | null;
  ttft_p99_ms: number | null;
  tpot_p50_ms: number | null;
  tpot_p99_ms: number | null;
  interrupted: boolean;
}

export interface SummarizeOptions {
  /** Benchmark duration; default: first start to last end over all timelines. */
  durationS?: number;
  /** Default [99]. */
  percentiles?: readonly number[];
  slo?: GoodputSlo;
  /** Compute cost per token for welfare; default the simulator's. */
  basePrice?: number;
  policy?: string;
  preempted?: number | null;
  interrupted?: boolean;
  /** Value per output token of requests that carry no value or bid, for servers that give no verdict of their own. */
  defaultBid?: number;
}

/** The latency samples behind the summary, in ms, as vLLM pools them. */
export interface LatencySamples {
  ttft: number[];
  /** Requests with more than one output token only. */
  tpot: number[];
  /** Pooled over all completed requests. */
  itl: number[];
  e2el: number[];
}

export function classify(t: RequestTimeline): BenchOutcomeKind {
  if (t.cancelled) return 'aborted';
  if (t.status === 429) return 'rejected';
  if (t.status === 402) return 'budget';
  if (t.status === 200) {
    if (t.serverError !== undefined) return 'aborted';
    // vLLM's success test is "received a chunk"; we also want the stream to have ended properly.
    if (t.done && t.end !== null) return 'completed';
    return 'lost';
  }
  if (t.status !== null && t.status >= 400) return 'aborted';
  return 'lost';
}

function outputTokensOf(t: RequestTimeline): number {
  return t.usage?.completion_tokens ?? t.chunks.length;
}

function promptTokensOf(t: RequestTimeline): number {
  return t.usage?.prompt_tokens ?? t.promptTokensHint ?? 0;
}

/** numpy.percentile's default ("linear") interpolation; 0 for no values, as vLLM's `np.percentile(xs or 0, p)`. */
export function npPercentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const xs = [...values].sort((a, b) => a - b);
  const h = ((xs.length - 1) * p) / 100;
  const lo = Math.floor(h);
  const a = xs[lo] as number;
  const b = xs[Math.min(lo + 1, xs.length - 1)] as number;
  return a + (h - lo) * (b - a);
}

function npMean(xs: readonly number[]): number {
  return xs.length === 0 ? 0 : xs.reduce((s, x) => s + x, 0) / xs.length;
}

/** Population standard deviation (numpy's default ddof = 0). */
function npStd(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const m = npMean(xs);
  return Math.sqrt(xs.reduce((s, x) => s + (x - m) * (x - m), 0) / xs.length);
}

/** vLLM's key for a percentile: "99" for 99, "99.9" for 99.9 (Python's str of the float). */
export function percentileWord(p: number): string {
  // JavaScript's shortest round-trip form matches Python's str() for these: 99 → "99", 99.9 → "99.9".
  return String(p);
}

/**
 * The summary and the per-request outcomes of a run. Definitions follow vLLM's
 * calculate_metrics: only completed requests enter the latency and token statistics; TTFT is
 * the first content chunk; TPOT = (E2EL − TTFT)/(output − 1) over requests with output > 1;
 * ITL pools the gaps between consecutive content chunks of every request; E2EL runs to the last
 * chunk with choices; a request is good (goodput) when each given bound holds, its TPOT taken
 * as 0 when it has one output token.
 */
export function summarizeTimelines(
  timelines: readonly RequestTimeline[],
  opts: SummarizeOptions = {},
): { summary: BenchSummary; outcomes: BenchOutcome[]; samples: LatencySamples } {
  const percentiles = opts.percentiles ?? [99];
  const basePrice = opts.basePrice ?? DEFAULT_BASE_PRICE;
  const samples: LatencySamples = { ttft: [], tpot: [], itl: [], e2el: [] };
  const outcomes: BenchOutcome[] = [];
  const counts: Record<BenchOutcomeKind, number> = { completed: 0, rejected: 0, budget: 0, aborted: 0, lost: 0 };
  let totalInput = 0;
  let totalOutput = 0;
  let good = 0;
  let sloMet = 0;
  let valueRealized = 0;
  let computedTokens = 0;
  let billed = 0;
  let promptWithUsage = 0;
  let cachedWithUsage = 0;
  const quotePrices: number[] = [];
  const successes: RequestTimeline[] = [];

  for (const t of timelines) {
    const kind = classify(t);
    counts[kind]++;
    const output = outputTokensOf(t);
    const prompt = promptTokensOf(t);
    const cached = t.usage?.cached_tokens ?? t.bill?.cached_tokens ?? 0;
    const firstAt = t.chunks[0] ?? t.end;
    const ttft = firstAt !== null && firstAt !== undefined ? firstAt - t.start : null;
    const e2e = kind === 'completed' && t.end !== null ? t.end - t.start : null;
    const tpot = e2e !== null && ttft !== null ? tpotMs(e2e, ttft, output) : null;

    if (kind === 'completed' && ttft !== null && e2e !== null) {
      successes.push(t);
      totalInput += prompt;
      totalOutput += output;
      samples.ttft.push(ttft);
      samples.e2el.push(e2e);
      if (tpot !== null) samples.tpot.push(tpot);
      for (let i = 1; i < t.chunks.length; i++) samples.itl.push((t.chunks[i] as number) - (t.chunks[i - 1] as number));
      const s = opts.slo;
      if (s !== undefined && (s.ttftMs !== undefined || s.tpotMs !== undefined || s.e2elMs !== undefined)) {
        const ok = (s.ttftMs === undefined || ttft <= s.ttftMs) && (s.tpotMs === undefined || (tpot ?? 0) <= s.tpotMs) && (s.e2elMs === undefined || e2e <= s.e2elMs);
        if (ok) good++;
      }
    }

    if (t.usage?.prompt_tokens !== undefined) {
      promptWithUsage += t.usage.prompt_tokens;
      cachedWithUsage += cached;
    }
    // Compute the server spent on it as far as the client can tell: prefill of what was not
    // cached, plus what it generated. Recomputation after preemption is invisible from here.
    if (kind === 'completed' || kind === 'aborted' || kind === 'lost') {
      const ranPrefill = t.usage !== undefined || t.chunks.length > 0 || t.end !== null;
      if (ranPrefill) computedTokens += Math.max(0, prompt - cached) + output;
    }
    billed += t.bill?.total ?? 0;
    if (kind === 'rejected' && t.quote && Number.isFinite(t.quote.price_per_token)) quotePrices.push(t.quote.price_per_token);

    const outcome: RequestOutcome['outcome'] = kind === 'completed' ? 'completed' : kind === 'rejected' || kind === 'budget' ? 'rejected' : 'aborted';
    const e: Expectation = { arrival: 0, ...(t.expect ?? {}) };
    if (e.value === undefined && e.bid === undefined && opts.defaultBid !== undefined) e.bid = opts.defaultBid;
    const line = { outcome, ttft_ms: ttft, tpot_ms: tpot, e2e_ms: e2e };
    // One definition of realized value: the server's, where it gives its verdict (the same
    // numbers its /metrics count); judged here from the client's clock only for other servers.
    const verdict = kind === 'completed' ? t.outcome : undefined;
    const met = verdict !== undefined ? verdict.slo_met : meetsSlo(e, line);
    const value = verdict !== undefined ? verdict.value_realized : realizedValue(e, met, output);
    if (met) sloMet++;
    valueRealized += value;
    const o: BenchOutcome = {
      id: t.id,
      tenant: t.tenant,
      ...line,
      prompt_tokens: prompt,
      cached_tokens: cached,
      output_tokens: kind === 'rejected' || kind === 'budget' ? 0 : output,
      // Not observable per request by a client; the run's total is in summary.preempted.
      preemptions: 0,
      value,
      met_slo: met,
      bill: t.bill ?? null,
      status: t.status,
    };
    if (t.quote) o.quote = quoteFromBody(t.quote, t.serverError);
    if (t.attempts !== undefined) o.attempts = t.attempts;
    const err = t.serverError ?? t.clientError ?? (t.cancelled ? 'cancelled' : undefined);
    if (err !== undefined && kind !== 'completed') o.error = err;
    if (kind === 'lost') o.lost = true;
    outcomes.push(o);
  }

  let durationS = opts.durationS;
  if (durationS === undefined) {
    const starts = timelines.map((t) => t.start);
    const ends = timelines.map((t) => t.end ?? t.chunks[t.chunks.length - 1] ?? t.start);
    durationS = timelines.length > 0 ? (Math.max(...ends) - Math.min(...starts)) / 1000 : 0;
  }
  // vLLM divides by the measured duration as is; an empty or instantaneous run would divide by 0.
  const dur = durationS > 0 ? durationS : Number.EPSILON;
  const peak = peaks(successes);
  const completed = counts.completed;
  const nearest = (xs: number[], p: number) => (completed === 0 ? null : percentile(xs, p));

  const summary = {
    duration: durationS,
    completed,
    failed: timelines.length - completed,
    total_input_tokens: totalInput,
    total_output_tokens: totalOutput,
    request_throughput: completed / dur,
    request_goodput: opts.slo !== undefined && Object.values(opts.slo).some((v) => v !== undefined) ? good / dur : null,
    output_throughput: totalOutput / dur,
    total_token_throughput: (totalInput + totalOutput) / dur,
    max_output_tokens_per_s: peak.tokensPerS,
    max_concurrent_requests: peak.concurrency,
  } as Record<string, unknown>;
  for (const m of ['ttft', 'tpot', 'itl', 'e2el'] as const) {
    const xs = samples[m];
    summary[`mean_${m}_ms`] = npMean(xs);
    summary[`median_${m}_ms`] = npPercentile(xs, 50);
    summary[`std_${m}_ms`] = npStd(xs);
    for (const p of percentiles) summary[`p${percentileWord(p)}_${m}_ms`] = npPercentile(xs, p);
  }
  Object.assign(summary, {
    policy: opts.policy ?? 'unknown',
    requests: timelines.length,
    rejected: counts.rejected,
    budget_exhausted: counts.budget,
    aborted: counts.aborted,
    lost: counts.lost,
    preempted: opts.preempted ?? null,
    slo_met: sloMet,
    value_realized: valueRealized,
    welfare: valueRealized - computedTokens * basePrice,
    base_price: basePrice,
    billed,
    cache_hit_rate: promptWithUsage > 0 ? cachedWithUsage / promptWithUsage : 0,
    mean_quote_price: finiteMean(quotePrices),
    goodput_rps: sloMet / dur,
    throughput_tok_s: totalOutput / dur,
    ttft_p50_ms: nearest(samples.ttft, 50),
    ttft_p99_ms: nearest(samples.ttft, 99),
    tpot_p50_ms: samples.tpot.length === 0 ? null : percentile(samples.tpot, 50),
    tpot_p99_ms: samples.tpot.length === 0 ? null : percentile(samples.tpot, 99),
    interrupted: opts.interrupted ?? false,
  });
  return { summary: summary as unknown as BenchSummary, outcomes, samples };
}

/**
 * vLLM's max_output_tokens_per_s (content chunks counted in one-second buckets from the first
 * start) and max_concurrent_requests (sweep over [start, end), ends before starts on ties).
 */
function peaks(ok: readonly RequestTimeline[]): { tokensPerS: number; concurrency: number } {
  if (ok.length === 0) return { tokensPerS: 0, concurrency: 0 };
  const t0 = Math.min(...ok.map((t) => t.start));
  const tEnd = Math.max(...ok.map((t) => t.end as number));
  const buckets = new Array<number>(Math.ceil((tEnd - t0) / 1000) + 1).fill(0);
  const events: [number, number][] = [];
  for (const t of ok) {
    for (const c of t.chunks) {
      const b = Math.floor((c - t0) / 1000);
      if (b >= 0 && b < buckets.length) buckets[b] = (buckets[b] as number) + 1;
    }
    events.push([t.start, 1], [t.end as number, -1]);
  }
  events.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let cur = 0;
  let concurrency = 0;
  for (const [, d] of events) {
    cur += d;
    concurrency = Math.max(concurrency, cur);
  }
  return { tokensPerS: Math.max(...buckets), concurrency };
}

// ---------------------------------------------------------------------------------------------
// Workload: arrivals and prompts
// ---------------------------------------------------------------------------------------------

/** In (0, 1) with 32-bit resolution: safe for logarithms. */
function openUniform(rng: Rng): number {
  return (rng.nextUint32() + 0.5) / 4294967296;
}

/** Marsaglia and Tsang (2000), with the u^(1/k) boost for shape k < 1. */
function gamma(rng: Rng, shape: number, scale: number): number {
  if (shape < 1) return gamma(rng, shape + 1, scale) * Math.pow(openUniform(rng), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number;
    let v: number;
    do {
      x = Math.sqrt(-2 * Math.log(openUniform(rng))) * Math.cos(2 * Math.PI * openUniform(rng));
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = openUniform(rng);
    if (u < 1 - 0.0331 * x * x * x * x) return d * v * scale;
    if (Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v * scale;
  }
}

/**
 * Send times in seconds from the start, as vLLM's get_request: every request, the first
 * included, waits a gamma gap of shape `burstiness` and mean 1/rate (constant 1/rate for
 * infinite burstiness); the cumulative times are then scaled so the last one is n/rate, which
 * keeps the offered rate exactly `rate` whatever the seed. An infinite rate sends all at 0.
 */
export function arrivalSchedule(n: number, rate: number, burstiness: number, seed: number): number[] {
  if (!(rate > 0)) throw new InvalidArgumentError(`rate must be > 0 (got ${rate})`);
  if (!(burstiness > 0)) throw new InvalidArgumentError(`burstiness must be > 0 (got ${burstiness})`);
  if (rate === Infinity) return new Array<number>(n).fill(0);
  const rng = new Rng(seed);
  const out: number[] = [];
  let t = 0;
  for (let i = 0; i < n; i++) {
    t += burstiness === Infinity ? 1 / rate : gamma(rng, burstiness, 1 / (rate * burstiness));
    out.push(t);
  }
  const last = out[n - 1];
  if (last !== undefined && last > 0) {
    const k = n / rate / last;
    for (let i = 0; i < n; i++) out[i] = (out[i] as number) * k;
  }
  return out;
}

/**
 * vLLM's random dataset lengths: input uniform over the integers [⌊L(1−r)⌋, ⌈L(1+r)⌉], output
 * over [max(1, ⌊O(1−r)⌋), ⌈O(1+r)⌉], r in [0, 1).
 */
export function randomLengths(n: number, inputLen: number, outputLen: number, rangeRatio: number, seed: number): { input: number; output: number }[] {
  if (!(rangeRatio >= 0 && rangeRatio < 1)) throw new InvalidArgumentError(`range ratio must be in [0, 1) (got ${rangeRatio})`);
  const rng = new Rng(seed);
  const inLo = Math.max(1, Math.floor(inputLen * (1 - rangeRatio)));
  const inHi = Math.max(inLo, Math.ceil(inputLen * (1 + rangeRatio)));
  const outLo = Math.max(1, Math.floor(outputLen * (1 - rangeRatio)));
  const outHi = Math.max(outLo, Math.ceil(outputLen * (1 + rangeRatio)));
  const pick = (lo: number, hi: number) => lo + Math.floor(openUniform(rng) * (hi - lo + 1));
  const out: { input: number; output: number }[] = [];
  for (let i = 0; i < n; i++) out.push({ input: pick(inLo, inHi), output: pick(outLo, outHi) });
  return out;
}

/**
 * Short, frequent English words: one token each in Llama's SentencePiece vocabulary, in GPT
 * BPEs and in the synthetic models' tokenizer, so n words make about n prompt tokens whatever
 * the server's model. The server's usage.prompt_tokens is what gets reported.
 */
const WORDS = ['the', 'and', 'for', 'her', 'he', 'in', 'on', 'at', 'or', 'of', 'is', 'it', 'as', 'to', 'me', 'an'];


function seedOf(x: number): number {
  const v = new DataView(new ArrayBuffer(8));
  v.setFloat64(0, x);
  return fmix32(v.getUint32(0) ^ fmix32(v.getUint32(4) + 0x9e3779b9));
}

function words(seed: number, count: number, out: string[]): void {
  for (let i = 0; i < count; i++) out.push(WORDS[fmix32(seed + Math.imul(i + 1, 0x9e3779b1)) % WORDS.length] as string);
}

/**
 * Prompt text of about `tokens` tokens. A trace's prefix hashes become shared text: the words
 * of a block depend only on its hash (Mooncake's hashes are chained, so equal hashes mean equal
 * prefixes), so requests that share their first k hashes share their first k blocks' text and
 * the server's prefix cache sees what the trace describes. The rest depends on `uniqueSeed`.
 */
export function promptText(tokens: number, uniqueSeed: number, prefix: readonly number[] = [], blockTokens = 16): string {
  const out: string[] = [];
  for (const h of prefix) {
    if (out.length >= tokens) break;
    words(seedOf(h), Math.min(blockTokens, tokens - out.length), out);
  }
  if (out.length < tokens) words(fmix32(uniqueSeed ^ 0x5bd1e995), tokens - out.length, out);
  return out.join(' ');
}

// ---------------------------------------------------------------------------------------------
// The load generator
// ---------------------------------------------------------------------------------------------

export type BenchEndpoint = '/v1/completions' | '/v1/chat/completions';

export interface BenchServeOptions {
  /** Base URL of the server, e.g. http://127.0.0.1:8000 (a trailing /v1 is tolerated). */
  url: string;
  endpoint?: BenchEndpoint;
  /** Default: the first model of /v1/models; omitted from requests when the server lists none. */
  model?: string;
  /** Sent as `Authorization: Bearer …` by requests whose tenant has no key of its own. */
  apiKey?: string;
  /** Tenant → API key, so that a trace's tenants reach the server as those tenants. */
  tenantKeys?: ReadonlyMap<string, string>;
  /** Requests per second; Infinity (default) sends all at once. Ignored with a trace. */
  rate?: number;
  /** Gamma shape of the gaps: 1 = Poisson (default), < 1 burstier, > 1 smoother. */
  burstiness?: number;
  /** Requests in flight at most (closed loop); default unlimited. */
  maxConcurrency?: number;
  /** Random prompts: how many (default 100). With a trace: its first N (default all). */
  requests?: number;
  /** Random prompts: mean prompt and output lengths, in tokens (defaults 128 and 64). */
  inputLen?: number;
  outputLen?: number;
  /** Random prompts: lengths uniform within ±ratio of the mean, as vLLM's --random-range-ratio. */
  rangeRatio?: number;
  /** Seeds the prompts and the arrival gaps (default 0). */
  seed?: number;
  /**
   * How every request answers a 429 quote (a trace line's own `client` wins): retry after the
   * quoted wait while it can clear, or, as an agent, ask for fewer tokens. Default: give up.
   */
  client?: ClientBehaviour;
  /** Value per output token assumed for requests with no value or bid, where the server gives no verdict. */
  defaultBid?: number;
  /** Replay these instead: arrivals at t (shifted so the first is at 0), lengths and economics. */
  trace?: readonly TraceRequest[];
  /** Default 0 (greedy). */
  temperature?: number;
  /** Bounds for vLLM's goodput. */
  slo?: GoodputSlo;
  /** Default [99]. */
  percentiles?: readonly number[];
  basePrice?: number;
  /**
   * Per request, ms (default 300 000). A request past it is lost. Node's fetch (undici) gives up
   * on its own after 300 s without headers or body bytes, and a marginal server holds its
   * headers until the first token, so longer values only help against other servers.
   */
  timeoutMs?: number;
  /** Aborting stops sending and cancels what is in flight; the result covers what was sent. */
  signal?: AbortSignal;
  /** A progress bar on stderr (default off). */
  progress?: boolean;
}

export interface BenchServeResult {
  summary: BenchSummary;
  /** One per request sent, in send order (= trace order). */
  outcomes: BenchOutcome[];
  timelines: RequestTimeline[];
  samples: LatencySamples;
  /** What the caller may want to tell the user (lengths beyond the model's context, …). */
  warnings: string[];
  model: string | undefined;
}

interface PlannedRequest {
  id: string;
  tenant: string;
  /** Seconds from the start. */
  at: number;
  body: Record<string, unknown>;
  promptTokens: number;
  outputTokens: number;
  expect: Omit<Expectation, 'arrival'>;
  client?: ClientBehaviour;
  /** What the request is worth to its client (true value, or bid × tokens); undefined: the server's count of it. */
  worth?: (maxTokens: number) => number;
}

/** The server's origin plus path prefix, without a trailing slash or /v1. */
export function normalizeBaseUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InvalidArgumentError(`--url must be an absolute http(s) URL such as http://127.0.0.1:8000 (got ${JSON.stringify(url)})`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new InvalidArgumentError(`--url must be an http(s) URL such as http://127.0.0.1:8000 (got ${JSON.stringify(url)})`);
  if (u.search !== '' || u.hash !== '') throw new InvalidArgumentError('--url must not carry a query or a fragment');
  const path = u.pathname.replace(/\/+$/, '').replace(/\/v1$/, '');
  return `${u.origin}${path}`;
}

async function getJson(url: string, headers: Record<string, string>, timeoutMs: number, signal?: AbortSignal): Promise<{ status: number; body: unknown; text: string }> {
  const signals = [AbortSignal.timeout(timeoutMs), ...(signal ? [signal] : [])];
  const res = await fetch(url, { headers, signal: AbortSignal.any(signals) });
  const text = await res.text();
  let body: unknown = undefined;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON (/metrics is text): the caller reads `text`.
  }
  return { status: res.status, body, text };
}

/** Σ of a Prometheus counter's samples (all label sets), or null when the family is absent. */
export function promCounter(text: string, name: string): number | null {
  let found = false;
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    const v = Number(line.trim().split(/\s+/).at(-1));
    if (Number.isFinite(v)) {
      found = true;
      sum += v;
    }
  }
  return found ? sum : null;
}

function describeFetchError(e: unknown): string {
  const err = e as Error & { cause?: { code?: string; message?: string } };
  const cause = err.cause?.code ?? err.cause?.message;
  return cause ? `${err.message} (${cause})` : err.message;
}

/** A FIFO semaphore: the closed loop's bound on requests in flight. */
class Semaphore {
  private free: number;
  private readonly queue: (() => void)[] = [];
  constructor(n: number) {
    this.free = n;
  }
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((resolve) => this.queue.push(resolve));
  }
  release(): void {
    const next = this.queue.shift();
    if (next) next();
    else this.free++;
  }
}

function plan(o: BenchServeOptions, model: string | undefined, endpoint: BenchEndpoint): PlannedRequest[] {
  const seed = o.seed ?? 0;
  const temperature = o.temperature ?? 0;
  const make = (id: string, tenant: string, at: number, promptTokens: number, outputTokens: number, text: string, econ: Record<string, unknown>, expect: Omit<Expectation, 'arrival'>): PlannedRequest => {
    const body: Record<string, unknown> = {
      ...(model !== undefined ? { model } : {}),
      ...(endpoint === '/v1/chat/completions' ? { messages: [{ role: 'user', content: text }], max_completion_tokens: outputTokens } : { prompt: text, max_tokens: outputTokens }),
      temperature,
      stream: true,
      stream_options: { include_usage: true },
      ...econ,
    };
    return { id, tenant, at, body, promptTokens, outputTokens, expect };
  };

  if (o.trace !== undefined) {
    const trace = o.requests !== undefined ? o.trace.slice(0, o.requests) : o.trace;
    const t0 = trace.reduce((m, r) => Math.min(m, r.t), Infinity);
    return trace.map((r, i) => {
      const econ: Record<string, unknown> = {};
      const expect: Omit<Expectation, 'arrival'> = {};
      if (r.value !== undefined) expect.value = r.value;
      if (r.bid !== undefined) expect.bid = r.bid;
      // The client sends its claim; it is judged by what the work is truly worth to it.
      const claim = declared(r);
      if (claim.value !== undefined) econ.value = claim.value;
      if (claim.bid !== undefined) econ.bid = claim.bid;
      if (r.slo !== undefined) {
        econ.slo = { ...(r.slo.ttftMs !== undefined ? { ttft_ms: r.slo.ttftMs } : {}), ...(r.slo.tpotMs !== undefined ? { tpot_ms: r.slo.tpotMs } : {}) };
        expect.slo = r.slo;
      }
      if (r.deadlineMs !== undefined) econ.deadline_ms = expect.deadlineMs = r.deadlineMs;
      if (r.priority !== undefined) econ.priority = r.priority;
      // OpenAI's end-user field: the server may ignore it, a log or proxy can attribute by it.
      if (r.tenant !== 'default') econ.user = r.tenant;
      const text = promptText(r.promptTokens, fmix32(seed) ^ fmix32(i + 1), r.prefix, r.prefixBlockTokens);
      const p = make(r.id, r.tenant, r.t - t0, r.promptTokens, r.outputTokens, text, econ, expect);
      const client = r.client ?? o.client;
      if (client !== undefined) p.client = client;
      if (r.value !== undefined || r.bid !== undefined) p.worth = (maxTokens) => r.value ?? (r.bid ?? 0) * maxTokens;
      return p;
    });
  }

  const n = o.requests ?? 100;
  const lengths = randomLengths(n, o.inputLen ?? 128, o.outputLen ?? 64, o.rangeRatio ?? 0, seed);
  const at = arrivalSchedule(n, o.rate ?? Infinity, o.burstiness ?? 1, seed + 1);
  return lengths.map((l, i) => {
    const p = make(String(i), 'default', at[i] as number, l.input, l.output, promptText(l.input, fmix32(seed) ^ fmix32(i + 1)), {}, {});
    if (o.client !== undefined) p.client = o.client;
    return p;
  });
}

function checkOptions(o: BenchServeOptions): void {
  const posInt = (v: number | undefined, name: string) => {
    if (v !== undefined && !(Number.isInteger(v) && v >= 1)) throw new InvalidArgumentError(`${name} must be an integer >= 1 (got ${v})`);
  };
  posInt(o.requests, '--requests');
  posInt(o.maxConcurrency, '--max-concurrency');
  posInt(o.inputLen, '--input-len');
  posInt(o.outputLen, '--output-len');
  if (o.rate !== undefined && !(o.rate > 0)) throw new InvalidArgumentError(`--rate must be > 0 or inf (got ${o.rate})`);
  if (o.burstiness !== undefined && !(o.burstiness > 0)) throw new InvalidArgumentError(`--burstiness must be > 0 (got ${o.burstiness})`);
  if (o.rangeRatio !== undefined && !(o.rangeRatio >= 0 && o.rangeRatio < 1)) throw new InvalidArgumentError(`--range-ratio must be in [0, 1) (got ${o.rangeRatio})`);
  if (o.seed !== undefined && !Number.isSafeInteger(o.seed)) throw new InvalidArgumentError(`--seed must be an integer (got ${o.seed})`);
  if (o.temperature !== undefined && !(o.temperature >= 0)) throw new InvalidArgumentError(`--temperature must be >= 0 (got ${o.temperature})`);
  if (o.timeoutMs !== undefined && !(o.timeoutMs > 0)) throw new InvalidArgumentError(`timeout must be > 0 (got ${o.timeoutMs})`);
  if (o.basePrice !== undefined && !(o.basePrice >= 0 && o.basePrice < Infinity)) throw new InvalidArgumentError(`--base-price must be a number >= 0 (got ${o.basePrice})`);
  for (const p of o.percentiles ?? []) if (!(p >= 0 && p <= 100)) throw new InvalidArgumentError(`percentiles must be in [0, 100] (got ${p})`);
  for (const [k, v] of Object.entries(o.slo ?? {})) if (v !== undefined && !(v >= 0 && v < Infinity)) throw new InvalidArgumentError(`--slo ${k} must be a number of ms >= 0 (got ${v})`);
  if (o.trace !== undefined && o.trace.length === 0) throw new InvalidArgumentError('the trace has no requests');
}

/** Reads one SSE stream into the timeline; resolves when the body ends. */
async function readStream(res: Response, tl: RequestTimeline, chat: boolean): Promise<void> {
  if (res.body === null) return;
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let finished = false;
  const handle = (event: string, now: number) => {
    let data = '';
    for (const line of event.split('\n')) {
      // SSE comments (":" lines) are keep-alives; only data lines carry payloads.
      if (line.startsWith('data:')) data += (data ? '\n' : '') + line.slice(line.startsWith('data: ') ? 6 : 5);
    }
    if (data === '') return;
    if (data.trim() === '[DONE]') {
      tl.done = true;
      return;
    }
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(data) as Record<string, unknown>;
    } catch {
      tl.clientError = `unparseable stream event: ${data.slice(0, 200)}`;
      return;
    }
    if (msg.error !== undefined && msg.error !== null) {
      const e = msg.error as { message?: unknown };
      tl.serverError = typeof e.message === 'string' ? e.message : JSON.stringify(msg.error);
      return;
    }
    const choices = msg.choices;
    if (Array.isArray(choices) && choices.length > 0) {
      const c = choices[0] as { text?: unknown; delta?: { content?: unknown }; finish_reason?: unknown };
      const text = chat ? c.delta?.content : c.text;
      if (typeof text === 'string' && text.length > 0) tl.chunks.push(now);
      tl.end = now;
      if (c.finish_reason !== null && c.finish_reason !== undefined) finished = true;
    }
    const usage = msg.usage as { prompt_tokens?: unknown; completion_tokens?: unknown; prompt_tokens_details?: { cached_tokens?: unknown } } | null | undefined;
    if (usage) {
      const u: NonNullable<RequestTimeline['usage']> = {};
      if (typeof usage.prompt_tokens === 'number') u.prompt_tokens = usage.prompt_tokens;
      if (typeof usage.completion_tokens === 'number') u.completion_tokens = usage.completion_tokens;
      if (typeof usage.prompt_tokens_details?.cached_tokens === 'number') u.cached_tokens = usage.prompt_tokens_details.cached_tokens;
      tl.usage = u;
    }
    if (msg.bill !== undefined && msg.bill !== null) tl.bill = msg.bill as Bill;
    if (msg.outcome !== undefined && msg.outcome !== null && typeof (msg.outcome as ServerVerdict).value_realized === 'number') tl.outcome = msg.outcome as ServerVerdict;
  };
  for (;;) {
    const { value, done } = await reader.read();
    // One timestamp per network read, as vLLM takes one per received chunk of bytes.
    const now = performance.now();
    if (done) break;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
    let k: number;
    while ((k = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, k);
      buf = buf.slice(k + 2);
      handle(event, now);
    }
  }
  if (buf.trim() !== '') handle(buf, performance.now());
  if (!tl.done && finished && tl.serverError === undefined) tl.done = true;
  if (!tl.done && tl.serverError === undefined && tl.clientError === undefined) tl.clientError = 'the stream ended before its finish_reason and [DONE]';
}

async function sendOne(url: string, p: PlannedRequest, headers: Record<string, string>, chat: boolean, timeoutMs: number, stop: AbortSignal): Promise<RequestTimeline> {
  const timeout = AbortSignal.timeout(timeoutMs);
  const tl: RequestTimeline = { id: p.id, tenant: p.tenant, expect: p.expect, promptTokensHint: p.promptTokens, start: performance.now(), chunks: [], end: null, status: null, done: false };
  try {
    const res = await fetch(url, { method: 'POST', headers, body: JSON.stringify(p.body), signal: AbortSignal.any([stop, timeout]) });
    tl.status = res.status;
    if (res.status === 200) {
      await readStream(res, tl, chat);
    } else {
      const text = await res.text();
      let body: { error?: { message?: string; quote?: QuoteBody }; quote?: QuoteBody } | undefined;
      try {
        body = JSON.parse(text) as typeof body;
      } catch {
        body = undefined;
      }
      tl.serverError = body?.error?.message ?? (text.slice(0, 500) || `HTTP ${res.status}`);
      if (res.status === 429 || res.status === 402) {
        const q = body?.error?.quote ?? body?.quote;
        if (q && typeof q.price_per_token === 'number') tl.quote = q;
      }
    }
  } catch (e) {
    if (stop.aborted) tl.cancelled = true;
    else if (timeout.aborted) tl.clientError = `timed out after ${timeoutMs} ms`;
    else tl.clientError = describeFetchError(e);
  }
  return tl;
}

/**
 * Sends `p`, and while its client answers 429 quotes by retrying (see `answerQuote`, the same
 * rule the simulator applies), waits the quoted time and sends it again, with fewer tokens if it
 * is an agent that must spend less. The timeline returned is the last attempt's.
 */
async function sendAnswering(url: string, p: PlannedRequest, headers: Record<string, string>, chat: boolean, timeoutMs: number, stop: AbortSignal): Promise<RequestTimeline> {
  let attempt = 1;
  let body = p.body;
  const first = performance.now();
  for (;;) {
    const tl = await sendOne(url, { ...p, body }, headers, chat, timeoutMs, stop);
    tl.attempts = attempt;
    if (tl.status !== 429 || tl.quote === undefined || p.client === undefined || stop.aborted) return tl;
    const maxTokens = Number(body.max_tokens ?? body.max_completion_tokens ?? p.outputTokens);
    const q = quoteFromBody(tl.quote);
    const worth = p.worth !== undefined ? p.worth(maxTokens) : q.valueCounted;
    const left = p.expect.deadlineMs !== undefined ? p.expect.deadlineMs - (performance.now() - first) : undefined;
    const next = answerQuote(p.client, q, attempt, maxTokens, worth, left);
    if (next === undefined) return tl;
    try {
      await sleep(next.afterSeconds * 1000, undefined, { signal: stop });
    } catch {
      return tl;
    }
    attempt++;
    if (next.maxTokens !== maxTokens) body = { ...body, ...(chat ? { max_completion_tokens: next.maxTokens } : { max_tokens: next.maxTokens }) };
    // The deadline is the client's, from its first attempt: a retry carries what is left of it.
    if (p.expect.deadlineMs !== undefined) body = { ...body, deadline_ms: Math.max(1, p.expect.deadlineMs - (performance.now() - first)) };
  }
}

/**
 * Runs the benchmark: asks /v1/models for the model (and the policy, where the server says),
 * sends the planned requests on their schedule (open loop) under the optional concurrency
 * bound (closed loop), streams every answer, and summarizes. Only `url` is contacted.
 */
export async function benchServe(o: BenchServeOptions): Promise<BenchServeResult> {
  checkOptions(o);
  const base = normalizeBaseUrl(o.url);
  const endpoint: BenchEndpoint = o.endpoint ?? '/v1/completions';
  if (endpoint !== '/v1/completions' && endpoint !== '/v1/chat/completions') throw new InvalidArgumentError(`--endpoint must be /v1/completions or /v1/chat/completions (got ${String(endpoint)})`);
  const timeoutMs = o.timeoutMs ?? 300_000;
  const warnings: string[] = [];
  const auth = (key: string | undefined): Record<string, string> => (key ? { authorization: `Bearer ${key}` } : {});

  let models: Awaited<ReturnType<typeof getJson>>;
  try {
    models = await getJson(`${base}/v1/models`, auth(o.apiKey), 10_000, o.signal);
  } catch (e) {
    throw new InvalidArgumentError(`cannot reach ${base}/v1/models: ${describeFetchError(e)} (is the server running?)`);
  }
  const list = (models.body as { data?: { id?: unknown; policy?: unknown; max_model_len?: unknown }[]; policy?: unknown } | undefined) ?? {};
  const first = Array.isArray(list.data) ? list.data[0] : undefined;
  if (models.status !== 200) warnings.push(`GET /v1/models answered ${models.status}; requests go out without a model name`);
  const model = o.model ?? (typeof first?.id === 'string' ? first.id : undefined);
  const policy = typeof first?.policy === 'string' ? first.policy : typeof list.policy === 'string' ? list.policy : 'unknown';
  const maxLen = typeof first?.max_model_len === 'number' ? first.max_model_len : undefined;

  const planned = plan(o, model, endpoint);
  if (maxLen !== undefined) {
    const over = planned.filter((p) => p.promptTokens + p.outputTokens > maxLen).length;
    if (over > 0 && o.trace === undefined) {
      throw new InvalidArgumentError(`--input-len + --output-len reach past the model's context of ${maxLen} tokens for ${over} of ${planned.length} requests`);
    }
    if (over > 0) warnings.push(`${over} of ${planned.length} trace requests ask for more than the model's ${maxLen} tokens of context (the server will refuse them): see --max-prompt-tokens and --max-output-tokens`);
  }

  const metricsText = async (): Promise<string | undefined> => {
    try {
      const r = await getJson(`${base}/metrics`, auth(o.apiKey), 5_000, o.signal);
      return r.status === 200 ? r.text : undefined;
    } catch {
      return undefined;
    }
  };
  const before = await metricsText();

  const stop = new AbortController();
  const onAbort = () => stop.abort();
  if (o.signal?.aborted) stop.abort();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  const sem = o.maxConcurrency !== undefined ? new Semaphore(o.maxConcurrency) : undefined;
  const bar = o.progress ? new cliProgress.SingleBar({ stream: process.stderr, format: ' {bar} {value}/{total} requests | {duration_formatted}', hideCursor: true }, cliProgress.Presets.shades_classic) : undefined;
  bar?.start(planned.length, 0);
  const chat = endpoint === '/v1/chat/completions';
  const url = base + endpoint;
  const tasks: Promise<RequestTimeline>[] = [];
  const t0 = performance.now();
  try {
    for (const p of planned) {
      const wait = t0 + p.at * 1000 - performance.now();
      if (wait > 0) {
        try {
          await sleep(wait, undefined, { signal: stop.signal });
        } catch {
          // Aborted while waiting: stop sending.
        }
      }
      if (stop.signal.aborted) break;
      const headers = { 'content-type': 'application/json', accept: 'text/event-stream', ...auth(o.tenantKeys?.get(p.tenant) ?? o.apiKey) };
      tasks.push(
        (async () => {
          if (sem) await sem.acquire();
          try {
            if (stop.signal.aborted) {
              const now = performance.now();
              return { id: p.id, tenant: p.tenant, expect: p.expect, promptTokensHint: p.promptTokens, start: now, chunks: [], end: null, status: null, done: false, cancelled: true } satisfies RequestTimeline;
            }
            return await sendAnswering(url, p, headers, chat, timeoutMs, stop.signal);
          } finally {
            sem?.release();
            bar?.increment();
          }
        })(),
      );
    }
    const timelines = await Promise.all(tasks);
    const durationS = (performance.now() - t0) / 1000;
    const after = stop.signal.aborted ? undefined : await metricsText();
    const pb = before === undefined ? null : promCounter(before, 'vllm:num_preemptions_total');
    const pa = after === undefined ? null : promCounter(after, 'vllm:num_preemptions_total');
    const summarized = summarizeTimelines(timelines, {
      durationS,
      percentiles: o.percentiles ?? [99],
      ...(o.slo !== undefined ? { slo: o.slo } : {}),
      ...(o.basePrice !== undefined ? { basePrice: o.basePrice } : {}),
      policy,
      preempted: pb !== null && pa !== null ? pa - pb : null,
      interrupted: stop.signal.aborted,
      ...(o.defaultBid !== undefined ? { defaultBid: o.defaultBid } : {}),
    });
    return { ...summarized, timelines, warnings, model };
  } finally {
    bar?.stop();
    o.signal?.removeEventListener('abort', onAbort);
  }
}
