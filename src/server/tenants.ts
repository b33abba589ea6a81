import { readFile } from 'node:fs/promises';
import { InvalidArgumentError } from '../errors.js';

export interface Tenant {
  name: string;
  /** Value per output token of this tenant's requests that carry no `value` or `bid`. */
  defaultBid: number | undefined;
  /** Total it may be billed; Infinity when unlimited. */
  budget: number;
  /** The most one of its requests may claim to be worth; undefined: the server's --max-value. */
  maxValue: number | undefined;
}

export interface TenantDirectory {
  /** The tenant for an API key, or undefined when the key is unknown. */
  byKey(key: string | undefined): Tenant | undefined;
  /** Without a keys file every request is the anonymous tenant and no key is checked. */
  readonly open: boolean;
  tenants(): Tenant[];
}

export const ANONYMOUS = 'anonymous';

/**
 * `--api-keys FILE`:
 *
 *     { "keys": [ { "key": "sk-acme-1", "tenant": "acme", "default_bid": 0.02, "budget": 50, "max_value": 5 },
 *                 { "key": "sk-lab", "tenant": "lab" } ] }
 *
 * Several keys may name one tenant. `default_bid` prices requests that say nothing about
 * their value; `budget` caps what the tenant is billed in total (omit for no cap); `max_value`
 * caps what one of its requests may claim to be worth (default: the server's --max-value).
 */
export function parseApiKeys(json: unknown, source = 'api keys file'): TenantDirectory {
  const keysOf = (json as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keysOf)) throw new InvalidArgumentError(`${source}: "keys" must be an array`);
  const byKey = new Map<string, Tenant>();
  const tenants = new Map<string, Tenant>();
  keysOf.forEach((entry, i) => {
    const e = entry as Record<string, unknown>;
    if (e === null || typeof e !== 'object') throw new InvalidArgumentError(`${source}: keys[${i}] must be an object`);
    if (typeof e.key !== 'string' || e.key.length < 8) throw new InvalidArgumentError(`${source}: keys[${i}].key must be a string of at least 8 characters`);
    if (typeof e.tenant !== 'string' || e.tenant.length === 0) throw new InvalidArgumentError(`${source}: keys[${i}].tenant must be a non-empty string`);
    if (e.default_bid !== undefined && (typeof e.default_bid !== 'number' || !(e.default_bid >= 0))) throw new InvalidArgumentError(`${source}: keys[${i}].default_bid must be a number >= 0`);
    if (e.budget !== undefined && (typeof e.budget !== 'number' || !(e.budget >= 0))) throw new InvalidArgumentError(`${source}: keys[${i}].budget must be a number >= 0`);
    if (e.max_value !== undefined && (typeof e.max_value !== 'number' || !(e.max_value >= 0))) throw new InvalidArgumentError(`${source}: keys[${i}].max_value must be a number >= 0`);
    if (byKey.has(e.key)) throw new InvalidArgumentError(`${source}: keys[${i}].key is listed twice`);
    let t = tenants.get(e.tenant);
    if (t === undefined) {
      t = { name: e.tenant, defaultBid: e.default_bid as number | undefined, budget: (e.budget as number | undefined) ?? Infinity, maxValue: e.max_value as number | undefined };
      tenants.set(e.tenant, t);
    }
    byKey.set(e.key, t);
  });
  return { open: false, byKey: (k) => (k === undefined ? undefined : byKey.get(k)), tenants: () => [...tenants.values()] };
}

export async function loadApiKeys(path: string): Promise<TenantDirectory> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`cannot read api keys file ${path}: ${(e as Error).message}`);
  }
  try {
    return parseApiKeys(JSON.parse(text), `api keys file ${path}`);
  } catch (e) {
    if (e instanceof SyntaxError) throw new InvalidArgumentError(`api keys file ${path} is not valid JSON: ${e.message}`);
    throw e;
  }
}

/** No keys file: one anonymous tenant, no authentication. */
export function openDirectory(defaultBid: number | undefined): TenantDirectory {
  const t: Tenant = { name: ANONYMOUS, defaultBid, budget: Infinity, maxValue: undefined };
  return { open: true, byKey: () => t, tenants: () => [t] };
}
