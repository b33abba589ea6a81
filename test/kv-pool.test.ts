import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { kvBytesPerToken } from '../src/cli/engine-options.js';
import { DirectDriver } from '../src/engine/direct.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { Rng } from '../src/sampling/rng.js';
import { validateSamplingParams, type SamplingParams } from '../src/sampling/params.js';
import { GEOMETRY_DEFAULTS, parseKvMemory, resolveGeometry } from '../src/geometry.js';
import { BlockManager } from '../src/kv/block-manager.js';
import { loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { Generator, type Completion } from '../src/serving/generator.js';
import { importStories260K } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';
import { testProviders } from './helpers/providers.js';

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const greedy = (maxTokens: number): SamplingParams => validateSamplingParams({ temperature: 0, max_tokens: maxTokens });

describe('block manager', () => {
  test('host blocks are a separate account; a block is shared while another holder or the cache names it', () => {
    const m = new BlockManager(8, 4, 3);
    const a: number[] = [];
    m.allocate(2, 0, undefined, a);
    assert.equal(m.isShared(a[0] as number), false);
    m.register(a[0] as number, 42, 0, [1, 2, 3, 4], 0);
    assert.equal(m.isShared(a[0] as number), true, 'named in the prefix cache');
    assert.equal(m.isShared(a[1] as number), false);
    const b: number[] = [];
    m.acquireCached([42], 1, 0, b);
    assert.equal(b[0], a[0], 'a hit is the same physical block');
    m.releaseOne(b[0] as number, 0);
    m.check();
    const host: number[] = [];
    m.allocateHost(3, host);
    assert.equal(m.freeHostBlocks, 0);
    assert.throws(() => m.allocateHost(1, []), { code: 'MARGINAL_ENGINE_CAPACITY' });
    m.releaseHost(host);
    assert.equal(m.freeHostBlocks, 3);
    assert.equal(host.length, 0);
    m.release(a, 1);
    assert.equal(m.heldBlocks, 0);
    assert.equal(m.cachedBlocks, 1, 'the named block stays cached');
    m.check();
  });
});

describe('serving geometry', () => {
  test('one set of defaults; the pool from blocks, bytes or a fraction of free memory', () => {
    const g = resolveGeometry({}, { maxContext: 512, kvBytesPerToken: 1000, freeMemory: 1e12 });
    assert.equal(g.maxNumSeqs, GEOMETRY_DEFAULTS.maxNumSeqs);
    assert.equal(g.maxNumBatchedTokens, GEOMETRY_DEFAULTS.maxNumBatchedTokens);
    assert.equal(g.prefillChunk, GEOMETRY_DEFAULTS.prefillChunk);
    assert.equal(g.maxModelLen, 512);
    assert.equal(g.kvBlocks, 64 * 32, 'every sequence at full length when memory allows');
    assert.equal(g.swapBlocks, g.kvBlocks);
    // Little free memory caps the default pool at 40% of it.
    assert.equal(resolveGeometry({}, { maxContext: 512, kvBytesPerToken: 1000, freeMemory: 1e7 }).kvBlocks, Math.floor((0.4 * 1e7) / 16000));
    assert.equal(resolveGeometry({ kvMemory: '1MiB' }, { maxContext: 512, kvBytesPerToken: 1000 }).kvBlocks, Math.floor(2 ** 20 / 16000));
    assert.equal(resolveGeometry({ kvMemory: 0.5 }, { maxContext: 512, kvBytesPerToken: 1000, freeMemory: 32e6 }).kvBlocks, 1000);
    assert.equal(resolveGeometry({ kvBlocks: 40, swapSpace: 0 }, { maxContext: 512 }).swapBlocks, 0);
    assert.equal(parseKvMemory('2GB', 0), 2e9);
    assert.equal(parseKvMemory('1e9', 0), 1e9);
    assert.throws(() => parseKvMemory('lots', 1), /--kv-memory must be bytes/);
    assert.throws(() => resolveGeometry({ kvBlocks: 31 }, { maxContext: 512 }), /less than one sequence at --max-model-len 512 needs \(32 blocks\)/);
    assert.throws(() => resolveGeometry({ maxModelLen: 600 }, { maxContext: 512 }), /exceeds the model's context of 512/);
    assert.throws(() => resolveGeometry({ kvBlocks: 40, kvMemory: '1GB' }, { maxContext: 512 }), /not both/);
    assert.throws(() => resolveGeometry({ kvMemory: 0.5 }, { maxContext: 512, kvBytesPerToken: 1, freeMemory: NaN }), /only a server has/);
    assert.throws(() => resolveGeometry({ maxNumSeqs: 0 }, { maxContext: 512 }), /--max-num-seqs must be a positive integer/);
  });

  test('serve and sim reject a pool that cannot hold one sequence, before anything loads', () => {
    const serve = spawnSync(process.execPath, [cli, 'serve', '--kv-blocks', '1', '--max-model-len', '64', '--port', '1', '--model', '/nonexistent'], { encoding: 'utf8' });
    assert.equal(serve.status, 2, serve.stderr);
    const sim = spawnSync(process.execPath, [cli, 'sim', '--trace', '/nonexistent.jsonl', '--kv-blocks', '3', '--max-model-len', '64'], { encoding: 'utf8' });
    assert.equal(sim.status, 2, sim.stderr);
    assert.match(sim.stderr, /less than one sequence at --max-model-len 64 needs \(4 blocks\)/);
  });
});

describe('the paged pool on stories260K', { skip: sharedSkipReason() }, () => {
  let model: LoadedModel;
  before(async () => {
    model = await loadModelDir(importStories260K());
  });

  const solo = async (prompt: string, sampling: SamplingParams): Promise<Completion> => {
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 1 });
    const g = new Generator(engine, model, { prefixCaching: false });
    const done = g.submit({ prompt, sampling });
    await g.runUntilIdle();
    await engine.dispose();
    return done;
  };

  test('concurrent requests share a prefix by reference: hits, no block copied, each completion as it is alone', async () => {
    const head = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends and her dog';
    const prompts = [head + ' Max.', head + ' and a ball.', head + ', every day.'];
    const params = [greedy(60), validateSamplingParams({ temperature: 0.8, top_p: 0.9, seed: 3, max_tokens: 60 }), greedy(40)];
    const alone = [];
    for (let i = 0; i < prompts.length; i++) alone.push(await solo(prompts[i] as string, params[i] as SamplingParams));
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 4 });
    const g = new Generator(engine, model, { prefillChunk: 16 });
    const done: Promise<Completion>[] = [];
    let steps = 0;
    // The first request is still decoding when the others arrive and hit its blocks.
    while (done.length < prompts.length || g.inFlight > 0) {
      if (done.length < prompts.length && steps >= 12 * done.length) done.push(g.submit({ prompt: prompts[done.length] as string, sampling: params[done.length] as SamplingParams }));
      await g.step();
      steps++;
      assert.ok(steps < 1000);
    }
    const together = await Promise.all(done);
    for (let i = 0; i < prompts.length; i++) assert.deepEqual(together[i]?.tokens, alone[i]?.tokens, `prompt ${i}`);
    const headBlocks = Math.floor(model.tokenizer.encode(head, { bos: true }).length / 16);
    assert.ok(headBlocks >= 2);
    for (const c of together.slice(1)) assert.ok(c.cachedTokens >= headBlocks * 16, `cached ${c.cachedTokens} tokens`);
    const c = g.scheduler.counters;
    assert.equal(c.blockCopies, 0, 'a hit copies nothing');
    // Every byte the engine copied was a new position written into its block: the hits were free.
    assert.equal(g.totals.kvBytesCopied, g.totals.batchTokens * kvBytesPerToken(model));
    assert.equal(g.scheduler.blocks.heldBlocks, 0);
    await g.runUntilIdle();
    assert.equal(engine.openSequences, 0);
    await engine.dispose();
  });

  test('a prompt cached to its last token recomputes it in a copy of the shared block, and continues exactly', async () => {
    // 32 tokens with BOS: two full blocks, so the second request's whole prompt is a hit.
    const tokens = model.tokenizer.encode('Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her big red ball and her friends.', { bos: true }).slice(0, 32);
    assert.equal(tokens.length, 32);
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 2 });
    const g = new Generator(engine, model);
    const first = g.submit({ prompt: tokens, sampling: greedy(40) });
    await g.runUntilIdle();
    const second = g.submit({ prompt: tokens, sampling: greedy(40) });
    await g.runUntilIdle();
    const [a, b] = [await first, await second];
    assert.equal(b.cachedTokens, 31);
    assert.equal(g.scheduler.counters.blockCopies, 1);
    assert.deepEqual(b.tokens, a.tokens);
    await engine.dispose();
  });

  test('swap moves blocks to host memory and back; the engine rejects a move outside its host blocks', async () => {
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 2, hostBlocks: 4 });
    const d = new DirectDriver(engine);
    const prompt = model.tokenizer.encode('Zoo', { bos: true });
    d.open(1, greedy(100), new Rng(1));
    let r = await d.step([[1, prompt, true]]);
    const out: number[] = [];
    for (let k = 0; k < 40; k++) {
      out.push(r.tokens[0] as number);
      if (k === 20) {
        d.swapOut(1);
        d.swapIn(1);
      }
      r = await d.step([[1, [r.tokens[0] as number], true]]);
      if (k === 20) assert.equal(r.timing.kvBytesCopied, 2 * Math.ceil((prompt.length + 21) / 16) * engine.info.blockBytes + kvBytesPerToken(model));
    }
    const ref = await solo('Zoo', greedy(40));
    assert.deepEqual(out, ref.tokens);
    await assert.rejects(engine.execute({ items: [], opens: [], closes: [], kvOps: [1, 0, 4] }), /outside the pool/);
    await engine.dispose();
  });
});

