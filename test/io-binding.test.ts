import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { BoundFastGraph } from '../src/engine/bound-fast.js';
import { DirectDriver, type DirectItem } from '../src/engine/direct.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { cudaProviderInstalled } from '../src/engine/session.js';
import { Rng } from '../src/sampling/rng.js';
import { validateSamplingParams, type SamplingParams } from '../src/sampling/params.js';
import type { StepResult } from '../src/engine/types.js';
import { loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { IO } from '../src/models/llama/graph.js';
import { OrtRunner, ortRunnerUnavailable, RunnerStat } from '../src/native/ort-runner.js';
import { importStories260K, stories260K, tempDir } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';
import { testProviders } from './helpers/providers.js';

/**
 * The engine's two session paths on the real stories260K model: the fast graph through the
 * native addon's I/O-binding runner (the cache bound in place) and through onnxruntime-node's
 * JavaScript session (the fallback). Same plans, same logits within 1e-5, same tokens; the
 * bound path copies no byte of the cache in any step.
 */
const runnerSkip = ortRunnerUnavailable() === undefined || process.env.CI === 'true' ? false : `runner unavailable: ${ortRunnerUnavailable()}`;
const skip = sharedSkipReason() || runnerSkip;

const greedy = (maxTokens: number): SamplingParams => validateSamplingParams({ temperature: 0, max_tokens: maxTokens });
const sampled = (seed: number): SamplingParams => validateSamplingParams({ temperature: 0.8, top_p: 0.9, seed, max_tokens: 100 });

interface Script {
  /** Per step: the items to run (tokens given, or -1 to feed the sequence's last sampled token). */
  steps: { seq: number; tokens: number[] | -1; sample: boolean }[][];
  params: Map<number, SamplingParams>;
}

/** Runs a script on an engine; returns every step's result and each sequence's sampled tokens. */
async function play(engine: OnnxEngine, script: Script, keepLogits: boolean): Promise<{ results: StepResult[]; out: Map<number, number[]> }> {
  const driver = new DirectDriver(engine);
  const out = new Map<number, number[]>();
  const results: StepResult[] = [];
  for (const step of script.steps) {
    const items: DirectItem[] = [];
    for (const it of step) {
      if (!out.has(it.seq)) {
        const params = script.params.get(it.seq) as SamplingParams;
        driver.open(it.seq, params, new Rng(params.seed ?? 1));
        out.set(it.seq, []);
      }
      items.push([it.seq, it.tokens === -1 ? [(out.get(it.seq) as number[]).at(-1) as number] : it.tokens, it.sample]);
    }
    const r = await driver.step(items, keepLogits);
    results.push(r);
    step.forEach((it, i) => {
      if (it.sample) (out.get(it.seq) as number[]).push(r.tokens[i] as number);
    });
  }
  return { results, out };
}

describe('the I/O-binding session path', { skip }, () => {
  let model: LoadedModel;
  let script: Script;
  before(async () => {
    model = await loadModelDir(importStories260K());
    const enc = (s: string) => model.tokenizer.encode(s, { bos: true });
    const a = enc('Once upon a time');
    const b = enc('The big dog');
    const c = enc('Tom and Sue went to the park to play');
    const d = enc('Lily');
    // Prompts of equal length share a prefill run; c is chunked; d joins mid-way; decodes batch.
    assert.equal(a.length, b.length);
    const steps: Script['steps'] = [
      [{ seq: 1, tokens: a, sample: true }, { seq: 2, tokens: b, sample: true }, { seq: 3, tokens: c.slice(0, 4), sample: false }],
      [{ seq: 1, tokens: -1, sample: true }, { seq: 2, tokens: -1, sample: true }, { seq: 3, tokens: c.slice(4), sample: true }],
    ];
    for (let i = 0; i < 24; i++) {
      const step: Script['steps'][number] = [1, 2, 3].map((seq) => ({ seq, tokens: -1 as const, sample: true }));
      if (i === 6) step.push({ seq: 4, tokens: d, sample: true });
      if (i > 6) step.push({ seq: 4, tokens: -1, sample: true });
      steps.push(step);
    }
    script = { steps, params: new Map([[1, greedy(100)], [2, sampled(7)], [3, sampled(11)], [4, greedy(100)]]) };
  });

  test('the engine picks it by default and says so in one line', async () => {
    const lines: string[] = [];
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 4, log: (l) => lines.push(l) });
    assert.equal(engine.kvPath.path, 'io-binding');
    assert.equal(lines.length, 1);
    assert.match(lines[0] as string, /C API with I\/O binding \(native addon\) on (CPU|CUDA); KV pool in (host|device) memory, bound in place/);
    await engine.dispose();
  });

  for (const keepLogits of [true, false]) {
    test(`logits within 1e-5 and identical tokens on both paths, step by step (${keepLogits ? 'full logits' : 'in-graph top-k where it serves'})`, async () => {
      const bound = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 4, ioBinding: true });
      const js = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 4, ioBinding: false });
      assert.equal(js.kvPath.path, 'onnxruntime-node');
      const p = await play(bound, script, keepLogits);
      const q = await play(js, script, keepLogits);
      assert.deepEqual(p.out, q.out);
      if (keepLogits) {
        let worst = 0;
        for (let s = 0; s < p.results.length; s++) {
          const x = p.results[s]?.logits as Float32Array;
          const y = q.results[s]?.logits as Float32Array;
          assert.equal(x.length, y.length);
          for (let i = 0; i < x.length; i++) {
            if (Number.isNaN(y[i])) assert.ok(Number.isNaN(x[i]), 'the same rows are sampled');
            else worst = Math.max(worst, Math.abs((x[i] as number) - (y[i] as number)));
          }
        }
        assert.ok(worst <= 1e-5, `max |bound - js| = ${worst}`);
      }
      // Greedy sequence 1 continues llama2.c's reference story from its first words.
      const story = 'Once upon a time' + model.tokenizer.decode(p.out.get(1) as number[]);
      assert.ok(stories260K.reference200.startsWith(story), story);
      await bound.dispose();
      await js.dispose();
    });
  }

  test('no step copies the cache on the bound path; the JavaScript hf path copies it every step', async () => {
    const bound = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 4, ioBinding: true });
    const copied0 = bound.runnerStat(RunnerStat.kvCopiedBytes);
    const { results } = await play(bound, script, false);
    for (const r of results) {
      assert.equal(r.timing.cacheBytesCopied, 0);
      // What it does copy is the new positions, written once into their blocks.
      assert.equal(r.timing.kvBytesCopied, r.timing.batchTokens * bound.info.blockBytes / bound.info.blockSize);
    }
    assert.equal(bound.runnerStat(RunnerStat.kvCopiedBytes), copied0, 'no byte was read out of the pool by a copy');
    await bound.dispose();

    // The JavaScript session on a device provider gets a compact copy of the blocks a run reads
    // (stagePool, forced here on CPU): that copy is counted.
    const staged = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 2, blockSize: 4, ioBinding: false, stagePool: true });
    const s = new DirectDriver(staged);
    s.open(1, greedy(10), new Rng(1));
    s.open(2, greedy(10), new Rng(1));
    await s.step([[1, [1, 400, 401, 402, 403, 404], true], [2, [1, 500, 501], true]]);
    const step = await s.step([[1, [405], true], [2, [502], true]]);
    // Sequence 1 reads its 2 blocks, sequence 2 its 1 block and (padding its table) block 0 again.
    assert.equal(step.timing.cacheBytesCopied, 3 * staged.info.blockBytes);
    await staged.dispose();

    const hf = await OnnxEngine.create(model, { flavour: 'hf', providers: ['cpu'], maxSequences: 2, blockSize: 4 });
    const perToken = hf.info.blockBytes / hf.info.blockSize;
    const d = new DirectDriver(hf);
    d.open(1, greedy(10), new Rng(1));
    d.open(2, greedy(10), new Rng(1));
    const first = await d.step([[1, [1, 400, 401], true]]);
    // Nothing cached yet: the packed past is empty, the present holds the 3 new positions.
    assert.equal(first.timing.cacheBytesCopied, 3 * perToken);
    await d.step([[2, [1, 500], true]]);
    const decode = await d.step([[1, [402], true], [2, [501], true]]);
    // Packed: 3 + 2 cached positions; present: 2 sequences × (3 longest past + 1 new) positions.
    assert.equal(decode.timing.cacheBytesCopied, (3 + 2 + 2 * 4) * perToken);
    await hf.dispose();
  });

  test('swaps and copy-on-write of a shared prefix block are copies where the pool lives: exact results, every byte counted', async () => {
    const prompt = model.tokenizer.encode('Once upon a time, there was a little girl', { bos: true });
    const run = async (interrupt: boolean) => {
      const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 3, blockSize: 4, ioBinding: true });
      const blockBytes = engine.info.blockBytes;
      const d = new DirectDriver(engine);
      d.open(1, sampled(5), new Rng(5));
      let r = await d.step([[1, prompt, true]]);
      const out = [r.tokens[0] as number];
      // A second sequence shares the first 7 positions (two blocks, the second partly): its
      // first write lands in the shared block, which is copied first.
      d.open(2, greedy(20), new Rng(1));
      d.share(1, 2, 2, 7);
      const read0 = engine.runnerStat(RunnerStat.kvCopiedBytes) as number;
      const rest = await d.step([[2, prompt.slice(7), true]]);
      assert.equal(rest.timing.cacheBytesCopied, 0);
      assert.equal((engine.runnerStat(RunnerStat.kvCopiedBytes) as number) - read0, blockBytes, 'one block copied on write');
      for (let i = 0; i < 12; i++) {
        if (interrupt && i === 4) {
          const blocks = Math.ceil(d.length(1) / 4);
          const before = engine.runnerStat(RunnerStat.kvCopiedBytes) as number;
          d.swapOut(1);
          // Sequence 1's blocks go to another sequence meanwhile, and are overwritten.
          d.open(3, greedy(5), new Rng(1));
          await d.step([[3, [1, 99, 98, 97, 96, 95, 94, 93, 92, 91, 90, 89, 88, 87, 86, 85, 84, 83, 82, 81], true]]);
          d.close(3);
          d.swapIn(1);
          r = await d.step([[1, [out.at(-1) as number], true]]);
          assert.equal((engine.runnerStat(RunnerStat.kvCopiedBytes) as number) - before, 2 * blocks * blockBytes, 'each block out and back in');
        } else {
          r = await d.step([[1, [out.at(-1) as number], true]]);
        }
        assert.equal(r.timing.cacheBytesCopied, 0);
        out.push(r.tokens[0] as number);
      }
      await engine.dispose();
      return { out, second: rest.tokens[0] };
    };
    const plain = await run(false);
    const swapped = await run(true);
    assert.deepEqual(swapped, plain);
    // The shared prefix computes what a full prefill computes: greedy from the same prompt.
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 1, ioBinding: false });
    const d = new DirectDriver(engine);
    d.open(1, greedy(2), new Rng(1));
    const full = await d.step([[1, prompt, true]]);
    assert.equal(plain.second, full.tokens[0]);
    await engine.dispose();
  });

  test('CUDA demanded where it cannot load is an error on either path, not a quiet CPU run', { skip: cudaProviderInstalled() ? 'CUDA is installed here' : false }, async () => {
    for (const ioBinding of [true, false]) {
      await assert.rejects(OnnxEngine.create(model, { providers: ['cuda'], maxSequences: 1, ioBinding }), { code: 'MARGINAL_MODEL_FORMAT', message: /CUDA execution provider not installed/ });
    }
  });

  test('MARGINAL_IO_BINDING and ioBinding choose the path; the hf graph cannot be bound', async () => {
    await assert.rejects(OnnxEngine.create(model, { flavour: 'hf', providers: ['cpu'], ioBinding: true }), { code: 'MARGINAL_INVALID_ARGUMENT' });
    const lines: string[] = [];
    const js = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 1, ioBinding: false, log: (l) => lines.push(l) });
    assert.equal(js.kvPath.path, 'onnxruntime-node');
    assert.match(lines[0] as string, /onnxruntime-node's JavaScript session on CPU; KV pool in host memory \(I\/O binding: turned off\)/);
    await js.dispose();
    const saved = process.env.MARGINAL_IO_BINDING;
    try {
      process.env.MARGINAL_IO_BINDING = '0';
      const off = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 1, log: () => {} });
      assert.equal(off.kvPath.path, 'onnxruntime-node');
      await off.dispose();
      process.env.MARGINAL_IO_BINDING = '1';
      await assert.rejects(OnnxEngine.create(model, { flavour: 'hf', providers: ['cpu'], log: () => {} }), { code: 'MARGINAL_INVALID_ARGUMENT' });
      const on = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 1, log: () => {} });
      assert.equal(on.kvPath.path, 'io-binding');
      await on.dispose();
    } finally {
      if (saved === undefined) delete process.env.MARGINAL_IO_BINDING;
      else process.env.MARGINAL_IO_BINDING = saved;
    }
  });

  test('without the addon the JavaScript session serves, says why, and reproduces llama2.c', () => {
    const dir = tempDir('fallback');
    const script = join(dir, 'fallback.mts');
    const src = (p: string) => JSON.stringify(fileURLToPath(new URL(p, import.meta.url)));
    writeFileSync(
      script,
      `import { OnnxEngine } from ${src('../src/engine/onnx-engine.ts')};
import { Generator } from ${src('../src/serving/generator.ts')};
import { validateSamplingParams } from ${src('../src/sampling/params.ts')};
import { loadModelDir } from ${src('../src/models/modeldir.ts')};
const model = await loadModelDir(${JSON.stringify(model.dir)});
const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 1 });
const g = new Generator(engine, model);
const done = g.submit({ prompt: 'Zoo', sampling: validateSamplingParams({ temperature: 0, max_tokens: 57 }) });
await g.runUntilIdle();
process.stdout.write(JSON.stringify({ path: engine.kvPath.path, text: (await done).text }));
await engine.dispose();
`,
    );
    const child = spawnSync(process.execPath, ['--import', 'tsx', script], { env: { ...process.env, MARGINAL_NATIVE: '0' }, encoding: 'utf8', timeout: 120_000 });
    assert.equal(child.status, 0, child.stderr);
    const got = JSON.parse(child.stdout) as { path: string; text: string };
    assert.equal(got.path, 'onnxruntime-node');
    assert.equal('Zoo' + got.text, stories260K.referenceZoo);
    const lines = child.stderr.split('\n').filter((l) => l.startsWith('marginal: engine:'));
    assert.equal(lines.length, 1);
    assert.match(lines[0] as string, /onnxruntime-node's JavaScript session on CPU; KV pool in host memory \(I\/O binding: the native addon is unavailable \(TypeScript fallback: MARGINAL_NATIVE=0\)\)/);
  });
});

