import type { Bill } from '../economy/ledger.js';
import type { Quote } from '../scheduler/request.js';

/** One line of `--requests-out` (DESIGN.md §5): what happened to one trace request. */
export interface RequestOutcome {
  id: string;
  tenant: string;
  outcome: 'completed' | 'rejected' | 'aborted';
  ttft_ms: number | null;
  tpot_ms: number | null;
  e2e_ms: number | null;
  prompt_tokens: number;
  cached_tokens: number;
  output_tokens: number;
  preemptions: number;
  /** Realized value: the request's value if it met its SLO, else 0. */
  value: number;
  /** Whether it met every SLO and deadline it carries. */
  met_slo: boolean;
  bill: Bill | null;
  quote?: Quote;
  /** Attempts sent (1 + retries after 429 quotes). */
  attempts?: number;
}

/** What a request asked for, as far as judging its outcome needs. */
export interface Expectation {
  arrival: number;
  value?: number;
  bid?: number;
  slo?: { ttftMs?: number; tpotMs?: number };
  deadlineMs?: number;
  /** The answer's natural length: a completion cut off before it (a lowered max_tokens) is worth proportionally less. */
  outputTokens?: number;
}

/** vLLM's TPOT: (E2EL − TTFT) / (output tokens − 1); null for one-token completions. */
export function tpotMs(e2eMs: number, ttftMs: number, outputTokens: number): number | null {
  return outputTokens > 1 ? (e2eMs - ttftMs) / (outputTokens - 1) : null;
}

/**
 * DESIGN.md §5: a request meets its SLO when it completed, its TTFT ≤ slo.ttft_ms, its TPOT ≤
 * slo.tpot_ms and its end ≤ t + deadline_ms, for each of those it carries.
 */
export function meetsSlo(e: Expectation, o: Pick<RequestOutcome, 'outcome' | 'ttft_ms' | 'tpot_ms' | 'e2e_ms'>): boolean {
  if (o.outcome !== 'completed') return false;
  if (e.slo?.ttftMs !== undefined && (o.ttft_ms === null || o.ttft_ms > e.slo.ttftMs)) return false;
  if (e.slo?.tpotMs !== undefined && o.tpot_ms !== null && o.tpot_ms > e.slo.tpotMs) return false;
  if (e.deadlineMs !== undefined && (o.e2e_ms === null || o.e2e_ms > e.deadlineMs)) return false;
  return true;
}

/**
 * A line with `value` realizes it (the part of it delivered, when the answer was cut off short
 * of its natural length); a line with only `bid` realizes bid × output tokens.
 */
export function realizedValue(e: Expectation, met: boolean, outputTokens: number): number {
  if (!met) return 0;
  if (e.value !== undefined) return e.outputTokens !== undefined && outputTokens < e.outputTokens ? (e.value * outputTokens) / e.outputTokens : e.value;
  return (e.bid ?? 0) * outputTokens;
}

/** Nearest-rank percentile over finite values; null when there are none. */
export function percentile(values: readonly number[], p: number): number | null {
  const xs = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (xs.length === 0) return null;
  const rank = Math.min(xs.length - 1, Math.max(0, Math.ceil((p / 100) * xs.length) - 1));
  return xs[rank] as number;
}

