import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Generator } from '../src/engine/generator.js';
import { OnnxEngine, type OnnxEngineOptions } from '../src/engine/onnx-engine.js';
import { Rng, validateSamplingParams, type SamplingParams } from '../src/engine/sampling.js';
import { cudaProviderInstalled } from '../src/engine/session.js';
import type { Engine, StepItem, StepPlan } from '../src/engine/types.js';
import { WorkerEngine } from '../src/engine/worker-engine.js';
import { isMarginalError } from '../src/errors.js';
import { synthesize } from '../src/models/importers.js';
import { loadModelDir, type Flavour } from '../src/models/modeldir.js';
import { cleanup, synthTiny, tempDir } from './helpers/models.js';
import { testProviders } from './helpers/providers.js';

const greedy: SamplingParams = validateSamplingParams({ temperature: 0 });
const nucleus = (seed: number): SamplingParams => validateSamplingParams({ temperature: 0.9, top_p: 0.9, seed });
const topK = (seed: number): SamplingParams => validateSamplingParams({ temperature: 1, top_k: 20, seed });

function prompt(n: number, salt: number, vocab: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 1) % vocab);
}

async function rejectsWith(p: Promise<unknown>, code: string, message?: string | RegExp): Promise<Error> {
  try {
    await p;
  } catch (e) {
    assert.ok(isMarginalError(e), `a marginal error, got ${String(e)}`);
    assert.equal(e.code, code);
    if (typeof message === 'string') assert.equal(e.message, message);
    else if (message) assert.match(e.message, message);
    return e;
  }
  assert.fail(`expected a rejection with ${code}`);
}

function throwsCode(fn: () => void, code: string): void {
  assert.throws(fn, (e: unknown) => isMarginalError(e) && e.code === code);
}

/**
 * A fixed script of prefill chunks, decodes, prefix-block copies, a swap round trip and a
 * recompute-style close and reopen (same Rng), feeding sampled tokens back. Returns everything
 * observable: each step's tokens and logits bytes, the bookkeeping after every call, and where
 * each Rng stands at the end, so two engines can be compared exactly.
 */
async function runScript(engine: Engine): Promise<unknown[]> {
  const V = engine.info.vocabSize;
  const trace: unknown[] = [];
  const seqs = [1, 2, 3, 4];
  const snapshot = (what: string): void => {
    trace.push([what, engine.freeBlocks, ...seqs.map((s) => [engine.contextLength(s), engine.blocksHeld(s)])]);
  };
  const hist = new Map<number, number[]>([
    [1, prompt(13, 1, V)],
    [2, prompt(9, 2, V)],
    [3, prompt(6, 3, V)],
  ]);
  const rngs = [new Rng(11), new Rng(12), new Rng(13)];
  const step = async (items: [seq: number, from: number, to: number, sample: boolean][], keepLogits = false): Promise<void> => {
    const plan: StepPlan = {
      items: items.map(([seq, from, to, sample]): StepItem => ({ seq, tokens: hist.get(seq) as number[], offset: from, count: to - from, sample })),
      keepLogits,
    };
    const r = await engine.execute(plan);
    items.forEach(([seq, , , sample], i) => {
      if (sample) (hist.get(seq) as number[]).push(r.tokens[i] as number);
    });
    trace.push(Array.from(r.tokens), r.logits ? Buffer.from(r.logits.buffer, r.logits.byteOffset, r.logits.byteLength).toString('base64') : null);
    snapshot('step');
  };
  const len = (seq: number): number => (hist.get(seq) as number[]).length;
  const decode = (seq: number): [number, number, number, boolean] => [seq, len(seq) - 1, len(seq), true];

  engine.open(1, greedy, rngs[0] as Rng);
  engine.open(2, nucleus(2), rngs[1] as Rng);
  engine.open(3, topK(3), rngs[2] as Rng);
  snapshot('open');
  await step([[1, 0, 5, false], [2, 0, 9, true], [3, 0, 6, true]], true);
  await step([[1, 5, 13, true], decode(2), decode(3)]);
  for (let k = 0; k < 3; k++) await step([decode(1), decode(2), decode(3)], k === 1);

  // Prefix cache: sequence 4 starts from copies of sequence 1's first two blocks.
  engine.storeBlock?.(1, 0, 100);
  engine.storeBlock?.(1, 1, 101);
  hist.set(4, (hist.get(1) as number[]).slice(0, 13));
  engine.open(4, nucleus(4), new Rng(14));
  engine.loadBlocks?.(4, [100, 101]);
  snapshot('loadBlocks');
  await step([decode(1), [4, 8, 13, true], decode(3)], true);

  // Swap round trip: 2's keys, values and sampling state leave the slot and come back.
  engine.swapOut?.(2);
  snapshot('swapOut');
  await step([decode(1), decode(3), decode(4)]);
  engine.swapIn?.(2);
  snapshot('swapIn');
  for (let k = 0; k < 2; k++) await step([decode(1), decode(2), decode(3), decode(4)], k === 0);

  // Recompute preemption: 3 is dropped and refilled, and its Rng carries on where it was.
  engine.close(3);
  snapshot('close');
  engine.open(3, topK(3), rngs[2] as Rng);
  await step([decode(1), [3, 0, len(3), true], decode(2)], true);
  for (let k = 0; k < 3; k++) await step([decode(1), decode(2), decode(3), decode(4)]);

  for (const s of seqs) engine.close(s);
  snapshot('closed all');
  trace.push(rngs.map((r) => r.nextUint32()));
  return trace;
}

