/**
 * The first thing bench/gpu-check.sh runs on a GPU machine: opens a stories15M-shaped model on
 * CUDA through both session paths and fails (exit 1) unless
 *
 * - the I/O-binding path opens on CUDA with the KV cache in device memory,
 * - its decode steps copy no byte of the cache and move only the step's inputs and the
 *   sampled rows' outputs between host and device,
 * - both paths sample the same tokens, with logits within 1e-4 of each other.
 *
 *   node --import tsx bench/gpu/probe.ts          (PROBE_PROVIDER=cpu checks the probe itself on a CPU machine)
 */
import { join } from 'node:path';
import { DirectDriver, type DirectItem } from '../../src/engine/direct.js';
import { OnnxEngine } from '../../src/engine/onnx-engine.js';
import { Rng } from '../../src/sampling/rng.js';
import { validateSamplingParams } from '../../src/sampling/params.js';
import { ensureSynthetic, packageRoot } from '../../src/models/importers.js';
import { loadModelDir } from '../../src/models/modeldir.js';
import { RunnerStat } from '../../src/native/ort-runner.js';

function fail(why: string): never {
  console.error(`probe: FAILED: ${why}`);
  process.exit(1);
}

const model = await loadModelDir(ensureSynthetic('stories15m', join(packageRoot(), 'models', 'bench-stories15m'), (l) => console.error(l)));
const provider = process.env.PROBE_PROVIDER === 'cpu' ? 'cpu' : 'cuda';
const batch = 8;
const steps = 16;
const greedy = validateSamplingParams({ temperature: 0, max_tokens: steps + 1 });

async function run(ioBinding: boolean) {
  const lines: string[] = [];
  const engine = await OnnxEngine.create(model, { providers: [provider], maxSequences: batch, maxContext: 64, ioBinding, log: (l) => lines.push(l) });
  console.log(lines.join('\n'));
  if (engine.info.provider !== provider) fail(`the ${ioBinding ? 'I/O-binding' : 'JavaScript'} engine runs on ${engine.info.provider}`);
  const d = new DirectDriver(engine);
  for (let i = 0; i < batch; i++) d.open(i, greedy, new Rng(1));
  const tokens: number[][] = Array.from({ length: batch }, () => []);
  const logits: Float32Array[] = [];
  let r = await d.step(Array.from({ length: batch }, (_, i): DirectItem => [i, [model.bosId, 300 + i, 400 + i, 500 + i], true]), true);
  const perStep: { cache: number; up: number; down: number }[] = [];
  for (let s = 0; s < steps; s++) {
    r.tokens.forEach((t, i) => tokens[i]?.push(t));
    if (r.logits !== undefined) logits.push(r.logits);
    const up0 = engine.runnerStat(RunnerStat.uploadBytes) ?? 0;
    const down0 = engine.runnerStat(RunnerStat.downloadBytes) ?? 0;
    r = await d.step(tokens.map((t, i): DirectItem => [i, [t.at(-1) as number], true]), s % 4 === 0);
    perStep.push({ cache: r.timing.cacheBytesCopied ?? -1, up: (engine.runnerStat(RunnerStat.uploadBytes) ?? 0) - up0, down: (engine.runnerStat(RunnerStat.downloadBytes) ?? 0) - down0 });
  }
  const path = engine.kvPath;
  await engine.dispose();
  return { tokens, logits, perStep, path };
}

const bound = await run(true);
if (bound.path.path !== 'io-binding' || bound.path.memory !== (provider === 'cuda' ? 'device' : 'host')) fail(`the I/O-binding engine reports ${JSON.stringify(bound.path)}`);
const copied = bound.perStep.filter((s) => s.cache !== 0);
if (copied.length > 0) fail(`I/O-binding decode steps copied cache bytes: ${JSON.stringify(copied)}`);
const js = await run(false);
let worst = 0;
for (let s = 0; s < bound.logits.length; s++) {
  const a = bound.logits[s] as Float32Array;
  const b = js.logits[s] as Float32Array;
  for (let i = 0; i < a.length; i++) if (!Number.isNaN(b[i] as number)) worst = Math.max(worst, Math.abs((a[i] as number) - (b[i] as number)));
}
console.log(`I/O binding: ${bound.perStep.length} decode steps at batch ${batch}, KV bytes copied per step: 0; host→device per step ${bound.perStep.map((s) => s.up).join(',')} bytes, device→host ${bound.perStep.map((s) => s.down).join(',')} bytes`);
console.log(`onnxruntime-node session on ${provider.toUpperCase()}: KV bytes copied per step ${js.perStep.map((s) => s.cache).join(',')}`);
console.log(`max |logits(I/O binding) - logits(onnxruntime-node)| over ${bound.logits.length} steps: ${worst}`);
if (JSON.stringify(bound.tokens) !== JSON.stringify(js.tokens)) fail('the two paths sampled different tokens');
if (!(worst <= 1e-4)) fail(`logits differ by ${worst}`);
console.log('probe: OK');