export function mean(values: readonly number[]): number | null {
  const xs = values.filter((x) => Number.isFinite(x));
  return xs.length === 0 ? null : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** The summary object of `marginal sim --json` (DESIGN.md §5), plus what only we measure. */
export interface Summary {
  policy: string;
  requests: number;
  completed: number;
  rejected: number;
  aborted: number;
  /** Preemption events. */
  preempted: number;
  /** Of those, preemptions by swap (the rest recompute). */
  swaps: number;
  /** Requests that ended neither completed, rejected nor aborted: must be 0. */
  lost: number;
  welfare: number;
  value_realized: number;
  goodput_rps: number;
  throughput_tok_s: number;
  ttft_p50_ms: number | null;
  ttft_p99_ms: number | null;
  tpot_p50_ms: number | null;
  tpot_p99_ms: number | null;
  cache_hit_rate: number;
  duration_s: number;
  /** Last arrival − first arrival. */
  arrival_span_s: number;
  slo_met: number;
  output_tokens: number;
  computed_tokens: number;
  recomputed_tokens: number;
  revenue: number;
  base_price: number;
  /** Per tenant: what it got and what it paid. */
  tenants: Record<string, TenantSummary>;
  /** Attempts sent, retries after 429 quotes included. */
  attempts: number;
}

export interface TenantSummary {
  requests: number;
  completed: number;
  rejected: number;
  slo_met: number;
  /** True value realized (what the work was worth to it, not what it declared). */
  value_realized: number;
  /** Σ of its bills. */
  paid: number;
  /** value_realized − paid: what it gained. */
  utility: number;
}

export function tenantSummaries(outcomes: readonly RequestOutcome[]): Record<string, TenantSummary> {
  const out: Record<string, TenantSummary> = {};
  for (const o of outcomes) {
    const t = (out[o.tenant] ??= { requests: 0, completed: 0, rejected: 0, slo_met: 0, value_realized: 0, paid: 0, utility: 0 });
    t.requests++;
    if (o.outcome === 'completed') t.completed++;
    if (o.outcome === 'rejected') t.rejected++;
    if (o.met_slo) t.slo_met++;
    t.value_realized += o.value;
    t.paid += o.bill?.total ?? 0;
    t.utility = t.value_realized - t.paid;
  }
  return out;
}

export function summarize(
  policy: string,
  outcomes: readonly RequestOutcome[],
  opts: { requests: number; durationS: number; arrivalSpanS: number; preemptions: number; swaps: number; computedTokens: number; recomputedTokens: number; basePrice: number },
): Summary {
  const done = outcomes.filter((o) => o.outcome === 'completed');
  const valueRealized = outcomes.reduce((s, o) => s + o.value, 0);
  const met = outcomes.filter((o) => o.met_slo).length;
  const promptTokens = outcomes.reduce((s, o) => s + (o.outcome === 'rejected' ? 0 : o.prompt_tokens), 0);
  const cached = outcomes.reduce((s, o) => s + o.cached_tokens, 0);
  const outputTokens = outcomes.reduce((s, o) => s + o.output_tokens, 0);
  const dur = Math.max(opts.durationS, 1e-9);
  const span = opts.arrivalSpanS > 0 ? opts.arrivalSpanS : dur;
  const completed = done.length;
  const rejected = outcomes.filter((o) => o.outcome === 'rejected').length;
  const aborted = outcomes.filter((o) => o.outcome === 'aborted').length;
  return {
    policy,
    requests: opts.requests,
    completed,
    rejected,
    aborted,
    preempted: opts.preemptions,
    swaps: opts.swaps,
    lost: opts.requests - completed - rejected - aborted,
    welfare: valueRealized - opts.computedTokens * opts.basePrice,
    value_realized: valueRealized,
    // vLLM's definition: good requests over the run's duration (first arrival to last completion).
    goodput_rps: met / dur,
    throughput_tok_s: outputTokens / dur,
    ttft_p50_ms: percentile(done.map((o) => o.ttft_ms ?? NaN), 50),
    ttft_p99_ms: percentile(done.map((o) => o.ttft_ms ?? NaN), 99),
    tpot_p50_ms: percentile(done.map((o) => o.tpot_ms ?? NaN), 50),
    tpot_p99_ms: percentile(done.map((o) => o.tpot_ms ?? NaN), 99),
    cache_hit_rate: promptTokens > 0 ? cached / promptTokens : 0,
    duration_s: opts.durationS,
    arrival_span_s: span,
    slo_met: met,
    output_tokens: outputTokens,
    computed_tokens: opts.computedTokens,
    recomputed_tokens: opts.recomputedTokens,
    revenue: outcomes.reduce((s, o) => s + (o.bill?.total ?? 0), 0),
    base_price: opts.basePrice,
    tenants: tenantSummaries(outcomes),
    attempts: outcomes.reduce((s, o) => s + (o.attempts ?? 1), 0),
  };
}
