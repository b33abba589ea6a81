// Bundles the console page (web/console) into dist/console: one script, one stylesheet and the
// HTML, everything from the npm registry, nothing fetched at run time. Run by `npm run build`.
import { copyFile, mkdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));

/** Builds into `outDir`; returns the files written with their sizes in bytes. */
export async function buildConsole(outDir = join(here, '..', 'dist', 'console')) {
  await mkdir(outDir, { recursive: true });
  await esbuild.build({
    entryPoints: { console: join(here, 'console', 'main.ts') },
    bundle: true,
    minify: true,
    format: 'esm',
    target: ['chrome110', 'firefox115', 'safari16'],
    outdir: outDir,
    legalComments: 'none',
    logLevel: 'warning',
  });
  await copyFile(join(here, 'console', 'index.html'), join(outDir, 'index.html'));
  const sizes = {};
  for (const f of ['index.html', 'console.js', 'console.css']) sizes[f] = (await stat(join(outDir, f))).size;
  return sizes;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const sizes = await buildConsole(process.argv[2]);
  const total = Object.values(sizes).reduce((a, b) => a + b, 0);
  process.stderr.write(`console: ${Object.entries(sizes).map(([f, n]) => `${f} ${(n / 1024).toFixed(1)} kB`).join(', ')} (${(total / 1024).toFixed(1)} kB)\n`);
}
