/**
 * One measured decode run of marginal's engine, shared by the benchmarks that compare weight
 * formats and peers: `batch` sequences prefilled with deterministic prompts, one warm-up step,
 * then `steps` timed decode steps of the whole batch (greedy).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { validateSamplingParams } from '../src/sampling/params.js';
import { Rng } from '../src/sampling/rng.js';
import { DirectDriver, type DirectItem } from '../src/engine/direct.js';
import type { StepItem, StepPlan } from '../src/engine/types.js';
import { packageRoot, synthesize } from '../src/models/importers.js';
import { ownBlockSize } from '../src/models/llama/weight-store.js';
import { syntheticShape } from '../src/models/llama/synthetic.js';
import { GRAPH_VERSION, type LoadedModel, type ModelConfig } from '../src/models/modeldir.js';

export interface DecodeResult {
  tokS: number;
  /**
   * Tokens per second of CPU time the whole process spent (all its threads). With one thread
   * it is the rate on an idle core, whatever else the machine runs; with more it also counts
   * time threads spend spinning while they wait for each other.
   */
  tokCpuS: number;
  stepMs: number;
  ortMs: number;
  glueMs: number;
}

/** CPU seconds this process has used so far (user + system, all threads). */
export function cpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** Deterministic prompts of `length` ordinary tokens (ids past the specials and byte pieces). */
export function benchPrompt(model: LoadedModel, i: number, length: number): number[] {
  const ids = [model.bosId];
  for (let k = 1; k < length; k++) ids.push(259 + ((i * 131 + k * 17) % (model.vocabSize - 259)));
  return ids;
}

export async function marginalDecode(model: LoadedModel, batch: number, o: { promptLen: number; steps: number; threads: number; profilePrefix?: string }): Promise<DecodeResult> {
  const sampling = validateSamplingParams({ temperature: 0, max_tokens: o.steps + 2 });
  const engine = await OnnxEngine.create(model, {
    flavour: 'fast',
    providers: ['cpu'],
    maxSequences: batch,
    intraOpThreads: o.threads,
    maxContext: o.promptLen + o.steps + 8,
    // ONNX Runtime's profiler is reached through onnxruntime-node's session options: profiling
    // runs the same graph and kernels there instead of through the I/O-binding runner.
    ...(o.profilePrefix ? { profilePrefix: o.profilePrefix, ioBinding: false } : {}),
  });
  try {
    const driver = new DirectDriver(engine);
    const last = new Int32Array(batch);
    // Prompts of equal length run as one prefill.
    const prefill: DirectItem[] = [];
    for (let i = 0; i < batch; i++) {
      driver.open(i, sampling, new Rng(i));
      prefill.push([i, benchPrompt(model, i, o.promptLen), true]);
    }
    last.set((await driver.step(prefill)).tokens);
    // One plan reused across steps, as the scheduler's is: only the fed token and the offset change.
    const end = o.promptLen + o.steps + 1;
    const items: StepItem[] = Array.from({ length: batch }, (_, i) => {
      driver.reserve(i, end);
      const tokens = new Int32Array(end);
      tokens.set(driver.tokens(i));
      return { seq: i, tokens, offset: o.promptLen, count: 1, sample: true, blocks: driver.blocks(i) };
    });
    const plan: StepPlan = { items, opens: [], closes: [], kvOps: [] };
    let ortMs = 0;
    let total = 0;
    let cpu0 = 0;
    for (let s = -1; s < o.steps; s++) {
      if (s === 0) cpu0 = cpuSeconds();
      for (let i = 0; i < batch; i++) {
        const it = items[i] as StepItem;
        (it.tokens as Int32Array)[it.offset] = last[i] as number;
      }
      const t0 = performance.now();
      const r = await engine.execute(plan);
      const dt = performance.now() - t0;
      for (const it of items) it.offset++;
      if (s >= 0) {
        ortMs += r.timing.runMs;
        total += dt;
      }
      last.set(r.tokens);
    }
    const cpu = cpuSeconds() - cpu0;
    return { tokS: (batch * o.steps) / (total / 1000), tokCpuS: (batch * o.steps) / cpu, stepMs: total / o.steps, ortMs: ortMs / o.steps, glueMs: (total - ortMs) / o.steps };
  } finally {
    await engine.dispose();
  }
}

/** models/bench-SHAPE[-q8|-q4][-bN], written unless an up-to-date one with those weights is there. */
export function benchModelDir(shape: string, format: string, log: (line: string) => void): string {
  const [weights, block] = format.split('@') as [string, string | undefined];
  const dir = join(packageRoot(), 'models', format === 'fp32' ? `bench-${shape}` : `bench-${shape}-${weights}${block ? `-b${block}` : ''}`);
  const cfg = join(dir, 'marginal.json');
  const c = existsSync(cfg) ? (JSON.parse(readFileSync(cfg, 'utf8')) as ModelConfig) : undefined;
  // `q8` is what `--quantize q8` writes by default (ownBlockSize); `q8@32` pins ggml's blocks.
  const quantize = weights === 'fp32' ? undefined : { weights: weights as 'q8' | 'q4', ...(block ? { blockSize: Number(block) } : {}) };
  const blockSize = quantize === undefined ? 32 : (quantize.blockSize ?? ownBlockSize(syntheticShape(shape).shape, quantize));
  const fresh = c !== undefined && c.graphVersion === GRAPH_VERSION && (c.quantization?.linear ?? 'fp32') === weights && (c.quantization?.blockSize ?? 32) === blockSize;
  if (!fresh) {
    log(`writing ${dir}`);
    synthesize(shape, dir, quantize === undefined ? { log } : { log, quantize });
  }
  return dir;
}
