/**
 * Bounds on the numbers the economy derives from what clients send. A request's claim of value
 * is the root of its prices, bills and the server's metrics: bounding it keeps every one of them
 * finite, whatever JSON allows a client to write (1e308 twice once summed to Infinity and broke
 * /metrics until restart).
 */

/**
 * The most one request's completion may count for, in value units, whatever it claims and
 * whatever its tenant could pay: far above any real completion (a tenant's own `max_value`, or
 * `--max-value`, caps it long before), and low enough that sums over any number of requests stay
 * finite.
 */
export const MAX_REQUEST_VALUE = 1e12;

/** `x` when it is a finite number, else `fallback`. */
export function finiteOr(x: number, fallback: number): number {
  return Number.isFinite(x) ? x : fallback;
}
