import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { Generator } from '../src/serving/generator.js';
import { validateSamplingParams } from '../src/sampling/params.js';
import { importLlama2c } from '../src/models/importers.js';
import { readLlama2cCheckpoint } from '../src/models/llama/weights.js';
import { describeModel, loadModelDir } from '../src/models/modeldir.js';
import { importStories260K, stories260K, synthTiny, tempDir } from './helpers/models.js';

// llama2.c's -n 60 counts positions: "Zoo" encodes to 4 tokens with BOS, leaving 57 to generate.

import { sharedSkipReason } from './helpers/shared.js';
import { testProviders } from './helpers/providers.js';

const greedy = (n: number) => validateSamplingParams({ temperature: 0, max_tokens: n });

describe('synthetic models', () => {
  test('tiny: writes both flavours and a Hugging Face folder, says it is synthetic, decodes deterministically', async () => {
    const dir = synthTiny();
    for (const f of ['marginal.json', 'config.json', 'tokenizer.json', 'tokenizer_config.json', 'tokenizer.bin', 'onnx/model.onnx', 'onnx/model_fast.onnx', 'onnx/model.onnx_data']) {
      assert.ok(existsSync(join(dir, f)), f);
    }
    const model = await loadModelDir(dir);
    assert.equal(model.synthetic, true);
    assert.match(describeModel(model), /meaningless/);
    const runs: number[][] = [];
    for (const flavour of ['fast', 'hf'] as const) {
      const engine = await OnnxEngine.create(model, { flavour, providers: testProviders(), maxSequences: 2 });
      const g = new Generator(engine, model);
      const done = g.submit({ prompt: 'the cat sat', sampling: validateSamplingParams({ temperature: 0.7, seed: 3, max_tokens: 12 }) });
      await g.runUntilIdle();
      runs.push((await done).tokens);
      await engine.dispose();
    }
    assert.deepEqual(runs[0], runs[1]);
  });

  test('unknown shape is a clear error', async () => {
    const { synthesize } = await import('../src/models/importers.js');
    assert.throws(() => synthesize('gpt-9', join(tempDir('bad'), 'm')), { code: 'MARGINAL_INVALID_ARGUMENT', message: /unknown shape "gpt-9"; known shapes: tiny/ });
  });
});

