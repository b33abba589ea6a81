import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { Generator, type Completion } from '../src/serving/generator.js';
import { DirectDriver } from '../src/engine/direct.js';
import { Rng } from '../src/sampling/rng.js';
import { validateSamplingParams, type SamplingParams } from '../src/sampling/params.js';
import { loadModelDir, type Flavour, type LoadedModel } from '../src/models/modeldir.js';
import { IO } from '../src/models/llama/graph.js';
import { importStories260K, stories260K } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';
import { testProviders } from './helpers/providers.js';

const greedy = (maxTokens: number): SamplingParams => validateSamplingParams({ temperature: 0, max_tokens: maxTokens });

describe('stories260K on ONNX Runtime', { skip: sharedSkipReason() }, () => {
  let model: LoadedModel;
  before(async () => {
    model = await loadModelDir(importStories260K());
  });

  for (const flavour of ['fast', 'hf'] as Flavour[]) {
    test(`${flavour}: greedy decoding reproduces llama2.c's reference texts`, async () => {
      const engine = await OnnxEngine.create(model, { flavour, providers: testProviders(), maxSequences: 2 });
      const g = new Generator(engine, model);
      const zooPrompt = model.tokenizer.encode('Zoo', { bos: true });
      // llama2.c's -n counts positions: the prompt after BOS plus the generated tokens.
      const a = g.submit({ prompt: '', sampling: greedy(200) });
      const b = g.submit({ prompt: 'Zoo', sampling: greedy(60 - (zooPrompt.length - 1)) });
      await g.runUntilIdle();
      assert.equal((await a).text, stories260K.reference200);
      assert.equal('Zoo' + (await b).text, stories260K.referenceZoo);
      await engine.dispose();
    });

    test(`${flavour}: eight prompts batched, joining at different steps, give exactly their solo tokens`, async () => {
      const prompts = [
        'Once upon a time',
        'The cat',
        'Tom and Sue went to the park to play with a ball and a kite',
        'A',
        'She was happy because',
        'The big red dog barked at the little bird in the tree',
        'One day',
        'Lily and Ben',
      ];
      const params = prompts.map((_, i) =>
        i % 2 === 0 ? greedy(24 + i) : validateSamplingParams({ temperature: 0.9, top_p: 0.9, seed: 1000 + i, max_tokens: 20 + i }),
      );
      const solo: Completion[] = [];
      {
        const engine = await OnnxEngine.create(model, { flavour, providers: testProviders(), maxSequences: 1 });
        for (let i = 0; i < prompts.length; i++) {
          const g = new Generator(engine, model);
          const done = g.submit({ prompt: prompts[i] as string, sampling: params[i] as SamplingParams });
          await g.runUntilIdle();
          solo.push(await done);
        }
        await engine.dispose();
      }
      const engine = await OnnxEngine.create(model, { flavour, providers: testProviders(), maxSequences: 8 });
      const g = new Generator(engine, model, { prefillChunk: 5 });
      const batched: Promise<Completion>[] = [];
      let step = 0;
      // Sequence i joins at step 2i, so prefills overlap other sequences' decodes.
      while (batched.length < prompts.length || g.inFlight > 0) {
        while (batched.length < prompts.length && batched.length * 2 <= step) {
          const i = batched.length;
          batched.push(g.submit({ prompt: prompts[i] as string, sampling: params[i] as SamplingParams }));
        }
        await g.step();
        step++;
        assert.ok(step < 500, 'bounded loop');
      }
      const results = await Promise.all(batched);
      for (let i = 0; i < prompts.length; i++) {
        assert.deepEqual(results[i]?.tokens, solo[i]?.tokens, `prompt ${i} (${prompts[i]})`);
      }
      assert.equal(g.scheduler.blocks.heldBlocks, 0, 'every KV block returned');
      assert.equal(engine.openSequences, 0, 'every sequence closed on the engine');
      await engine.dispose();
    });
  }

  test('in-graph top-k: greedy and top-k sampling give the same tokens as sampling the full logits', async () => {
    const run = async (rankedCandidates: number) => {
      const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 4, rankedCandidates });
      const g = new Generator(engine, model);
      const done = [
        g.submit({ prompt: 'The cat', sampling: greedy(40) }),
        g.submit({ prompt: 'The dog', sampling: validateSamplingParams({ temperature: 0.9, top_k: 20, seed: 3, max_tokens: 40 }) }),
        g.submit({ prompt: 'A bird', sampling: validateSamplingParams({ temperature: 1.2, top_k: 5, top_p: 0.8, seed: 4, max_tokens: 40 }) }),
        g.submit({ prompt: 'A fish', sampling: validateSamplingParams({ temperature: 0.7, top_p: 0.9, seed: 5, max_tokens: 40 }) }),
      ];
      await g.runUntilIdle();
      await engine.dispose();
      return (await Promise.all(done)).map((c) => c.tokens);
    };
    assert.deepEqual(await run(64), await run(0));
  });

  test('cached decode logits equal a full recompute within 1e-4', async () => {
    const fast = await OnnxEngine.create(model, { flavour: 'fast', providers: testProviders(), maxSequences: 1 });
    const hf = await OnnxEngine.create(model, { flavour: 'hf', providers: testProviders(), maxSequences: 1 });
    const fastDriver = new DirectDriver(fast);
    const hfDriver = new DirectDriver(hf);
    const prompt = model.tokenizer.encode('Once upon a time, there was a', { bos: true });
    fastDriver.open(0, greedy(100), new Rng(1));
    let r = await fastDriver.step([[0, prompt, true]], true);
    const seq = [...prompt];
    let worst = 0;
    for (let stepNo = 0; stepNo < 40; stepNo++) {
      const cached = (r.logits as Float32Array).slice();
      if (stepNo % 8 === 0) {
        // Recompute from scratch: a fresh sequence, the whole text as one prefill.
        hfDriver.open(stepNo + 1, greedy(1), new Rng(1));
        const full = await hfDriver.step([[stepNo + 1, seq, true]], true);
        hfDriver.close(stepNo + 1);
        const ref = full.logits as Float32Array;
        for (let i = 0; i < cached.length; i++) worst = Math.max(worst, Math.abs((cached[i] as number) - (ref[i] as number)));
      }
      const next = r.tokens[0] as number;
      seq.push(next);
      r = await fastDriver.step([[0, [next], true]], true);
    }
    assert.ok(worst < 1e-4, `max |cached - recomputed| = ${worst}`);
    await fast.dispose();
    await hf.dispose();
  });

  test('fast graph: a step reads the pool through the block tables without writing it and returns only the new positions', async () => {
    const session = await ort.InferenceSession.create(model.graphPath('fast'), { executionProviders: ['cpu'] });
    const heads = model.kv.kvHeads;
    const lanes = model.kv.headDim;
    const blocks = 7;
    const bs = 4;
    const int64 = (v: number[], dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(v.map(BigInt)), dims);
    const feeds: Record<string, ort.Tensor> = {
      [IO.inputIds]: int64([1, 5], [2, 1]),
      [IO.positionIds]: int64([5, 0], [2, 1]),
      [IO.pastLengths]: int64([5, 0], [2]),
      [IO.logitsRows]: int64([0, 1], [2]),
      [IO.topK]: int64([4], [1]),
      // Row 0 holds 5 positions in blocks 3 and 6; row 1 none (its table entries are padding).
      [IO.blockTables]: new ort.Tensor('int32', Int32Array.from([3, 6, 0, 0]), [2, 2]),
    };
    const buffers: Float32Array[] = [];
    for (let l = 0; l < model.kv.layers; l++) {
      for (const input of [IO.poolKey(l), IO.poolValue(l)]) {
        const buf = new Float32Array(heads * blocks * bs * lanes).fill(0.5);
        buffers.push(buf);
        feeds[input] = new ort.Tensor('float32', buf, [heads, blocks, bs, lanes]);
      }
    }
    const out = await session.run(feeds);
    for (const buf of buffers) assert.ok(buf.every((x) => x === 0.5), 'the pool is an input only');
    assert.deepEqual(out[IO.newKey(0)]?.dims, [2, heads, 1, lanes]);
    assert.deepEqual(out[IO.logits]?.dims, [2, model.vocabSize]);
    // The in-graph top-k: each row's 4 best logits, best first, with their ids.
    const vals = out[IO.topKValues]?.data as Float32Array;
    const ids = out[IO.topKIndices]?.data as BigInt64Array;
    const full = out[IO.logits]?.data as Float32Array;
    for (let r = 0; r < 2; r++) {
      const row = Array.from(full.subarray(r * model.vocabSize, (r + 1) * model.vocabSize));
      const best = row.map((v, i) => [v, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, 4);
      assert.deepEqual(Array.from(ids.subarray(r * 4, r * 4 + 4), Number), best.map((b) => b[1]));
      assert.deepEqual(Array.from(vals.subarray(r * 4, r * 4 + 4)), best.map((b) => Math.fround(b[0])));
    }
    const rowOf = (o: ort.InferenceSession.OnnxValueMapType, r: number) => (o[IO.logits]?.data as Float32Array).subarray(r * model.vocabSize, (r + 1) * model.vocabSize);
    const near = (a: Float32Array, b: Float32Array) => a.every((x, i) => Math.abs(x - (b[i] as number)) < 1e-5);
    const poolWith = (fill: (l: number, isKey: boolean, buf: Float32Array) => void) => Object.fromEntries(
      Array.from({ length: model.kv.layers }, (_, l) => [IO.poolKey(l), IO.poolValue(l)]).flat().map((n, i) => {
        const buf = new Float32Array(heads * blocks * bs * lanes).fill(0.5);
        fill(i >> 1, i % 2 === 0, buf);
        return [n, new ort.Tensor('float32', buf, [heads, blocks, bs, lanes])];
      }),
    );
    // Row 1 has an empty past: the pool's contents (0.5 everywhere) must not reach its logits.
    const alone = await session.run({
      ...feeds,
      [IO.inputIds]: int64([5], [1, 1]),
      [IO.positionIds]: int64([0], [1, 1]),
      [IO.pastLengths]: int64([0], [1]),
      [IO.logitsRows]: int64([0], [1]),
      [IO.blockTables]: new ort.Tensor('int32', Int32Array.from([2]), [1, 1]),
      ...poolWith((_l, _k, buf) => buf.fill(0)),
    });
    assert.ok(near(rowOf(out, 1), rowOf(alone, 0)));
    // Row 0 reads only its own positions: changing blocks it does not name (or position 5..7 of
    // its second block, past its length) leaves its logits alone; changing one it names does not.
    const others = await session.run({ ...feeds, ...poolWith((_l, _k, buf) => {
      for (let h = 0; h < heads; h++) {
        for (const b of [0, 1, 2, 4, 5]) buf.fill(-3, ((h * blocks + b) * bs) * lanes, ((h * blocks + b + 1) * bs) * lanes);
        buf.fill(7, ((h * blocks + 6) * bs + 1) * lanes, ((h * blocks + 7) * bs) * lanes);
      }
    }) });
    assert.ok(near(rowOf(out, 0), rowOf(others, 0)), 'unnamed blocks and positions past the length are not read');
    const own = await session.run({ ...feeds, ...poolWith((_l, isKey, buf) => {
      if (!isKey) for (let h = 0; h < heads; h++) buf.fill(-3, ((h * blocks + 3) * bs) * lanes, ((h * blocks + 4) * bs) * lanes);
    }) });
    assert.ok(!near(rowOf(out, 0), rowOf(own, 0)), 'the blocks a row names are read');
    await session.release();
  });
});

