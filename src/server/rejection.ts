import type { Quote } from '../scheduler/request.js';

/**
 * The stable label for why a request was turned away, as metrics, logs and the console show it:
 * the quote's own code where it carries one, else read from its reason. Unknown reasons keep a
 * label of their own rather than being folded into another.
 */
export function rejectionCode(q: Quote | undefined): string {
  if (q === undefined) return 'unknown';
  const code = (q as { code?: unknown }).code;
  if (typeof code === 'string' && code.length > 0) return code;
  const reason = q.reason.toLowerCase();
  if (reason.includes('budget')) return 'budget_exhausted';
  if (reason.includes('slo') || reason.includes('deadline')) return 'slo_unreachable';
  if (reason.includes('cap')) return 'value_cap';
  if (reason.includes('value') || reason.includes('price') || reason.includes('cost')) return 'price_above_bid';
  return 'other';
}

/** The quote as it goes on the wire (429 bodies, logs, the console). */
export function quoteJson(q: Quote): { price_per_token: number; min_value: number; expected_wait_ms: number; reason: string; code: string } {
  return { price_per_token: q.pricePerToken, min_value: q.minValue, expected_wait_ms: q.expectedWaitMs, reason: q.reason, code: rejectionCode(q) };
}
