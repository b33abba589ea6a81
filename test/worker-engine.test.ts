import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Generator } from '../src/serving/generator.js';
import { OnnxEngine, type OnnxEngineOptions } from '../src/engine/onnx-engine.js';
import { Rng } from '../src/sampling/rng.js';
import { validateSamplingParams, type SamplingParams } from '../src/sampling/params.js';
import { cudaProviderInstalled } from '../src/engine/session.js';
import { DirectDriver } from '../src/engine/direct.js';
import { KvOp, type Engine, type StepItem, type StepPlan } from '../src/engine/types.js';
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


/**
 * A fixed script of prefill chunks, decodes, a prefix shared by reference (copied on its first
 * write), a swap round trip and a recompute-style reset (the Rng carries on), feeding sampled
 * tokens back. Returns everything observable: each step's tokens and logits bytes and what the
 * driver holds after each, so two engines can be compared exactly.
 */
async function runScript(engine: Engine): Promise<unknown[]> {
  const V = engine.info.vocabSize;
  const d = new DirectDriver(engine);
  const trace: unknown[] = [];
  const seqs = [1, 2, 3, 4];
  const snapshot = (what: string): void => {
    trace.push([what, d.freeBlocks, ...seqs.map((s) => d.length(s))]);
  };
  const next = new Map<number, number[]>([
    [1, prompt(13, 1, V)],
    [2, prompt(9, 2, V)],
    [3, prompt(6, 3, V)],
  ]);
  const step = async (items: [seq: number, count: number, sample: boolean][], keepLogits = false): Promise<void> => {
    const r = await d.step(items.map(([seq, count, sample]) => [seq, (next.get(seq) as number[]).splice(0, count), sample]), keepLogits);
    items.forEach(([seq, , sample], i) => {
      if (sample) (next.get(seq) as number[]).push(r.tokens[i] as number);
    });
    trace.push(Array.from(r.tokens), r.logits ? Buffer.from(r.logits.buffer, r.logits.byteOffset, r.logits.byteLength).toString('base64') : null);
    snapshot('step');
  };
  const decode = (seq: number): [number, number, boolean] => [seq, 1, true];

  d.open(1, greedy, new Rng(11));
  d.open(2, nucleus(2), new Rng(12));
  d.open(3, topK(3), new Rng(13));
  snapshot('open');
  await step([[1, 5, false], [2, 9, true], [3, 6, true]], true);
  await step([[1, 8, true], decode(2), decode(3)]);
  for (let k = 0; k < 3; k++) await step([decode(1), decode(2), decode(3)], k === 1);

  // Prefix sharing: sequence 4 starts on sequence 1's first two blocks (8 positions), by reference.
  d.open(4, nucleus(4), new Rng(14));
  d.share(1, 4, 2);
  next.set(4, d.tokens(1).slice(8, 13));
  snapshot('share');
  await step([decode(1), [4, 5, true], decode(3)], true);

  // Swap round trip: 2's blocks go to host memory and come back into other blocks.
  d.swapOut(2);
  snapshot('swapOut');
  await step([decode(1), decode(3), decode(4)]);
  d.swapIn(2);
  snapshot('swapIn');
  for (let k = 0; k < 2; k++) await step([decode(1), decode(2), decode(3), decode(4)], k === 0);

  // Recompute preemption: 3's positions are dropped and refilled; its Rng carries on where it was.
  const held = [...d.tokens(3), ...(next.get(3) as number[])];
  d.reset(3);
  next.set(3, held);
  snapshot('reset');
  await step([decode(1), [3, held.length, true], decode(2)], true);
  for (let k = 0; k < 3; k++) await step([decode(1), decode(2), decode(3), decode(4)]);

  // Copy-on-write: 5 shares 1's first three blocks but holds only 11 positions, so its first
  // write lands in a shared block, which the engine copies first; 1 goes on unharmed.
  d.open(5, greedy, new Rng(15));
  d.share(1, 5, 3, 11);
  next.set(5, d.tokens(1).slice(11, 14));
  await step([[5, 3, true], decode(1)], true);
  await step([decode(5), decode(1)], true);

  for (const s of [...seqs, 5]) d.close(s);
  await d.step([]);
  snapshot('closed all');
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
    test(`${flavour}: the same tokens and logits as an in-process OnnxEngine, through shared blocks, swaps and recompute`, async () => {
      const local = await OnnxEngine.create(await loadModelDir(dir), { ...opts, flavour });
      const expected = await runScript(local);
      assert.equal(local.openSequences, 0);
      await local.dispose();
      const remote = await WorkerEngine.create(dir, { ...opts, flavour });
      assert.deepEqual(remote.info, local.info);
      const actual = await runScript(remote);
      await remote.dispose();
      assert.deepEqual(actual, expected);
    });
  }

  test('the fast graph on a staged copy of the blocks it reads (the path for providers that copy inputs) gives the same tokens and logits', async () => {
    const model = await loadModelDir(dir);
    const inPlace = await OnnxEngine.create(model, opts);
    const expected = await runScript(inPlace);
    await inPlace.dispose();
    const staged = await OnnxEngine.create(model, { ...opts, stagePool: true });
    assert.deepEqual(await runScript(staged), expected);
    await staged.dispose();
  });

  test('under the Generator (prefix caching on), the same completions as an in-process OnnxEngine', async () => {
    const model = await loadModelDir(dir);
    // A shared 16-token head so later prompts hit the prefix cache.
    const prompts = Array.from({ length: 8 }, (_, i) => [...prompt(16, 0, 512), ...prompt(4 + 3 * i, 10 + i, 512)]);
    const complete = async (engine: Engine): Promise<unknown> => {
      const g = new Generator(engine, model, { prefillChunk: 8, prefixCaching: true });
      const done = prompts.map((p, i) => g.submit({ prompt: p, sampling: i % 2 === 0 ? validateSamplingParams({ temperature: 0, max_tokens: 30 }) : validateSamplingParams({ temperature: 0.9, seed: i, max_tokens: 30 }) }));
      await g.runUntilIdle();
      const results = await Promise.all(done);
      assert.equal(g.scheduler.blocks.heldBlocks, 0);
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

  test('a plan the engine rejects is applied not at all: the same error in-process and in the worker, and the engine works on', async () => {
    const model = await loadModelDir(dir);
    const local = await OnnxEngine.create(model, { ...opts, maxContext: 16 });
    const remote = await WorkerEngine.create(dir, { ...opts, maxContext: 16 });
    const base = (): StepPlan => ({ items: [], opens: [], closes: [], kvOps: [] });
    const item = (seq: number, tokens: number[], blocks: number[], offset = 0, count = tokens.length - offset): StepItem => ({ seq, tokens, offset, count, sample: true, blocks });
    const bad: [string, StepPlan, string, string | RegExp][] = [
      ['unknown sequence', { ...base(), items: [item(99, [1], [0])] }, 'MARGINAL_INVALID_ARGUMENT', 'sequence 99 is not open'],
      ['opened twice', { ...base(), opens: [{ seq: 1, sampling: greedy, rng: new Rng(1) }] }, 'MARGINAL_INVALID_ARGUMENT', 'sequence 1 is already open'],
      ['token that is no token', { ...base(), items: [item(1, [3, 1.5], [0])] }, 'MARGINAL_INVALID_ARGUMENT', 'token 1.5 is outside the vocabulary (0..511)'],
      ['item outside its array', { ...base(), items: [item(1, [3], [0], 0, 2)] }, 'MARGINAL_INVALID_ARGUMENT', /needs 1 or more tokens inside its array/],
      ['table too short', { ...base(), items: [item(1, prompt(6, 1, 512), [0])] }, 'MARGINAL_INVALID_ARGUMENT', /its block table has 1 blocks, 2 needed/],
      ['block outside the pool', { ...base(), items: [item(1, [3], [10_000])] }, 'MARGINAL_INVALID_ARGUMENT', /outside the pool/],
      ['block move outside the pool', { ...base(), kvOps: [KvOp.swapIn, 0, 10_000] }, 'MARGINAL_INVALID_ARGUMENT', /outside the pool/],
      ['past the context', { ...base(), items: [item(1, prompt(17, 1, 512), [0, 1, 2, 3, 4])] }, 'MARGINAL_CONTEXT_LENGTH', /beyond the context of 16/],
    ];
    try {
      for (const e of [local, remote] as Engine[]) {
        const d = new DirectDriver(e);
        d.open(1, greedy, new Rng(1));
        d.open(2, nucleus(7), new Rng(2));
        await d.step([[1, prompt(5, 3, 512), true], [2, prompt(6, 4, 512), true]]);
      }
      for (const [what, plan, code, message] of bad) {
        for (const e of [local, remote] as Engine[]) {
          // Each bad plan also closes sequence 2 and moves a block over one of 1's: none of it may happen.
          const withSideEffects: StepPlan = { ...plan, closes: [2], kvOps: [...plan.kvOps, KvOp.copy, 5, 0] };
          const err = await rejectsWith(e.execute(withSideEffects), code, message);
          if (e === remote && what === 'unknown sequence') assert.match(err.stack ?? '', /onnx-engine/, "the worker's stack, where the step failed");
        }
      }
      // Both engines still hold sequences 1 and 2 and block 0 as it was: they go on identically.
      const go = async (e: Engine) => {
        const r = await e.execute({ ...base(), items: [item(1, [...prompt(5, 3, 512), 7], [0, 1], 5), item(2, [...prompt(6, 4, 512), 9], [2, 3], 6)], keepLogits: true });
        return [Array.from(r.tokens), Buffer.from((r.logits as Float32Array).buffer).toString('base64')];
      };
      const fresh = await OnnxEngine.create(model, { ...opts, maxContext: 16 });
      const f = new DirectDriver(fresh);
      f.open(1, greedy, new Rng(1));
      f.open(2, nucleus(7), new Rng(2));
      await f.step([[1, prompt(5, 3, 512), true], [2, prompt(6, 4, 512), true]]);
      const expected = await go(fresh);
      await fresh.dispose();
      assert.deepEqual(await go(local), expected);
      assert.deepEqual(await go(remote), expected);
    } finally {
      await local.dispose();
      await remote.dispose();
    }
  });

  test('one step in flight at a time', async () => {
    const engine = await WorkerEngine.create(dir, opts);
    try {
      const plan: StepPlan = { items: [{ seq: 1, tokens: [1, 2, 3], offset: 0, count: 3, sample: true, blocks: [0] }], opens: [{ seq: 1, sampling: greedy, rng: new Rng(1) }], closes: [], kvOps: [] };
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
    await new DirectDriver(engine).step([]);
    assert.ok(engine.alive);
    const exited = new Promise<number>((resolve) => (engine as unknown as { worker: import('node:worker_threads').Worker }).worker.once('exit', resolve));
    await engine.dispose();
    await exited;
    assert.equal(engine.alive, false);
    await engine.dispose();
    await rejectsWith(engine.execute({ items: [], opens: [], closes: [], kvOps: [] }), 'MARGINAL_ENGINE_WORKER', /disposed/);
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
  /** Four 240-token prefills, opened with the plan and closed with the next one. */
  const longStep = (vocab: number, round: number): StepPlan => {
    const tokens = Int32Array.from(prompt(240, 9, vocab));
    const seqs = [0, 1, 2, 3].map((s) => round * 4 + s);
    return {
      items: seqs.map((seq, k) => ({ seq, tokens, offset: 0, count: 240, sample: true, blocks: Array.from({ length: 15 }, (_, b) => k * 15 + b) })),
      opens: seqs.map((seq) => ({ seq, sampling: greedy, rng: new Rng(seq) })),
      closes: round > 0 ? seqs.map((seq) => seq - 4) : [],
      kvOps: [],
    };
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
        const t0 = performance.now();
        inFlight = true;
        await engine.execute(longStep(engine.info.vocabSize, rounds));
        inFlight = false;
        flightMs += performance.now() - t0;
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
    const inFlight = engine.execute(longStep(engine.info.vocabSize, 0));
    await (engine as unknown as { worker: import('node:worker_threads').Worker }).worker.terminate();
    await rejectsWith(inFlight, 'MARGINAL_ENGINE_WORKER', /exited/);
    assert.equal(engine.alive, false);
    await rejectsWith(engine.execute(longStep(engine.info.vocabSize, 1)), 'MARGINAL_ENGINE_WORKER', /exited/);
    await engine.dispose();
  });
});
