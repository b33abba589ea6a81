import type { SchedRequest } from './request.js';

/**
 * What a request's tokens are worth, shared by the clearing prices (every policy's bills) and
 * the pricing policy's admission and preemption. One unit system throughout: value units (the
 * unit of `value`, `bid`, bills and budgets); a token price is value per batched token, a KV
 * price value per block-second, a keep-value or a rent value per block over a horizon.
 */
export interface ValuationClock {
  readonly now: number;
  readonly prefillChunk: number;
  /** Recent seconds per engine step. */
  stepSeconds(): number;
}

const logistic = (x: number): number => 1 / (1 + Math.exp(x));

/** Width of the SLO logistic, as a fraction of the SLO: soft, because step times vary. */
const SOFTNESS = 0.1;

/**
 * Probability that `r`, starting to compute after `waitSeconds` with `uncached` prompt tokens
 * left, meets its TTFT SLO, its TPOT SLO and its deadline. The deadline term is the length
 * model's P(the rest of the output fits in the time left), so a long expected answer to a
 * tight deadline is priced as the gamble it is.
 */
export function pMeet(r: SchedRequest, uncached: number, c: ValuationClock, waitSeconds = 0): number {
  const s = r.spec;
  const step = c.stepSeconds();
  const prefillSeconds = Math.ceil(uncached / c.prefillChunk) * step;
  let p = 1;
  if (s.slo?.ttftMs !== undefined && Number.isNaN(r.firstTokenAt)) {
    const slo = s.slo.ttftMs / 1000;
    const est = c.now - s.arrival + waitSeconds + prefillSeconds;
    p *= logistic((est - slo) / (SOFTNESS * slo));
  }
  if (s.slo?.tpotMs !== undefined) {
    const slo = s.slo.tpotMs / 1000;
    p *= logistic((step - slo) / (SOFTNESS * slo));
  }
  if (s.deadlineMs !== undefined) p *= pBeforeDeadline(r, c, waitSeconds + prefillSeconds);
  return p;
}

/** P(the rest of `r`'s output is done by its deadline) if it starts decoding after `delaySeconds`. */
export function pBeforeDeadline(r: SchedRequest, c: ValuationClock, delaySeconds: number): number {
  const s = r.spec;
  if (s.deadlineMs === undefined) return 1;
  const left = s.arrival + s.deadlineMs / 1000 - c.now - delaySeconds;
  if (!(left > 0)) return 0;
  const affordable = left / Math.max(c.stepSeconds(), 1e-6);
  const d = r.lengthDist;
  const g = r.generated;
  const done = g > 0 ? d.cdf(g) : 0;
  if (done >= 1) return 1;
  // Conditional on the output being longer than what exists already.
  return Math.min(1, Math.max(0, (d.cdf(g + affordable) - done) / (1 - done)));
}

/** Tokens `r` still needs computed: its uncached prompt (or recompute) and its expected output. */
export function tokensToGo(r: SchedRequest, uncached: number): number {
  return uncached + r.remainingOutput();
}

/** Expected value of finishing `r` from here: its counted value times the chance it meets its SLO. */
export function expectedValue(r: SchedRequest, uncached: number, c: ValuationClock, waitSeconds = 0): number {
  return r.valueAt(r.generated + r.remainingOutput()) * pMeet(r, uncached, c, waitSeconds);
}

/** Expected seconds `r` holds its KV from here: prefill steps plus one step per expected output token. */
export function lifetimeSeconds(r: SchedRequest, uncached: number, c: ValuationClock): number {
  return (Math.ceil(uncached / c.prefillChunk) + r.remainingOutput()) * c.stepSeconds();
}