describe('BoundFastGraph', { skip }, () => {
  test('logits for every fed position when asked (prompt log-probabilities), and the new keys and values in their blocks', async () => {
    const model = await loadModelDir(importStories260K());
    const graph = model.graphPath('fast');
    const { layers, kvHeads: H, headDim: hd } = model.kv;
    const vocab = model.vocabSize;
    const shape = { layers, kvHeads: H, headDim: hd, blockSize: 4, blocks: 8, hostBlocks: 0 };
    const runner = await OrtRunner.open(graph);
    const bound = new BoundFastGraph(runner, shape, vocab, 64);
    const tokens = [1, 300, 301, 302, 303];
    const out = await bound.run([{ tokens, offset: 0, blocks: [3, 5] }], [0], 1, 5, 1, [0, 1, 2, 3, 4], 5, false, 1);

    const session = await ort.InferenceSession.create(graph, { executionProviders: ['cpu'], graphOptimizationLevel: 'all', logSeverityLevel: 3 });
    const feeds: Record<string, ort.Tensor> = {
      [IO.inputIds]: new ort.Tensor('int64', BigInt64Array.from(tokens.map(BigInt)), [1, 5]),
      [IO.positionIds]: new ort.Tensor('int64', BigInt64Array.from([0n, 1n, 2n, 3n, 4n]), [1, 5]),
      [IO.pastLengths]: new ort.Tensor('int64', BigInt64Array.of(0n), [1]),
      [IO.logitsRows]: new ort.Tensor('int64', BigInt64Array.from([0n, 1n, 2n, 3n, 4n]), [5]),
      [IO.topK]: new ort.Tensor('int64', BigInt64Array.of(1n), [1]),
      [IO.blockTables]: new ort.Tensor('int32', Int32Array.of(0), [1, 1]),
    };
    for (let l = 0; l < layers; l++) {
      feeds[IO.poolKey(l)] = new ort.Tensor('float32', new Float32Array(H * 8 * 4 * hd), [H, 8, 4, hd]);
      feeds[IO.poolValue(l)] = new ort.Tensor('float32', new Float32Array(H * 8 * 4 * hd), [H, 8, 4, hd]);
    }
    const ref = await session.run(feeds);
    const want = ref[IO.logits]?.data as Float32Array;
    assert.equal(want.length, 5 * vocab);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs((want[i] as number) - ((out.logits as Float32Array)[i] as number)));
    assert.ok(worst <= 1e-5, `max |bound - session| = ${worst}`);
    // Positions 0..3 in block 3, position 4 in block 5, every head, every layer.
    const pool = new Float32Array(runner.view(bound.pool.buffer) as ArrayBuffer);
    for (let l = 0; l < layers; l++) {
      for (const [kv, name] of [[0, IO.newKey(l)], [1, IO.newValue(l)]] as const) {
        const fresh = ref[name]?.data as Float32Array; // [1, H, 5, hd]
        const lane = bound.pool.laneOffset(l, kv) / 4;
        for (let h = 0; h < H; h++) {
          for (let t = 0; t < 5; t++) {
            const block = t < 4 ? 3 : 5;
            const at = lane + ((h * 8 + block) * 4 + (t % 4)) * hd;
            for (let e = 0; e < hd; e++) assert.ok(Math.abs((pool[at + e] as number) - (fresh[(h * 5 + t) * hd + e] as number)) <= 1e-6);
          }
        }
      }
    }
    await session.release();
    bound.dispose();
  });
});
