import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { AdminKeyRequiredError, InvalidApiKeyError } from '../errors.js';
import type { TenantDirectory } from './tenants.js';

/** The key of an `Authorization: Bearer <key>` header, if any. */
export function bearerKey(req: FastifyRequest): string | undefined {
  const header = req.headers.authorization;
  if (typeof header !== 'string' || !/^Bearer\s+/i.test(header)) return undefined;
  const key = header.replace(/^Bearer\s+/i, '').trim();
  return key.length > 0 ? key : undefined;
}

/** Compares secrets in time independent of where they differ. */
function sameSecret(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb);
}

/**
 * The console's rule: open when the server has no keys file (every request is anonymous
 * anyway), else an admin key from the keys file.
 */
export function checkAdmin(req: FastifyRequest, directory: TenantDirectory): void {
  if (directory.open) return;
  const key = bearerKey(req);
  if (key === undefined) throw new InvalidApiKeyError('the console needs an admin key: send Authorization: Bearer <key> with a key marked "admin": true in the keys file');
  if (directory.byKey(key) === undefined) throw new InvalidApiKeyError('invalid API key');
  if (!directory.isAdmin(key)) throw new AdminKeyRequiredError('this key is not an admin key: mark it "admin": true in the keys file to open the console');
}

/** `/metrics` with `--metrics-key`: that key, or an admin key of the keys file. */
export function checkMetricsAccess(req: FastifyRequest, metricsKey: string | undefined, directory: TenantDirectory): void {
  if (metricsKey === undefined) return;
  const key = bearerKey(req);
  if (key !== undefined && (sameSecret(key, metricsKey) || (!directory.open && directory.isAdmin(key)))) return;
  throw new InvalidApiKeyError(key === undefined ? '/metrics needs the metrics key: send Authorization: Bearer <key>' : 'invalid metrics key');
}
