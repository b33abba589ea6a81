import type { Quote } from '../scheduler/request.js';
import type { ClientBehaviour } from './trace.js';

/** A client's next attempt after a rejection: when (seconds from now) and with what max_tokens. */
export interface NextAttempt {
  afterSeconds: number;
  maxTokens: number;
}

/**
 * How a client that answers to prices (ClientBehaviour) reacts to a 429 quote — the one
 * definition the simulator and `marginal bench serve` share. It retries after the quoted wait
 * while the quote says waiting can clear, the wait is one it accepts, its deadline is not past
 * and the quote's minimum value is within what the request is worth to it; an `agent` whose
 * value is below that minimum asks for fewer tokens instead (its value shrinks in proportion).
 * Otherwise it gives up (undefined).
 *
 * `attempt` counts attempts so far (1 after the first); `worth` is what the request with
 * `maxTokens` is worth to the client; `deadlineLeftMs` what is left of its deadline, if any.
 */
export function answerQuote(c: ClientBehaviour | undefined, q: Quote, attempt: number, maxTokens: number, worth: number, deadlineLeftMs?: number): NextAttempt | undefined {
  if (c === undefined || attempt > c.retries || !q.retryable || q.expectedWaitMs === null) return undefined;
  if (q.expectedWaitMs > (c.maxWaitMs ?? 60_000)) return undefined;
  if (deadlineLeftMs !== undefined && q.expectedWaitMs >= deadlineLeftMs) return undefined;
  let next = maxTokens;
  if (!(q.minValue <= worth)) {
    if (c.mode !== 'agent' || !Number.isFinite(q.minValue) || q.minValue <= 0) return undefined;
    next = Math.floor(maxTokens * (worth / q.minValue) * 0.9);
    if (next < 1 || next >= maxTokens) return undefined;
  }
  return { afterSeconds: Math.max(q.expectedWaitMs, 1) / 1000, maxTokens: next };
}
