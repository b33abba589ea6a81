#!/usr/bin/env node
// Builds native/build/Release/marginal_native.node with node-gyp; run by `npm ci` (the install
// script) and by `npm run build:native`.
//
// The addon is optional: every piece of it has a TypeScript twin that gives identical results,
// so a failed build prints one line and exits 0, and the package installs and works without
// it. MARGINAL_REQUIRE_NATIVE=1 turns a failure into a non-zero exit (CI, Docker images that
// must ship it). `--verbose` streams node-gyp's output instead of keeping it in a log file.
//
// Offline by construction: it uses npm's bundled node-gyp (never `npx`, which may fetch) and
// points node-gyp at the running Node's own headers when npm has not configured `nodedir`, so
// node-gyp never tries to download them.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const required = process.env.MARGINAL_REQUIRE_NATIVE === '1';
const verbose = process.argv.includes('--verbose');
const addonPath = join(here, 'build', 'Release', 'marginal_native.node');
const logPath = join(here, 'build', 'build.log');
const shown = (p) => relative(process.cwd(), p) || p;

function giveUp(reason, detail = '') {
  if (required) {
    if (detail) process.stderr.write(detail.endsWith('\n') ? detail : `${detail}\n`);
    console.error(`marginal: native addon build failed (${reason}) and MARGINAL_REQUIRE_NATIVE=1`);
    process.exit(1);
  }
  console.log(`marginal: native addon not built (${reason}); the TypeScript fallback will be used`);
  process.exit(0);
}

/** npm's bundled node-gyp: npm exports its path to scripts; else next to npm's own entry point or Node's. */
function findNodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  if (process.env.npm_execpath) candidates.push(join(dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  const bin = dirname(process.execPath);
  candidates.push(
    join(bin, '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'), // Unix layout
    join(bin, 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'), // Windows layout
  );
  return candidates.find((p) => existsSync(p));
}

/** The running Node's installed headers, when npm has not named a nodedir itself. */
function localNodedir() {
  if (process.env.npm_config_nodedir) return undefined;
  const prefix = join(dirname(process.execPath), '..');
  return existsSync(join(prefix, 'include', 'node', 'node_api.h')) && existsSync(join(prefix, 'include', 'node', 'common.gypi')) ? prefix : undefined;
}

const nodeGyp = findNodeGyp();
if (!nodeGyp) giveUp('npm\'s node-gyp was not found');
try {
  createRequire(join(here, 'binding.gyp')).resolve('node-addon-api');
} catch {
  giveUp('the node-addon-api package is not installed');
}

const args = [nodeGyp, 'rebuild', '--jobs', 'max'];
const nodedir = localNodedir();
if (nodedir) args.push(`--nodedir=${nodedir}`);
const res = spawnSync(process.execPath, args, {
  cwd: here,
  stdio: verbose ? 'inherit' : 'pipe',
  encoding: 'utf8',
  maxBuffer: 64 * 1024 * 1024,
  // A build takes seconds; this only stops an install from hanging on a stuck toolchain.
  timeout: 10 * 60 * 1000,
});
const output = verbose ? '' : `${res.stdout ?? ''}${res.stderr ?? ''}`;
if (res.error || res.status !== 0 || !existsSync(addonPath)) {
  const why = res.error
    ? res.error.message
    : res.status !== 0
      ? `node-gyp exited with ${res.status ?? res.signal}`
      : `${shown(addonPath)} is missing`;
  if (!verbose) {
    try {
      mkdirSync(dirname(logPath), { recursive: true });
      writeFileSync(logPath, output);
    } catch {
      // Only the log is lost; the one-line message still goes out.
    }
  }
  giveUp(verbose ? why : `${why}; log: ${shown(logPath)}`, output.slice(-8000));
}
if (!verbose) writeFileSync(logPath, output);
console.log(`marginal: native addon built: ${shown(addonPath)}`);