describe('generator failure and stop handling', { skip: sharedSkipReason() }, () => {
  let model: LoadedModel;
  before(async () => {
    model = await loadModelDir(importStories260K());
  });

  test('a failed engine step fails its requests, frees everything, and the next request is served', async () => {
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 4 });
    const g = new Generator(engine, model);
    const real = engine.execute.bind(engine);
    let calls = 0;
    engine.execute = async (plan) => {
      if (++calls === 1) throw new Error('simulated ONNX Runtime failure');
      return real(plan);
    };
    const first = g.submit({ prompt: 'Once upon a time, there was a little girl named Lily. She loved to play outside', sampling: greedy(5) });
    const firstFailed = assert.rejects(first, /simulated/);
    await assert.rejects(g.step(), /simulated/);
    await firstFailed;
    assert.equal(g.scheduler.running.length, 0);
    assert.equal(g.scheduler.blocks.heldBlocks, 0);
    const second = g.submit({ prompt: 'Zoo', sampling: greedy(57) });
    await g.runUntilIdle();
    assert.equal('Zoo' + (await second).text, stories260K.referenceZoo);
    await engine.dispose();
  });

  test('a stop sequence ends the completion before it: no token after it is counted or billed, finish_reason stop', async () => {
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 2 });
    const g = new Generator(engine, model);
    const plain = g.submit({ prompt: 'Once', sampling: greedy(40) });
    await g.runUntilIdle();
    const full = (await plain).text;
    const at = full.indexOf('Lily');
    assert.ok(at > 0, full);
    for (const maxTokens of [40, 13]) {
      const stopped = g.submit({ prompt: 'Once', sampling: validateSamplingParams({ temperature: 0, max_tokens: maxTokens, stop: ['Lily'] }) });
      await g.runUntilIdle();
      const c = await stopped;
      assert.equal(c.text, full.slice(0, at));
      assert.equal(c.finishReason, 'stop');
      assert.equal(c.bill?.completion_tokens, c.tokens.length);
      assert.ok(model.tokenizer.decode([1, ...c.tokens]).includes('Lily'), 'the tokens end with the stop sequence, not past it');
      assert.ok(!model.tokenizer.decode([1, ...c.tokens.slice(0, -1)]).includes('Lily'));
    }
    await engine.dispose();
  });
});
