import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';

/** ../shared next to the repository: real model data that is read, never copied in. */
export const sharedDir = fileURLToPath(new URL('../../../shared/', import.meta.url));

/**
 * True when ../shared is present. Without it a test skips locally, but fails under CI=true,
 * where a missing data directory means a broken checkout rather than a developer's machine.
 */
export function requireShared(t: TestContext): boolean {
  if (existsSync(sharedDir)) return true;
  const why = `../shared not found: expected model data at ${sharedDir}`;
  if (process.env.CI === 'true') assert.fail(why);
  t.skip(why);
  return false;
}

/**
 * For `describe(..., { skip })`: a reason to skip when ../shared is absent on a developer's
 * machine; under CI=true never skip, so the suite's first read of the data fails loudly.
 */
export function sharedSkipReason(): string | false {
  if (existsSync(sharedDir) || process.env.CI === 'true') return false;
  return `../shared not found: expected model data at ${sharedDir}`;
}
