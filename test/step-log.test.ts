import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { predictStepMs, type StepProfile } from '../src/engine/cost-model.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { validateSamplingParams } from '../src/engine/sampling.js';
import { resolveGeometry } from '../src/geometry.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { Generator, type StepRecord } from '../src/serving/generator.js';
import { openStepLog, readStepLog } from '../src/serving/step-log.js';
import { cleanup, synthTiny, tempDir } from './helpers/models.js';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

describe('step logs', () => {
  test('the generator reports each step that ran, with its shape and, when the next followed at once, its period', async () => {
    const dir = synthTiny();
    try {
      const model = await loadModelDir(dir);
      const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 4 });
      const steps: StepRecord[] = [];
      const g = new Generator(engine, model, { prefillChunk: 8, onStep: (s) => steps.push(s) });
      const done = [0, 1, 2].map((i) => g.submit({ prompt: Array.from({ length: 10 + i }, (_, k) => 3 + k + i), sampling: validateSamplingParams({ temperature: 0, max_tokens: 6 }) }));
      await g.runUntilIdle();
      await Promise.all(done);
      await engine.dispose();
      assert.ok(steps.length >= 7, `${steps.length} steps`);
      // The first step prefills 8 tokens of each prompt: three sequences, 24 tokens, one run.
      assert.deepEqual({ ...steps[0], at: 0, engineMs: 0, periodMs: 0 }, { at: 0, tokens: 24, contextTokens: 24, sequences: 3, runs: 1, engineMs: 0, periodMs: 0 });
      for (const s of steps.slice(0, -1)) assert.ok(s.periodMs !== null && s.periodMs >= s.engineMs * 0.999, 'back to back: the period covers the engine');
      assert.equal((steps[steps.length - 1] as StepRecord).periodMs, null, 'the last step has no successor');
      assert.equal(steps.reduce((n, s) => n + s.tokens, 0), 10 + 11 + 12 + 3 * 5, 'every fed token, once');
    } finally {
      cleanup(join(dir, '..'));
    }
  });

  test('calibrate --from-steps fits the cost model to served steps (and pools several logs)', async () => {
    const dir = tempDir('steps');
    const truth = { baseMs: 3, perTokenMs: 0.2, perContextMs: 4, perSequenceMs: 0.5, perRunMs: 6 };
    const p = { ...truth, model: 'x', machine: 'x', flavour: 'fast', maxSequences: 8, maxContext: 256, blockSize: 16 } as StepProfile;
    const header = { model: 'synthetic-tiny', engine: { flavour: 'fast', provider: 'cpu' as const, maxSequences: 8, maxContext: 256, blockSize: 16, totalBlocks: 128, hostBlocks: 128, blockBytes: 16 * 512, swapSecondsPerToken: 1e-6, vocabSize: 512 }, geometry: resolveGeometry({ maxNumSeqs: 8, kvBlocks: 128 }, { maxContext: 256 }) };
    const files: string[] = [];
    for (const part of [0, 1]) {
      const file = join(dir, `run${part}.jsonl`);
      const log = openStepLog(file, header);
      for (let i = 0; i < 40; i++) {
        const shape = { tokens: 1 + ((i * 7 + part * 3) % 64), contextTokens: 50 + ((i * 131) % 900), sequences: 1 + ((i * 5) % 8), runs: 1 + (i % 3) };
        log.write({ at: i, ...shape, engineMs: 1, periodMs: i === 39 ? null : predictStepMs(p, shape) });
      }
      await log.close();
      files.push(file);
    }
    assert.equal((await readStepLog(files[0] as string)).steps.length, 40);
    const out = join(dir, 'profile.json');
    const r = spawnSync(process.execPath, [cli, 'calibrate', '--from-steps', files.join(','), '--out', out], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const fit = JSON.parse(readFileSync(out, 'utf8')) as StepProfile;
    for (const [k, v] of Object.entries(truth)) assert.ok(Math.abs((fit as unknown as Record<string, number>)[k] as number - v) < 1e-6, `${k}: ${(fit as unknown as Record<string, number>)[k]} vs ${v}`);
    assert.equal(fit.samples, 78, 'steps without a period are left out');
    assert.equal(fit.kvBytesPerToken, 512);
    assert.equal(fit.maxContext, 256);
    const bad = spawnSync(process.execPath, [cli, 'calibrate', '--out', out], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--model DIR .* or --from-steps FILE/);
    cleanup(dir);
  });
});
