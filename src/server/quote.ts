import type { Quote } from '../scheduler/request.js';

/** A quote as it travels: snake_case, and JSON-safe (a minimum value that nothing reaches is null). */
export interface QuoteBody {
  reason: Quote['reason'];
  price_per_token: number;
  price_per_kv_block_second: number;
  min_value: number | null;
  value_counted: number;
  retryable: boolean;
  expected_wait_ms: number | null;
}

export function quoteBody(q: Quote): QuoteBody {
  return {
    reason: q.reason,
    price_per_token: q.pricePerToken,
    price_per_kv_block_second: q.pricePerKvBlockSecond,
    min_value: Number.isFinite(q.minValue) ? q.minValue : null,
    value_counted: q.valueCounted,
    retryable: q.retryable,
    expected_wait_ms: q.expectedWaitMs,
  };
}

/**
 * Headers of a rejection, the same on plain and streamed responses. `retry-after` (and the
 * OpenAI SDKs' `retry-after-ms`) only when waiting can clear, with the quoted wait; otherwise
 * `x-should-retry: false`, which the official OpenAI SDKs honour, so that a client does not
 * retry into a server that will turn it away again.
 */
export function quoteHeaders(q: Quote): Record<string, string> {
  const h: Record<string, string> = {
    'x-marginal-reason': q.reason,
    'x-marginal-price-token': String(q.pricePerToken),
    'x-marginal-price-kv-block-second': String(q.pricePerKvBlockSecond),
    'x-marginal-min-value': Number.isFinite(q.minValue) ? String(q.minValue) : 'inf',
  };
  if (q.retryable && q.expectedWaitMs !== null) {
    h['retry-after'] = String(Math.max(1, Math.ceil(q.expectedWaitMs / 1000)));
    h['retry-after-ms'] = String(Math.max(1, Math.round(q.expectedWaitMs)));
    h['x-should-retry'] = 'true';
  } else h['x-should-retry'] = 'false';
  return h;
}

/** The OpenAI-style body of a rejection: the quote inside `error` (where SDK error objects expose it) and beside it. */
export function rejectionBody(message: string, q: Quote): { error: Record<string, unknown>; quote: QuoteBody } {
  const quote = quoteBody(q);
  const type = q.reason === 'budget_exhausted' ? 'insufficient_quota' : 'rate_limit_error';
  return { error: { message, type, param: null, code: q.reason, quote }, quote };
}