describe('marginal serve over a small pool', { skip: sharedSkipReason() }, () => {
  test('--kv-blocks N: concurrent load preempts and swaps, every completion is exact, and the pool empties', async () => {
    const dir = importStories260K();
    const model = await loadModelDir(dir);
    const prompts = ['Zoo', 'The cat', 'Once upon a time', 'Tom and Sue', 'A big dog', 'One day'];
    const expected: Completion[] = [];
    {
      const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 1 });
      for (const p of prompts) {
        const g = new Generator(engine, model, { prefixCaching: false });
        const done = g.submit({ prompt: p, sampling: greedy(120) });
        await g.runUntilIdle();
        expected.push(await done);
      }
      await engine.dispose();
    }
    const port = await new Promise<number>((resolve) => {
      const s = createServer();
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    // 24 blocks of 16 tokens: six requests of ~125 tokens need 48.
    const args = [cli, 'serve', '--model', dir, '--port', String(port), '--providers', testProviders().join(','), '--policy', 'fcfs', '--kv-blocks', '24', '--max-model-len', '192', '--max-num-seqs', '6'];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout.on('data', (d) => (log += d));
    child.stderr.on('data', (d) => (log += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const base = `http://127.0.0.1:${port}`;
    try {
      for (let i = 0; i < 300; i++) {
        try {
          if ((await fetch(`${base}/health`)).status === 200) break;
        } catch {
          /* not up yet */
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.match(log, /KV pool 24 blocks × 16 tokens = 384 tokens/);
      const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 120_000 });
      const results = await Promise.all(prompts.map((p) => client.completions.create({ model: 'stories260K', prompt: p, max_tokens: 120, temperature: 0 })));
      const metrics = await (await fetch(`${base}/metrics`)).text();
      const value = (name: string) => Number(metrics.split('\n').find((l) => l.startsWith(name + '{') || l.startsWith(name + ' '))?.split(' ').pop());
      assert.ok(value('vllm:num_preemptions_total') > 0, 'the pool ran out and the server preempted');
      assert.ok(value('marginal_swaps_total') > 0, 'it swapped rather than recomputed');
      assert.equal(value('vllm:kv_cache_usage_perc'), 0, 'the pool is empty again');
      assert.match(metrics, /vllm:cache_config_info\{[^}]*num_gpu_blocks="24"[^}]*num_cpu_blocks="24"/);
      // Exact resume after swap and recompute: each text is the one the request gets alone.
      for (let i = 0; i < prompts.length; i++) {
        assert.equal(results[i]?.choices[0]?.text, expected[i]?.text, `request ${i} under preemption`);
        assert.equal(results[i]?.usage?.completion_tokens, expected[i]?.tokens.length, `request ${i}`);
      }
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  });
});
