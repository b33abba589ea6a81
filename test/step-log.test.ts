import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { predictSampleMs, scaleProfile, type StepProfile } from '../src/engine/cost-model.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { validateSamplingParams } from '../src/sampling/params.js';
import { resolveGeometry } from '../src/geometry.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { Generator, type StepRecord } from '../src/serving/generator.js';
import { openStepLog, paceOf, readStepLog } from '../src/serving/step-log.js';
import { cleanup, synthTiny, tempDir } from './helpers/models.js';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

describe('step logs', () => {
  test('the generator reports each step that ran, with its shape, the requests that arrived and ended during it, and, when the next followed at once, its period', async () => {
    const dir = synthTiny();
    try {
      const model = await loadModelDir(dir);
      const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 4 });
      const steps: StepRecord[] = [];
      const sampling = validateSamplingParams({ temperature: 0, max_tokens: 6 });
      let late: Promise<unknown> | undefined;
      // A fourth request arrives once the second step is reported, i.e. while the third runs.
      const g: Generator = new Generator(engine, model, {
        prefillChunk: 8,
        onStep: (s) => {
          steps.push(s);
          if (steps.length === 2) late = g.submit({ prompt: [5, 6, 7], sampling });
        },
      });
      const done = [0, 1, 2].map((i) => g.submit({ prompt: Array.from({ length: 10 + i }, (_, k) => 3 + k + i), sampling }));
      await g.runUntilIdle();
      await Promise.all([...done, late]);
      await engine.dispose();
      assert.ok(steps.length >= 7, `${steps.length} steps`);
      // The first step prefills 8 tokens of each prompt in one run: three rows, each reading one
      // (empty, masked) block of 16 positions plus its 8 new tokens.
      assert.deepEqual({ ...steps[0], at: 0, engineMs: 0, periodMs: 0 }, { at: 0, tokens: 24, contextTokens: 3 * (16 + 8), sequences: 3, runs: 1, engineMs: 0, periodMs: 0, arrivals: 0, finished: 0 });
      for (const s of steps.slice(0, -1)) assert.ok(s.periodMs !== null && s.periodMs >= s.engineMs * 0.999, 'back to back: the period covers the engine');
      assert.equal((steps[steps.length - 1] as StepRecord).periodMs, null, 'the last step has no successor');
      assert.equal(steps.reduce((n, s) => n + s.tokens, 0), 10 + 11 + 12 + 3 + 4 * 5, 'every fed token, once');
      assert.deepEqual(steps.map((s) => s.arrivals ?? 0), steps.map((_, i) => (i === 2 ? 1 : 0)), 'the late request arrived during the third step');
      assert.equal(steps.reduce((n, s) => n + (s.finished ?? 0), 0), 4, 'every request ended during some step');
    } finally {
      cleanup(join(dir, '..'));
    }
  });

  test('calibrate --from-steps fits the cost model to served steps (and pools several logs)', async () => {
    const dir = tempDir('steps');
    const truth = { baseMs: 3, perTokenMs: 0.2, perContextMs: 4, perSequenceMs: 0.5, perRunMs: 6, perArrivalMs: 1.5, perFinishMs: 0.75 };
    const p = { ...truth, model: 'x', machine: 'x', flavour: 'fast', maxSequences: 8, maxContext: 256, blockSize: 16 } as StepProfile;
    const header = { model: 'synthetic-tiny', engine: { flavour: 'fast', provider: 'cpu' as const, maxSequences: 8, maxContext: 256, blockSize: 16, totalBlocks: 128, hostBlocks: 128, blockBytes: 16 * 512, swapSecondsPerToken: 1e-6, vocabSize: 512 }, geometry: resolveGeometry({ maxNumSeqs: 8, kvBlocks: 128 }, { maxContext: 256 }) };
    const files: string[] = [];
    for (const part of [0, 1]) {
      const file = join(dir, `run${part}.jsonl`);
      const log = openStepLog(file, header);
      for (let i = 0; i < 40; i++) {
        const shape = { tokens: 1 + ((i * 7 + part * 3) % 64), contextTokens: 50 + ((i * 131) % 900), sequences: 1 + ((i * 5) % 8), runs: 1 + (i % 3) };
        const around = { arrivals: (i + part) % 4, finished: i % 5 === 0 ? 1 : 0 };
        log.write({ at: i, ...shape, engineMs: 1, periodMs: i === 39 ? null : predictSampleMs(p, { shape, ms: 0, ...around }), ...around });
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
    // A run's pace against a profile: 1 on the profile's own steps, k on a machine k times slower.
    const { steps } = await readStepLog(files[0] as string);
    assert.ok(Math.abs(paceOf(p, steps) - 1) < 1e-9);
    assert.ok(Math.abs(paceOf(scaleProfile(p, 0.8), steps) - 1 / 0.8) < 1e-9);
    assert.equal(fit.maxContext, 256);
    const bad = spawnSync(process.execPath, [cli, 'calibrate', '--out', out], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--model DIR .* or --from-steps FILE/);
    cleanup(dir);
  });
});
