import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DeviceKvStorage, VIEW_ALIGN } from '../src/kv/device-pool.js';
import { HostKvStorage, blockBytes, type KvPoolShape, type KvStorage } from '../src/kv/pool.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { OrtRunner, ortRunnerUnavailable, RunnerStat } from '../src/native/ort-runner.js';
import { cleanup, synthTiny } from './helpers/models.js';

/**
 * The runner-backed pool (its memory is the session's: host memory under the CPU provider, so
 * it can be read back here) against the host pool, operation for operation: every block copy,
 * swap, position write and read must leave both with the same contents and return the same
 * values, and count the same bytes.
 */
const unavailable = ortRunnerUnavailable();
const skip: string | false = unavailable === undefined || process.env.CI === 'true' ? false : `runner unavailable: ${unavailable}`;

describe('DeviceKvStorage against HostKvStorage', { skip }, () => {
  let dir: string;
  let runner: OrtRunner;
  const shape: KvPoolShape = { layers: 2, kvHeads: 3, headDim: 4, blockSize: 5, blocks: 7, hostBlocks: 200 };

  before(async () => {
    dir = synthTiny();
    runner = await OrtRunner.open((await loadModelDir(dir)).graphPath('fast'));
  });
  after(() => {
    runner.release();
    cleanup(join(dir, '..'));
  });

  /** Layer l's keys (kv 0) or values (kv 1) of the device pool, [kvHeads][blocks][blockSize][headDim]. */
  function lane(d: DeviceKvStorage, l: number, kv: 0 | 1): Float32Array {
    const floats = shape.kvHeads * shape.blocks * shape.blockSize * shape.headDim;
    return new Float32Array(runner.view(d.buffer) as ArrayBuffer, d.laneOffset(l, kv), floats);
  }

  function same(d: DeviceKvStorage, h: HostKvStorage, what: string): void {
    for (let l = 0; l < shape.layers; l++) {
      assert.deepEqual(lane(d, l, 0), h.keys[l], `${what}: layer ${l} keys`);
      assert.deepEqual(lane(d, l, 1), h.values[l], `${what}: layer ${l} values`);
    }
  }

  test('the same operations leave the same pool', () => {
    const d = new DeviceKvStorage(runner, shape);
    const h = new HostKvStorage(shape);
    assert.equal((d as KvStorage).keys, undefined, 'the device pool is not JavaScript arrays');
    for (let l = 0; l < shape.layers; l++) for (const kv of [0, 1] as const) assert.equal(d.laneOffset(l, kv) % VIEW_ALIGN, 0, 'every bound view starts aligned');
    let seed = 12345;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed / 2 ** 32;
    };
    const { kvHeads: H, headDim: hd, blockSize: bs, blocks: N } = shape;
    const table = [4, 1, 6];
    for (let step = 0; step < 12; step++) {
      // New positions for a sequence on blocks 4, 1, 6: runs that cross block boundaries.
      const start = Math.floor(rand() * 8);
      const count = 1 + Math.floor(rand() * (3 * bs - start - 1));
      const headStride = count * hd + 3;
      const srcK = Array.from({ length: shape.layers }, () => Float32Array.from({ length: H * headStride + 5 }, () => rand()));
      const srcV = Array.from({ length: shape.layers }, () => Float32Array.from({ length: H * headStride + 5 }, () => rand()));
      const layer = step % shape.layers;
      d.writePositions(srcK, srcV, 2, headStride, table, start, count);
      h.writePositions(srcK, srcV, 2, headStride, table, start, count);
      same(d, h, `write ${step}`);
      const a = [new Float32Array(H * headStride + 5).fill(-1), new Float32Array(H * headStride + 5).fill(-1)] as const;
      const b = [new Float32Array(H * headStride + 5).fill(-1), new Float32Array(H * headStride + 5).fill(-1)] as const;
      d.readPositions(layer, table, start, count, a[0], a[1], 2, headStride);
      h.readPositions(layer, table, start, count, b[0], b[1], 2, headStride);
      assert.deepEqual(a, b, `read ${step}`);
      const src = Math.floor(rand() * N);
      const dst = (src + 1 + Math.floor(rand() * (N - 1))) % N;
      d.copyBlock(src, dst);
      h.copyBlock(src, dst);
      same(d, h, `copy ${src} -> ${dst}`);
      const host = Math.floor(rand() * 100);
      d.swapOut(dst, host);
      h.swapOut(dst, host);
      const into = Math.floor(rand() * N);
      d.swapIn(host, into);
      h.swapIn(host, into);
      same(d, h, `swap ${dst} -> host ${host} -> ${into}`);
      assert.equal(d.takeBytesCopied(), h.takeBytesCopied(), `bytes counted, step ${step}`);
    }
    assert.throws(() => d.swapIn(199, 0), /holds nothing/, 'host memory is allocated as swap-outs need it');
    assert.ok(runner.stat(RunnerStat.kvCopiedBytes) > 0);
  });

  test('writeFromDevice puts a run’s new keys and values where writePositions would', () => {
    const d = new DeviceKvStorage(runner, shape);
    const h = new HostKvStorage(shape);
    const { layers, kvHeads: H, headDim: hd } = shape;
    const width = 7;
    const owners = [
      { blocks: [2, 5], offset: 1 },
      { blocks: [0, 3, 6], offset: 6 },
    ];
    // [layer][k|v][item][kvHead][width][headDim], as the fast graph's outputs are bound.
    const laneFloats = owners.length * H * width * hd;
    const fresh = Float32Array.from({ length: layers * 2 * laneFloats }, (_, i) => Math.sin(i));
    const src = runner.allocate(fresh.byteLength, 'device');
    runner.write(src, 0, fresh);
    d.writeFromDevice(src, laneFloats * 4, owners, [0, 1], 2, width);
    const keys = Array.from({ length: layers }, (_, l) => fresh.subarray(2 * l * laneFloats, (2 * l + 1) * laneFloats));
    const values = Array.from({ length: layers }, (_, l) => fresh.subarray((2 * l + 1) * laneFloats, (2 * l + 2) * laneFloats));
    for (let j = 0; j < owners.length; j++) {
      const owner = owners[j] as (typeof owners)[number];
      h.writePositions(keys, values, j * H * width * hd, width * hd, owner.blocks, owner.offset, width);
    }
    same(d, h, 'writeFromDevice');
    assert.equal(d.takeBytesCopied(), h.takeBytesCopied());
    runner.free(src);
    assert.equal(blockBytes(shape), layers * 2 * H * shape.blockSize * hd * 4);
  });
});