describe('WorkerEngine', () => {
  let dir: string;
  before(() => {
    dir = synthTiny();
  });
  after(() => cleanup(join(dir, '..')));

  const opts: OnnxEngineOptions = { providers: testProviders(), maxSequences: 4, blockSize: 4 };

  for (const flavour of ['fast', 'hf'] as Flavour[]) {
    test(`${flavour}: the same tokens, logits and bookkeeping as an in-process OnnxEngine`, async () => {
      const local = await OnnxEngine.create(await loadModelDir(dir), { ...opts, flavour });
      const expected = await runScript(local);
      await local.dispose();
      const remote = await WorkerEngine.create(dir, { ...opts, flavour });
      assert.deepEqual(remote.info, local.info);
      assert.equal(remote.swapSecondsPerToken, local.swapSecondsPerToken);
      const actual = await runScript(remote);
      await remote.dispose();
      assert.deepEqual(actual, expected);
      assert.equal(remote.freeBlocks, remote.info.totalBlocks);
    });
  }

  test('under the Generator (prefix caching on), the same completions as an in-process OnnxEngine', async () => {
    const model = await loadModelDir(dir);
    // A shared 16-token head so later prompts hit the prefix cache.
    const prompts = Array.from({ length: 8 }, (_, i) => [...prompt(16, 0, 512), ...prompt(4 + 3 * i, 10 + i, 512)]);
    const complete = async (engine: Engine): Promise<unknown> => {
      const g = new Generator(engine, model, { prefillChunk: 8, prefixCaching: true });
      const done = prompts.map((p, i) => g.submit({ prompt: p, sampling: i % 2 === 0 ? validateSamplingParams({ temperature: 0, max_tokens: 30 }) : validateSamplingParams({ temperature: 0.9, seed: i, max_tokens: 30 }) }));
      await g.runUntilIdle();
      const results = await Promise.all(done);
      assert.equal(engine.freeBlocks, engine.info.totalBlocks);
      return results.map((r) => [r.tokens, r.cachedTokens, r.finishReason]);
    };
    const local = await OnnxEngine.create(model, opts);
    const expected = await complete(local);
    await local.dispose();
    const remote = await WorkerEngine.create(dir, opts);
    try {
      assert.deepEqual(await complete(remote), expected);
    } finally {
      await remote.dispose();
    }
    assert.ok((expected as [number[], number][]).some(([, cached]) => cached > 0), 'the prefix cache was used');
  });

  test('synchronous calls throw what OnnxEngine throws, at the call', async () => {
    const model = await loadModelDir(dir);
    const local = await OnnxEngine.create(model, { ...opts, maxSequences: 2 });
    const remote = await WorkerEngine.create(dir, { ...opts, maxSequences: 2 });
    try {
      for (const e of [local, remote] as Engine[]) {
        e.open(1, greedy, new Rng(1));
        e.open(2, greedy, new Rng(2));
        throwsCode(() => e.open(1, greedy, new Rng(1)), 'MARGINAL_INVALID_ARGUMENT');
        throwsCode(() => e.open(3, greedy, new Rng(3)), 'MARGINAL_ENGINE_CAPACITY');
        throwsCode(() => e.storeBlock?.(1, 0, 7), 'MARGINAL_INVALID_ARGUMENT');
        throwsCode(() => e.loadBlocks?.(2, [7]), 'MARGINAL_INVALID_ARGUMENT');
        throwsCode(() => e.swapIn?.(1), 'MARGINAL_INVALID_ARGUMENT');
        throwsCode(() => e.swapOut?.(5), 'MARGINAL_INVALID_ARGUMENT');
        // The engine is unharmed: both sequences still run.
        const r = await e.execute({ items: [1, 2].map((seq) => ({ seq, tokens: [5, 6, 7], offset: 0, count: 3, sample: true })) });
        assert.equal(r.tokens.length, 2);
        assert.equal(e.contextLength(1), 3);
        e.close(1);
        e.close(2);
      }
    } finally {
      await local.dispose();
      await remote.dispose();
    }
  });

  test('a failed step rejects with the original code and message; the engine keeps working', async () => {
    const model = await loadModelDir(dir);
    const local = await OnnxEngine.create(model, { ...opts, maxContext: 16 });
    const engine = await WorkerEngine.create(dir, { ...opts, maxContext: 16 });
    try {
      const e = await rejectsWith(engine.execute({ items: [{ seq: 99, tokens: [1], offset: 0, count: 1, sample: true }] }), 'MARGINAL_INVALID_ARGUMENT', 'sequence 99 is not open');
      assert.equal((e as Error & { statusCode?: number }).statusCode, 400);
      assert.match(e.stack ?? '', /onnx-engine/, "the worker's stack, where the step failed");

      // Inputs the OnnxEngine itself rejects, with its own messages: a token that does not fit
      // an Int32Array and an item outside its array.
      engine.open(1, greedy, new Rng(1));
      await rejectsWith(engine.execute({ items: [{ seq: 1, tokens: [3, 1.5], offset: 0, count: 2, sample: true }] }), 'MARGINAL_INVALID_ARGUMENT', 'token 1.5 is outside the vocabulary (0..511)');
      await rejectsWith(engine.execute({ items: [{ seq: 1, tokens: [3], offset: 0, count: 2, sample: true }] }), 'MARGINAL_INVALID_ARGUMENT', /needs 1 or more tokens inside its array/);

      // A step that fails part-way leaves the same bookkeeping as in-process: blocks reserved
      // for the items checked before the failing one.
      local.open(1, greedy, new Rng(1));
      for (const x of [local, engine] as Engine[]) {
        x.open(2, greedy, new Rng(2));
        await x.execute({ items: [{ seq: 2, tokens: prompt(12, 5, 512), offset: 0, count: 12, sample: true }] });
        await rejectsWith(
          x.execute({ items: [{ seq: 1, tokens: prompt(6, 6, 512), offset: 0, count: 6, sample: false }, { seq: 2, tokens: prompt(8, 7, 512), offset: 0, count: 8, sample: true }] }),
          'MARGINAL_CONTEXT_LENGTH',
        );
      }
      for (const seq of [1, 2]) {
        assert.equal(engine.contextLength(seq), local.contextLength(seq), `contextLength(${seq})`);
        assert.equal(engine.blocksHeld(seq), local.blocksHeld(seq), `blocksHeld(${seq})`);
      }
      assert.equal(engine.freeBlocks, local.freeBlocks);

      // A command the worker rejects (here smuggled past the checks on this side) fails the
      // next execute, whose plan does not run.
      (engine as unknown as { queue: unknown[] }).queue.push({ op: 'swapIn', seq: 42 });
      await rejectsWith(engine.execute({ items: [{ seq: 1, tokens: [4], offset: 0, count: 1, sample: true }] }), 'MARGINAL_INVALID_ARGUMENT', 'sequence 42 is not swapped out');
      assert.equal(engine.contextLength(1), 0, 'the plan did not run');

      const r = await engine.execute({ items: [{ seq: 1, tokens: [4, 5], offset: 0, count: 2, sample: true }] });
      assert.ok((r.tokens[0] as number) >= 0);
      assert.equal(engine.contextLength(1), 2);
    } finally {
      await local.dispose();
      await engine.dispose();
    }
  });

  test('one step in flight at a time', async () => {
    const engine = await WorkerEngine.create(dir, opts);
    try {
      engine.open(1, greedy, new Rng(1));
      const plan: StepPlan = { items: [{ seq: 1, tokens: [1, 2, 3], offset: 0, count: 3, sample: true }] };
      const first = engine.execute(plan);
      await assert.rejects(engine.execute(plan), { code: 'ERR_ASSERTION' });
      await first;
    } finally {
      await engine.dispose();
    }
  });

  test('load failures reject with their own code', async () => {
    await rejectsWith(WorkerEngine.create(join(dir, 'no-such-model'), opts), 'MARGINAL_MODEL_NOT_FOUND');
  });

  test("the session's log lines reach opts.log", { skip: cudaProviderInstalled() ? 'CUDA is installed: nothing to fall back from' : false }, async () => {
    const lines: string[] = [];
    const engine = await WorkerEngine.create(dir, { ...opts, providers: ['cuda', 'cpu'], log: (l) => lines.push(l) });
    await engine.dispose();
    assert.equal(engine.info.provider, 'cpu');
    assert.equal(lines.length, 1, 'one line says which path runs');
    assert.match(lines[0] as string, /on CPU/);
    assert.match(lines[0] as string, /CUDA execution provider not installed/);
  });

  test('dispose releases the session and ends the thread', async () => {
    const engine = await WorkerEngine.create(dir, opts);
    engine.open(1, greedy, new Rng(1));
    await engine.execute({ items: [{ seq: 1, tokens: [1, 2], offset: 0, count: 2, sample: true }] });
    assert.ok(engine.alive);
    const exited = new Promise<number>((resolve) => (engine as unknown as { worker: import('node:worker_threads').Worker }).worker.once('exit', resolve));
    await engine.dispose();
    await exited;
    assert.equal(engine.alive, false);
    await engine.dispose();
    await rejectsWith(engine.execute({ items: [{ seq: 1, tokens: [3], offset: 0, count: 1, sample: true }] }), 'MARGINAL_ENGINE_WORKER', /disposed/);
  });
});

