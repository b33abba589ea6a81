/**
 * How fast ONNX Runtime's CPU kernels multiply by each weight format, isolated from the rest of
 * a model: 24 chained 768×2048 / 2048×768 matrices (stories110m's MLP stack, more bytes than the
 * L3 in fp32 and q8), one thread, CPU time per run (best of 3), and the weight bytes streamed
 * per second. fp32 Gemm; MatMulNBits int8/int4 in blocks of 32–256 at each accuracy level asked
 * (4: activations quantized to int8 per block, integer dot products; 1: weights dequantized to
 * float32; 0: ONNX Runtime's choice); and DynamicQuantizeMatMul (int8 per output channel,
 * activations quantized per tensor).
 *
 *   npm run bench:matmul -- [--batches 1,32] [--blocks 32,64,128,256] [--levels 4] [--bits 8,4]
 *     [--config session.disable_prepacking=1]
 */
import { Command } from 'commander';
import * as ort from 'onnxruntime-node';
import { DType, GraphBuilder, inlineTensor } from '../src/models/onnx/builder.js';
import { cpuSeconds } from './decode-run.js';

const o = new Command()
  .option('--batches <list>', 'rows of the activation matrix', '1,32')
  .option('--blocks <list>', 'MatMulNBits block sizes', '32,128,256')
  .option('--levels <list>', 'MatMulNBits accuracy levels', '4')
  .option('--bits <list>', 'MatMulNBits weight bits', '8,4')
  .option('--config <list>', 'ONNX Runtime session config entries, e.g. session.disable_prepacking=1', '')
  .parse()
  .opts<{ batches: string; blocks: string; levels: string; bits: string; config: string }>();
// onnxruntime-node takes config entries as a nested object whose dotted path is the key.
const extra: Record<string, unknown> = {};
for (const entry of o.config.split(',').filter((e) => e !== '')) {
  const [key, value] = entry.split('=') as [string, string | undefined];
  const path = key.split('.');
  let at = extra;
  for (const part of path.slice(0, -1)) at = (at[part] ??= {}) as Record<string, unknown>;
  at[path[path.length - 1] as string] = value ?? '1';
}
const list = (s: string) => s.split(',').map(Number);
const D = 768;
const H = 2048;
const LAYERS = 12;

type Variant = { label: string; kind: 'fp32' } | { label: string; kind: 'nbits'; bits: 4 | 8; block: number; level: number } | { label: string; kind: 'dq' };
const variants: Variant[] = [
  { label: 'fp32 Gemm', kind: 'fp32' },
  ...(list(o.bits) as (4 | 8)[]).flatMap((bits) =>
    list(o.levels).flatMap((level) => list(o.blocks).map((block) => ({ label: `q${bits}, blocks of ${block}, level ${level}`, kind: 'nbits' as const, bits, block, level }))),
  ),
  { label: 'int8 per channel (DynamicQuantizeMatMul)', kind: 'dq' },
];

function randomBytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    b[i] = s >>> 24;
  }
  return b;
}

function build(v: Variant): { model: Uint8Array; bytes: number } {
  const g = new GraphBuilder('chain');
  let x = g.input('A', DType.float, ['M', D]);
  let bytes = 0;
  for (let l = 0; l < 2 * LAYERS; l++) {
    const [K, N] = l % 2 === 0 ? [D, H] : [H, D];
    if (v.kind === 'fp32') {
      // Distinct per layer: ONNX Runtime merges identical initializers, which would fit them all in cache.
      const w = Float32Array.from(randomBytes(N * K, l + 1000), (b) => (b - 128) * 1e-5);
      g.initializer(inlineTensor(`W${l}`, [N, K], w));
      x = g.op1('Gemm', [x, `W${l}`], { transB: 1 });
      bytes += N * K * 4;
    } else if (v.kind === 'nbits') {
      const perRow = Math.ceil(K / v.block);
      const blob = (v.block * v.bits) / 8;
      g.initializer({ name: `B${l}`, dims: [N, perRow, blob], dataType: DType.uint8, rawData: randomBytes(N * perRow * blob, l) });
      g.initializer(inlineTensor(`S${l}`, [N * perRow], new Float32Array(N * perRow).fill(1e-3)));
      x = g.op1('MatMulNBits', [x, `B${l}`, `S${l}`], { K, N, bits: v.bits, block_size: v.block, accuracy_level: v.level }, { domain: 'com.microsoft' });
      bytes += N * perRow * blob;
    } else {
      g.initializer({ name: `B${l}`, dims: [K, N], dataType: 3 /* INT8 */, rawData: randomBytes(K * N, l) });
      g.initializer(inlineTensor(`S${l}`, [N], new Float32Array(N).fill(1e-3)));
      x = g.op1('DynamicQuantizeMatMul', [x, `B${l}`, `S${l}`], {}, { domain: 'com.microsoft' });
      bytes += K * N;
    }
  }
  g.op1('Identity', [x], {}, { output: 'Y' });
  g.output('Y', DType.float, ['M', D]);
  return { model: g.encode({ '': 17, 'com.microsoft': 1 }), bytes };
}

console.log(`${2 * LAYERS} chained ${D}×${H} matrices, one thread, CPU ms per pass (best of 3) and weight GB/s${o.config ? `; ${o.config}` : ''}\n`);
const batches = o.batches.split(',').map(Number);
console.log(`| weights | ${batches.map((b) => `batch ${b}: ms | GB/s`).join(' | ')} |`);
console.log(`|---|${batches.map(() => '---:|---:').join('|')}|`);
for (const v of variants) {
  const { model, bytes } = build(v);
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1, graphOptimizationLevel: 'all', extra });
  const cells: string[] = [];
  for (const M of batches) {
    const feeds = { A: new ort.Tensor('float32', new Float32Array(M * D).map((_, i) => Math.sin(i)), [M, D]) };
    for (let r = 0; r < 2; r++) await session.run(feeds);
    const reps = M === 1 ? 20 : 5;
    let best = Infinity;
    for (let k = 0; k < 3; k++) {
      const c0 = cpuSeconds();
      for (let r = 0; r < reps; r++) await session.run(feeds);
      best = Math.min(best, ((cpuSeconds() - c0) * 1000) / reps);
    }
    cells.push(`${best.toFixed(2)} | ${(bytes / best / 1e6).toFixed(1)}`);
  }
  console.log(`| ${v.label} | ${cells.join(' | ')} |`);
  await session.release();
}
