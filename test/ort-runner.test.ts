import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { cudaProviderInstalled } from '../src/engine/session.js';
import { loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { IO } from '../src/models/llama/graph.js';
import { cudaFreeMemory, OrtRunner, ortRunnerUnavailable, RunnerStat, RUNNER_STAT_COUNT } from '../src/native/ort-runner.js';
import { cleanup, synthTiny } from './helpers/models.js';

/**
 * The generic runner (native/src/ort/) against onnxruntime-node's own session on the same
 * graph. Under CI=true the runner must be available (the addon is built by `npm ci` and
 * libonnxruntime ships in onnxruntime-node); elsewhere its absence skips with the reason.
 */
const unavailable = ortRunnerUnavailable();
const skip: string | false = unavailable === undefined || process.env.CI === 'true' ? false : `runner unavailable: ${unavailable}`;

/** A deterministic fill, different per seed, in [-1, 1). */
function fill(a: Float32Array, seed: number): Float32Array {
  let x = seed >>> 0 || 1;
  for (let i = 0; i < a.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    a[i] = ((x >>> 0) / 2 ** 32) * 2 - 1;
  }
  return a;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}

describe('OrtRunner: ONNX Runtime through the C API with I/O binding', { skip }, () => {
  let dir: string;
  let model: LoadedModel;
  let graph: string;
  let session: ort.InferenceSession;
  // The tiny synthetic model: 2 layers, 2 KV heads of 16, vocab 512.
  const L = 2;
  const H = 2;
  const hd = 16;
  const vocab = 512;

  before(async () => {
    dir = synthTiny();
    model = await loadModelDir(dir);
    graph = model.graphPath('fast');
    session = await ort.InferenceSession.create(graph, { executionProviders: ['cpu'], graphOptimizationLevel: 'all', logSeverityLevel: 3 });
  });
  after(async () => {
    await session.release();
    cleanup(join(dir, '..'));
  });

  test("loads onnxruntime-node's own libonnxruntime and lists the graph's values as its session does", async () => {
    const r = await OrtRunner.open(graph);
    const pkg = createRequire(import.meta.url).resolve('onnxruntime-node/package.json');
    assert.equal(r.version, (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version);
    assert.equal(r.provider, 'cpu');
    assert.deepEqual(r.inputs.map((v) => v.name), session.inputNames);
    assert.deepEqual(r.outputs.map((v) => v.name), session.outputNames);
    const pool = r.inputs[r.input(IO.poolKey(0))];
    assert.deepEqual(pool, { name: IO.poolKey(0), type: 1, dims: [H, -1, -1, hd] });
    r.release();
  });

  /**
   * Binds one fast-graph run: b sequences × width tokens, each reading `blocksEach` blocks of a
   * C-block pool of `bs` positions (tables written by the caller after the int64 inputs).
   */
  function bindFast(r: OrtRunner, b: number, width: number, C: number, rows: number[], k: number, bs = 4, blocksEach = 2) {
    const small = r.allocate(1024, 'device');
    const pool = r.allocate(L * 2 * H * C * bs * hd * 4, 'device', { kv: true });
    const logits = r.allocate(rows.length * vocab * 4, 'host');
    const topValues = r.allocate(rows.length * k * 4, 'host');
    const topIds = r.allocate(rows.length * k * 8, 'host');
    const fresh = r.allocate(L * 2 * b * H * width * hd * 4, 'device');
    const bw = b * width;
    const int64s = 2 * bw + b + rows.length + 1;
    r.bindInput(IO.inputIds, small, 0, 'int64', [b, width]);
    r.bindInput(IO.positionIds, small, bw * 8, 'int64', [b, width]);
    r.bindInput(IO.pastLengths, small, 2 * bw * 8, 'int64', [b]);
    r.bindInput(IO.logitsRows, small, (2 * bw + b) * 8, 'int64', [rows.length]);
    r.bindInput(IO.topK, small, (2 * bw + b + rows.length) * 8, 'int64', [1]);
    r.bindInput(IO.blockTables, small, int64s * 8, 'int32', [b, blocksEach]);
    const lane = H * C * bs * hd;
    for (let l = 0; l < L; l++) {
      r.bindInput(IO.poolKey(l), pool, 2 * l * lane * 4, 'float32', [H, C, bs, hd]);
      r.bindInput(IO.poolValue(l), pool, (2 * l + 1) * lane * 4, 'float32', [H, C, bs, hd]);
      r.bindOutput(IO.newKey(l), fresh, 2 * l * bw * H * hd * 4, 'float32', [b, H, width, hd]);
      r.bindOutput(IO.newValue(l), fresh, (2 * l + 1) * bw * H * hd * 4, 'float32', [b, H, width, hd]);
    }
    r.bindOutput(IO.logits, logits, 0, 'float32', [rows.length, vocab]);
    r.bindOutput(IO.topKValues, topValues, 0, 'float32', [rows.length, k]);
    r.bindOutput(IO.topKIndices, topIds, 0, 'int64', [rows.length, k]);
    return { small, pool, logits, topValues, topIds, fresh, lane, int64s };
  }

  /** The int64 inputs then the int32 block tables, as the bytes bindFast's layout expects. */
  function smallInputs(int64s: bigint[], tables: number[]): Uint8Array {
    const bytes = new Uint8Array(int64s.length * 8 + tables.length * 4);
    new BigInt64Array(bytes.buffer, 0, int64s.length).set(int64s);
    new Int32Array(bytes.buffer, int64s.length * 8, tables.length).set(tables);
    return bytes;
  }

  test("a run over buffers bound in place equals onnxruntime-node's session.run on the same inputs", async () => {
    const r = await OrtRunner.open(graph);
    const b = 3;
    const width = 2;
    const C = 8;
    const bs = 4;
    const k = 5;
    const ids = [5n, 6n, 7n, 8n, 9n, 10n];
    const pos = [3n, 4n, 0n, 1n, 6n, 7n];
    const lengths = [3n, 0n, 6n];
    const rows = [1, 3, 5];
    const tables = [5, 0, 0, 0, 2, 7];
    const keys = Array.from({ length: L }, (_, l) => fill(new Float32Array(H * C * bs * hd), 10 + l));
    const values = Array.from({ length: L }, (_, l) => fill(new Float32Array(H * C * bs * hd), 20 + l));
    const feeds: Record<string, ort.Tensor> = {
      [IO.inputIds]: new ort.Tensor('int64', BigInt64Array.from(ids), [b, width]),
      [IO.positionIds]: new ort.Tensor('int64', BigInt64Array.from(pos), [b, width]),
      [IO.pastLengths]: new ort.Tensor('int64', BigInt64Array.from(lengths), [b]),
      [IO.logitsRows]: new ort.Tensor('int64', BigInt64Array.from(rows.map(BigInt)), [rows.length]),
      [IO.topK]: new ort.Tensor('int64', BigInt64Array.of(BigInt(k)), [1]),
      [IO.blockTables]: new ort.Tensor('int32', Int32Array.from(tables), [b, 2]),
    };
    for (let l = 0; l < L; l++) {
      feeds[IO.poolKey(l)] = new ort.Tensor('float32', keys[l] as Float32Array, [H, C, bs, hd]);
      feeds[IO.poolValue(l)] = new ort.Tensor('float32', values[l] as Float32Array, [H, C, bs, hd]);
    }
    const expected = await session.run(feeds);

    const buf = bindFast(r, b, width, C, rows, k, bs);
    r.write(buf.small, 0, smallInputs([...ids, ...pos, ...lengths, ...rows.map(BigInt), BigInt(k)], tables));
    for (let l = 0; l < L; l++) {
      r.write(buf.pool, 2 * l * buf.lane * 4, keys[l] as Float32Array);
      r.write(buf.pool, (2 * l + 1) * buf.lane * 4, values[l] as Float32Array);
    }
    await r.run();
    const logits = new Float32Array(r.view(buf.logits) as ArrayBuffer);
    assert.ok(maxAbsDiff(logits, expected[IO.logits]?.data as Float32Array) <= 1e-5);
    assert.ok(maxAbsDiff(new Float32Array(r.view(buf.topValues) as ArrayBuffer), expected[IO.topKValues]?.data as Float32Array) <= 1e-5);
    assert.deepEqual(new BigInt64Array(r.view(buf.topIds) as ArrayBuffer), expected[IO.topKIndices]?.data);
    const fresh = new Float32Array(r.view(buf.fresh) as ArrayBuffer);
    const bw = b * width;
    for (let l = 0; l < L; l++) {
      const lane = bw * H * hd;
      assert.ok(maxAbsDiff(fresh.subarray(2 * l * lane, (2 * l + 1) * lane), expected[IO.newKey(l)]?.data as Float32Array) <= 1e-5);
      assert.ok(maxAbsDiff(fresh.subarray((2 * l + 1) * lane, (2 * l + 2) * lane), expected[IO.newValue(l)]?.data as Float32Array) <= 1e-5);
    }
    r.release();
  });

  test('a bound view is read when the run happens: a cache changed in place changes the result, and no run copies it', async () => {
    const r = await OrtRunner.open(graph);
    const b = 1;
    const C = 6;
    const buf = bindFast(r, b, 1, C, [0], 1);
    const inputs = smallInputs([42n, 4n, 4n, 0n, 1n], [3, 1]);
    r.write(buf.small, 0, inputs);
    const keys = fill(new Float32Array(buf.lane), 7);
    r.write(buf.pool, 0, keys);
    const stats = new Float64Array(RUNNER_STAT_COUNT);
    r.statsInto(stats);
    const uploaded = stats[RunnerStat.uploadBytes] as number;
    await r.run();
    const first = new Float32Array(r.view(buf.logits) as ArrayBuffer).slice();
    await r.run();
    assert.deepEqual(new Float32Array(r.view(buf.logits) as ArrayBuffer), first, 'the same inputs give the same logits');
    // Layer 0's keys at the four visible positions change: the next run must see it.
    r.write(buf.pool, 0, fill(new Float32Array(buf.lane), 8));
    await r.run();
    assert.notDeepEqual(new Float32Array(r.view(buf.logits) as ArrayBuffer), first);
    r.write(buf.pool, 0, keys);
    await r.run();
    assert.deepEqual(new Float32Array(r.view(buf.logits) as ArrayBuffer), first);
    r.statsInto(stats);
    assert.equal(stats[RunnerStat.runs], 4);
    assert.equal(stats[RunnerStat.kvCopiedBytes], 0, 'no byte of the cache was copied');
    assert.equal(stats[RunnerStat.uploadBytes], uploaded + 2 * buf.lane * 4, 'only what was written went in');
    assert.equal(uploaded, inputs.byteLength + buf.lane * 4);
    assert.equal(stats[RunnerStat.downloadBytes], 0, 'outputs bound in host memory need no copy under CPU');
    r.release();
  });

  test('copy moves exactly the strided regions named, where the memory lives, and counts cache bytes read', async () => {
    const r = await OrtRunner.open(graph);
    const src = r.allocate(4096, 'device', { kv: true });
    const dst = r.allocate(4096, 'host');
    const srcBytes = new Uint8Array(r.view(src) as ArrayBuffer);
    for (let i = 0; i < srcBytes.length; i++) srcBytes[i] = (i * 7 + 3) & 255;
    const regions = Float64Array.from([
      // dstOffset, dstPitch, srcOffset, srcPitch, width, rows
      100, 64, 1000, 256, 16, 4,
      2000, 0, 3000, 0, 40, 1,
      0, 8, 0, 8, 0, 5, // empty
    ]);
    r.copy(dst, src, regions, 3);
    const expected = new Uint8Array(4096);
    for (let row = 0; row < 4; row++) expected.set(srcBytes.subarray(1000 + row * 256, 1000 + row * 256 + 16), 100 + row * 64);
    expected.set(srcBytes.subarray(3000, 3040), 2000);
    assert.deepEqual(new Uint8Array(r.view(dst) as ArrayBuffer), expected);
    assert.equal(r.stat(RunnerStat.kvCopiedBytes), 4 * 16 + 40);
    assert.equal(r.stat(RunnerStat.downloadBytes), 4 * 16 + 40, 'device to host is a download, even when both are host memory under CPU');

    // Any bad region: nothing moves.
    const before = new Uint8Array(r.view(dst) as ArrayBuffer).slice();
    const bad = Float64Array.from([0, 16, 0, 16, 8, 2, 4090, 16, 0, 16, 8, 2]);
    assert.throws(() => r.copy(dst, src, bad, 2), { code: 'ERR_OUT_OF_RANGE', message: /region 1 runs past the destination/ });
    assert.throws(() => r.copy(dst, src, Float64Array.from([0, 8, 0, 8, 16, 2]), 1), { message: /wider than their pitch/ });
    assert.throws(() => r.copy(dst, src, Float64Array.from([0.5, 0, 0, 0, 1, 1]), 1), { message: /not a non-negative integer/ });
    assert.throws(() => r.copy(dst, src, regions, 4), { message: /fewer than count/ });
    assert.throws(() => r.copy(src, src, Float64Array.from([0, 0, 8, 0, 16, 1]), 1), { message: /overlaps itself/ });
    assert.deepEqual(new Uint8Array(r.view(dst) as ArrayBuffer), before);
    r.copy(src, src, Float64Array.from([0, 0, 16, 0, 16, 1]), 1);
    assert.deepEqual(srcBytes.subarray(0, 16), srcBytes.slice(16, 32), 'disjoint regions of one buffer');
    // Interleaved rows of one buffer (a block moved within a head-strided pool): allowed when
    // no destination row meets a source row, refused when one does.
    r.copy(src, src, Float64Array.from([64, 256, 0, 256, 32, 4]), 1);
    for (let row = 0; row < 4; row++) assert.deepEqual(srcBytes.subarray(64 + row * 256, 96 + row * 256), srcBytes.slice(row * 256, row * 256 + 32));
    assert.throws(() => r.copy(src, src, Float64Array.from([16, 256, 0, 256, 32, 4]), 1), { message: /overlaps itself/ });
    assert.throws(() => r.copy(src, src, Float64Array.from([256, 256, 0, 256, 32, 4]), 1), { message: /overlaps itself/ });

    assert.throws(() => r.write(dst, 4090, new Uint8Array(8)), { code: 'ERR_OUT_OF_RANGE' });
    r.write(dst, 4090, new Uint8Array(8).fill(9), 6);
    assert.deepEqual(new Uint8Array(r.view(dst) as ArrayBuffer).subarray(4090), new Uint8Array(6).fill(9), 'a prefix of the source');
    assert.throws(() => r.write(dst, 0, new Uint8Array(8), 9), { message: /exceeds the source/ });
    assert.throws(() => r.read(dst, 4090, new Uint8Array(8)), { code: 'ERR_OUT_OF_RANGE' });
    r.free(dst);
    assert.throws(() => r.view(dst), { code: 'ERR_OUT_OF_RANGE', message: /no buffer/ });
    r.release();
  });

  test('bindings are checked against the graph, and a failed run leaves the runner usable', async () => {
    const r = await OrtRunner.open(graph);
    const buf = bindFast(r, 1, 1, 4, [0], 1);
    const f = r.allocate(1 << 16, 'device');
    assert.throws(() => r.bindInput(IO.poolKey(0), f, 0, 'int64', [H, 4, 4, hd]), { code: 'ERR_INVALID_ARG_VALUE', message: /element type/ });
    assert.throws(() => r.bindInput(IO.poolKey(0), f, 0, 'float32', [H, 4, 4]), { message: /has rank 4, not 3/ });
    assert.throws(() => r.bindInput(IO.poolKey(0), f, 0, 'float32', [H + 1, 4, 4, hd]), { message: /dimension 0 is fixed at 2, not 3/ });
    assert.throws(() => r.bindInput(IO.poolKey(0), f, 1 << 16, 'float32', [H, 4, 4, hd]), { code: 'ERR_OUT_OF_RANGE', message: /runs past buffer/ });
    assert.throws(() => r.bindInput(IO.poolKey(0), f, 2, 'float32', [H, 4, 4, hd]), { message: /multiple of the element size/ });
    assert.throws(() => r.bindInput('no_such_input', f, 0, 'float32', [1]), RangeError);
    assert.throws(() => r.free(buf.pool), { code: 'ORT_BOUND', message: /bound to input kv_pool\.0\.key/ });

    r.write(buf.small, 0, smallInputs([3n, 0n, 0n, 0n, 1n], [0, 0]));
    // Logits bound with the wrong number of rows: ONNX Runtime refuses the run.
    r.bindOutput(IO.logits, buf.logits, 0, 'float32', [0, vocab]);
    await assert.rejects(r.run(), { code: 'ORT_RUN' });
    r.bindOutput(IO.logits, buf.logits, 0, 'float32', [1, vocab]);
    const running = r.run();
    assert.throws(() => r.write(buf.small, 0, new Uint8Array(8)), { code: 'ORT_BUSY' });
    await running;
    assert.equal(r.stat(RunnerStat.runs), 1, 'only the run that succeeded counts');

    r.clearOutputs();
    r.bindOutput(IO.newKey(0), buf.fresh, 0, 'float32', [1, H, 1, hd]);
    r.runSync();
    assert.equal(r.stat(RunnerStat.runs), 2, 'a run on this thread counts the same');
    r.bindOutput(IO.logits, buf.logits, 0, 'float32', [0, vocab]);
    assert.throws(() => r.runSync(), { code: 'ORT_RUN' });
    r.release();
    assert.throws(() => r.allocate(8, 'host'), { code: 'ORT_RELEASED' });
  });

  test('an unbound input is an error, not a crash', async () => {
    const r = await OrtRunner.open(graph);
    await assert.rejects(async () => r.run(), { code: 'ORT_BIND', message: /input_ids is not bound/ });
    r.release();
  });

  test('a missing model and an unavailable provider fail with their own codes', async (t) => {
    await assert.rejects(OrtRunner.open(join(dir, 'no-such.onnx')), { code: 'ORT_SESSION' });
    // Device memory for sizing a pool: a positive figure where a CUDA device answers, else none.
    const free = cudaFreeMemory();
    assert.ok(free === undefined || (Number.isFinite(free) && free > 0), String(free));
    const r = await OrtRunner.open(graph);
    assert.equal(r.deviceMemory(), undefined, 'a CPU session has no device memory');
    r.release();
    if (cudaProviderInstalled()) {
      t.diagnostic('CUDA provider installed: the unavailable-provider case is not testable here');
      return;
    }
    await assert.rejects(OrtRunner.open(graph, { provider: 'cuda' }), { code: 'ORT_PROVIDER', message: /CUDA execution provider unavailable/ });
  });
});