describe('WorkerEngine on a stories15M-shaped model', () => {
  let dir: string;
  before(() => {
    dir = join(tempDir('s15m'), 'model');
    synthesize('stories15m', dir, { flavours: ['fast'] });
  });
  after(() => cleanup(join(dir, '..')));

  // One thread for ONNX Runtime leaves a core for the main thread on small machines: what is
  // under test is whether the event loop waits on a step, not CPU contention.
  const opts: OnnxEngineOptions = { providers: testProviders(), maxSequences: 4, intraOpThreads: 1 };
  const longStep = (vocab: number): StepPlan => {
    const tokens = Int32Array.from(prompt(240, 9, vocab));
    return { items: [0, 1, 2, 3].map((seq) => ({ seq, tokens, offset: 0, count: 240, sample: true })) };
  };

  /** setInterval(1 ms) ticks seen while steps of 4 x 240-token prefills were in flight. */
  async function ticksDuringSteps(engine: Engine, minFlightMs: number, maxRounds: number): Promise<{ ticks: number; flightMs: number; rounds: number }> {
    let ticks = 0;
    let inFlight = false;
    const timer = setInterval(() => {
      if (inFlight) ticks++;
    }, 1);
    let flightMs = 0;
    let rounds = 0;
    try {
      while (rounds < maxRounds && (rounds === 0 || flightMs < minFlightMs)) {
        for (let s = 0; s < 4; s++) engine.open(s, greedy, new Rng(s));
        const t0 = performance.now();
        inFlight = true;
        await engine.execute(longStep(engine.info.vocabSize));
        inFlight = false;
        flightMs += performance.now() - t0;
        for (let s = 0; s < 4; s++) engine.close(s);
        rounds++;
      }
    } finally {
      clearInterval(timer);
    }
    return { ticks, flightMs, rounds };
  }

  test('the main thread keeps running while a step runs', async (t) => {
    const engine = await WorkerEngine.create(dir, opts);
    let remote;
    try {
      remote = await ticksDuringSteps(engine, 300, 20);
    } finally {
      await engine.dispose();
    }
    const local = await OnnxEngine.create(await loadModelDir(dir), opts);
    const inProcess = await ticksDuringSteps(local, 0, 1);
    await local.dispose();
    t.diagnostic(`worker: ${remote.ticks} ticks in ${remote.flightMs.toFixed(0)} ms over ${remote.rounds} steps; in-process: ${inProcess.ticks} ticks in ${inProcess.flightMs.toFixed(0)} ms`);
    assert.ok(remote.ticks >= 30, `only ${remote.ticks} timer ticks in ${remote.flightMs.toFixed(0)} ms of steps`);
  });

  test('a worker that dies fails the step in flight and every later one', async () => {
    const engine = await WorkerEngine.create(dir, opts);
    for (let s = 0; s < 4; s++) engine.open(s, greedy, new Rng(s));
    const inFlight = engine.execute(longStep(engine.info.vocabSize));
    await (engine as unknown as { worker: import('node:worker_threads').Worker }).worker.terminate();
    await rejectsWith(inFlight, 'MARGINAL_ENGINE_WORKER', /exited/);
    assert.equal(engine.alive, false);
    await rejectsWith(engine.execute(longStep(engine.info.vocabSize)), 'MARGINAL_ENGINE_WORKER', /exited/);
    await engine.dispose();
  });
});
