import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';

/** Debian's chromium (.ci/run installs it); MARGINAL_CHROMIUM points elsewhere. */
export const chromiumPath = process.env.MARGINAL_CHROMIUM ?? '/usr/bin/chromium';

// No sandbox (tests run as root), and none of the background connections a closed network refuses.
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Headless chromium on a fresh, empty profile. */
export async function launchChromium(viewport = { width: 1440, height: 1800 }): Promise<BrowserContext> {
  const profile = mkdtempSync(join(tmpdir(), 'marginal-chromium-'));
  return chromium.launchPersistentContext(profile, { executablePath: chromiumPath, headless: true, args: ARGS, viewport });
}
