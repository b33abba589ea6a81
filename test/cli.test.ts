import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { importStories260K, stories260K, tempDir } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, MARGINAL_PROVIDERS: 'cpu' } });

describe('marginal CLI', { skip: sharedSkipReason() }, () => {
  let dir: string;
  before(() => {
    dir = importStories260K();
  });

  test('import llama2c writes a model directory', () => {
    const out = join(tempDir('cli'), 'm');
    const r = run('import', 'llama2c', stories260K.checkpoint, stories260K.tokenizer, '--out', out);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /wrote stories260K/);
  });

  test('generate prints exactly the completion, not the prompt', () => {
    const r = run('generate', '--model', dir, '--prompt', 'Zoo', '--max-tokens', '57', '--temperature', '0');
    assert.equal(r.status, 0, r.stderr);
    assert.equal('Zoo' + r.stdout, stories260K.referenceZoo);
  });

  test('generate with the same seed prints the same text', () => {
    const args = ['generate', '--model', dir, '--prompt', 'The dog', '--max-tokens', '30', '--temperature', '0.9', '--top-p', '0.9', '--seed', '42'];
    const a = run(...args);
    const b = run(...args);
    assert.equal(a.status, 0, a.stderr);
    assert.equal(a.stdout, b.stdout);
    assert.ok(a.stdout.length > 0);
  });

  test('bad input exits 2 with a clear message', () => {
    const cases: [string[], RegExp][] = [
      [['generate', '--model', dir, '--temperature', '9'], /temperature must be/],
      [['generate', '--model', dir, '--top-p', 'abc'], /--top-p must be a number/],
      [['generate', '--model', dir, '--max-tokens', '0'], /max_tokens/],
      [['generate', '--model', join(dir, 'nope')], /model not found/],
      [['generate', '--model', dir, '--prompt', 'x '.repeat(600), '--max-tokens', '2'], /context/],
      [['generate', '--model', dir, '--flavour', 'turbo'], /--flavour must be fast or hf/],
      [['synth', '--shape', 'gpt-9', '--out', join(tempDir('cli'), 'x')], /unknown shape/],
      [['import', 'llama2c', join(dir, 'missing.bin'), stories260K.tokenizer, '--out', join(tempDir('cli'), 'y')], /cannot read/],
    ];
    for (const [args, message] of cases) {
      const r = run(...args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.equal(r.stdout, '');
    }
  });
});