describe('model directories and bad input', { skip: sharedSkipReason() }, () => {
  let dir: string;
  before(() => {
    dir = importStories260K();
  });

  test('a Hugging Face-style folder without marginal.json loads through the hf interface and tokenizer.json', async () => {
    const foreign = join(tempDir('hf'), 'stories260K-hf');
    cpSync(dir, foreign, { recursive: true });
    rmSync(join(foreign, 'marginal.json'));
    rmSync(join(foreign, 'onnx', 'model_fast.onnx'));
    const model = await loadModelDir(foreign);
    assert.deepEqual(model.flavours, ['hf']);
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 1 });
    const g = new Generator(engine, model);
    const done = g.submit({ prompt: 'Zoo', sampling: greedy(57) });
    await g.runUntilIdle();
    assert.equal('Zoo' + (await done).text, stories260K.referenceZoo);
    await engine.dispose();
  });

  test('missing model directory → MARGINAL_MODEL_NOT_FOUND', async () => {
    await assert.rejects(loadModelDir(join(tempDir('none'), 'nothing-here')), { code: 'MARGINAL_MODEL_NOT_FOUND' });
  });

  test('corrupt marginal.json → MARGINAL_MODEL_FORMAT naming the file', async () => {
    const d = join(tempDir('cfg'), 'm');
    cpSync(dir, d, { recursive: true });
    writeFileSync(join(d, 'marginal.json'), '{"format": "marginal-model", "version": 1, ');
    await assert.rejects(loadModelDir(d), { code: 'MARGINAL_MODEL_FORMAT', message: /marginal\.json is not valid JSON/ });
  });

  test('missing graph file → MARGINAL_MODEL_FORMAT', async () => {
    const d = join(tempDir('graph'), 'm');
    cpSync(dir, d, { recursive: true });
    rmSync(join(d, 'onnx', 'model_fast.onnx'));
    await assert.rejects(loadModelDir(d), { code: 'MARGINAL_MODEL_FORMAT', message: /model_fast\.onnx \(fast flavour\) is missing/ });
  });

  test('truncated ONNX graph → MARGINAL_MODEL_FORMAT when the engine opens it', async () => {
    const d = join(tempDir('trunc'), 'm');
    cpSync(dir, d, { recursive: true });
    const graph = join(d, 'onnx', 'model_fast.onnx');
    truncateSync(graph, Math.floor(readFileSync(graph).byteLength / 3));
    const model = await loadModelDir(d);
    await assert.rejects(OnnxEngine.create(model, { flavour: 'fast', providers: ['cpu'] }), { code: 'MARGINAL_MODEL_FORMAT', message: /cannot load/ });
  });

  test('truncated checkpoint → MARGINAL_CHECKPOINT_FORMAT with the expected size', () => {
    const bad = join(tempDir('ckpt'), 'bad.bin');
    writeFileSync(bad, readFileSync(stories260K.checkpoint).subarray(0, 5000));
    assert.throws(() => readLlama2cCheckpoint(bad), { code: 'MARGINAL_CHECKPOINT_FORMAT', message: /implies \d+/ });
    const header = join(tempDir('ckpt'), 'header.bin');
    writeFileSync(header, Buffer.from([1, 2, 3]));
    assert.throws(() => readLlama2cCheckpoint(header), { code: 'MARGINAL_CHECKPOINT_FORMAT', message: /header/ });
  });

  test('corrupt tokenizer → MARGINAL_TOKENIZER_FORMAT and no model written', () => {
    const badTok = join(tempDir('tok'), 'tok.bin');
    writeFileSync(badTok, readFileSync(stories260K.tokenizer).subarray(0, 100));
    const out = join(tempDir('tokout'), 'm');
    assert.throws(() => importLlama2c(stories260K.checkpoint, badTok, out), { code: 'MARGINAL_TOKENIZER_FORMAT' });
    assert.equal(existsSync(join(out, 'marginal.json')), false);
  });

  test('a prompt longer than the context, or max_tokens past it → MARGINAL_CONTEXT_LENGTH; the engine stays usable', async () => {
    const model = await loadModelDir(dir);
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 2 });
    const g = new Generator(engine, model);
    const long = 'Once upon a time there was a cat. '.repeat(80);
    assert.throws(() => g.submit({ prompt: long, sampling: greedy(4) }), { code: 'MARGINAL_CONTEXT_LENGTH', message: /context is 512 tokens/ });
    assert.throws(() => g.submit({ prompt: 'Zoo', sampling: greedy(600) }), { code: 'MARGINAL_CONTEXT_LENGTH', message: /maximum context length is 512/ });
    assert.throws(() => g.submit({ prompt: [1, 99999], sampling: greedy(4) }), { code: 'MARGINAL_INVALID_ARGUMENT' });
    const ok = g.submit({ prompt: 'Zoo', sampling: greedy(57) });
    await g.runUntilIdle();
    assert.equal('Zoo' + (await ok).text, stories260K.referenceZoo);
    assert.equal(g.scheduler.blocks.heldBlocks, 0);
    assert.equal(engine.openSequences, 0);
    await engine.dispose();
  });

  test('invalid sampling values → MARGINAL_INVALID_SAMPLING naming the parameter', () => {
    for (const [input, param] of [
      [{ temperature: -1 }, 'temperature'],
      [{ top_p: 0 }, 'top_p'],
      [{ max_tokens: 0 }, 'max_tokens'],
      [{ seed: 1.5 }, 'seed'],
    ] as const) {
      assert.throws(() => validateSamplingParams(input), (e: Error & { code?: string; param?: string }) => e.code === 'MARGINAL_INVALID_SAMPLING' && e.param === param);
    }
  });
});
