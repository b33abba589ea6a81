import { cpus } from 'node:os';
import { loadModelDir } from '../models/modeldir.js';
import { fitProfile, type StepProfile, type StepShape } from './cost-model.js';
import { DirectDriver, type DirectItem } from './direct.js';
import type { OnnxEngineOptions } from './onnx-engine.js';
import { Rng, validateSamplingParams } from './sampling.js';
import type { Engine } from './types.js';
import { WorkerEngine } from './worker-engine.js';

export interface CalibrateOptions extends OnnxEngineOptions {
  batches?: number[];
  contexts?: number[];
  chunks?: number[];
  repeats?: number;
  log?: (line: string) => void;
}

/**
 * Measures the server's own step path — the engine in its worker thread, message passing
 * included, over its paged pool — on a grid of step shapes: decode batches at several context
 * lengths, prefill chunks, and decodes mixed with a prefill chunk; and fits the cost model's
 * coefficients to the median time of each shape.
 */
export async function calibrate(modelDir: string, o: CalibrateOptions = {}): Promise<StepProfile> {
  const model = await loadModelDir(modelDir);
  const batches = o.batches ?? [1, 2, 4, 8, 16, 32, 64];
  const maxSequences = Math.max(...batches) + 1;
  const maxContext = Math.min(o.maxContext ?? model.kv.maxContext, model.kv.maxContext);
  const { log, batches: _b, contexts: _c, chunks: _k, repeats: _r, ...engineOpts } = o;
  const engine = await WorkerEngine.create(modelDir, { ...engineOpts, maxSequences, maxContext, ...(log ? { log } : {}) });
  try {
    const fit = await measure(engine, { ...o, batches, maxContext });
    return {
      model: model.name,
      machine: `${cpus().length}× ${cpus()[0]?.model.trim() ?? 'cpu'}, ${engine.info.provider}`,
      flavour: engine.info.flavour,
      ...fit.profile,
      maxSequences: maxSequences - 1,
      maxContext,
      blockSize: engine.info.blockSize,
      swapMsPerToken: engine.info.swapSecondsPerToken * 1000,
      kvBytesPerToken: engine.info.blockBytes / engine.info.blockSize,
      samples: fit.samples,
    };
  } finally {
    await engine.dispose();
  }
}

async function measure(engine: Engine, o: CalibrateOptions & { batches: number[]; maxContext: number }): Promise<{ profile: ReturnType<typeof fitProfile>; samples: number }> {
  const { batches, maxContext } = o;
  const contexts = (o.contexts ?? [16, 64, 128, 192]).filter((c) => c + 8 < maxContext);
  const chunks = (o.chunks ?? [16, 64, 128, 256]).filter((c) => c < maxContext);
  const repeats = o.repeats ?? 5;
  const driver = new DirectDriver(engine);
  const sampling = validateSamplingParams({ temperature: 0, max_tokens: maxContext });
  const samples: { shape: StepShape; ms: number }[] = [];
  const vocab = engine.info.vocabSize;
  const token = (i: number) => 3 + (i % Math.max(1, vocab - 3));
  let nextSeq = 0;
  const open = async (count: number, context: number): Promise<number[]> => {
    const seqs: number[] = [];
    for (let i = 0; i < count; i++) {
      const seq = nextSeq++;
      driver.open(seq, sampling, new Rng(seq));
      const prompt = Array.from({ length: context }, (_, k) => token(seq * 31 + k));
      for (let at = 0; at < context; at += 256) {
        const n = Math.min(256, context - at);
        await driver.step([[seq, prompt.slice(at, at + n), at + n === context]]);
      }
      seqs.push(seq);
    }
    return seqs;
  };
  const decodeItems = (seqs: number[]): DirectItem[] => seqs.map((seq) => [seq, [token(seq)], true]);
  const measureShape = async (seqs: number[], shape: StepShape) => {
    const times: number[] = [];
    for (let k = 0; k < repeats; k++) {
      const r = await driver.step(decodeItems(seqs));
      times.push(r.timing.totalMs);
    }
    times.sort((a, b) => a - b);
    samples.push({ shape, ms: times[Math.floor(times.length / 2)] as number });
  };

  for (const context of contexts) {
    for (const b of batches) {
      const seqs = await open(b, context);
      // Each measured step grows every context by one; the shape uses the average.
      await measureShape(seqs, { tokens: b, contextTokens: b * (context + 1 + repeats / 2), sequences: b, runs: 1 });
      for (const seq of seqs) driver.close(seq);
      o.log?.(`calibrate: decode batch ${b} at context ${context}: ${samples[samples.length - 1]?.ms.toFixed(2)} ms`);
    }
  }
  for (const chunk of chunks) {
    const [seq] = await open(1, 0);
    const prompt = Array.from({ length: chunk * repeats }, (_, k) => token(k));
    const times: number[] = [];
    for (let k = 0; k < repeats && (k + 1) * chunk < maxContext; k++) {
      const r = await driver.step([[seq as number, prompt.slice(k * chunk, (k + 1) * chunk), true]]);
      times.push(r.timing.totalMs);
      samples.push({ shape: { tokens: chunk, contextTokens: (k + 1) * chunk, sequences: 1, runs: 1 }, ms: r.timing.totalMs });
    }
    driver.close(seq as number);
    o.log?.(`calibrate: prefill chunk ${chunk}: ${times.map((t) => t.toFixed(2)).join(', ')} ms`);
  }
  for (const b of batches.filter((x) => x >= 4)) {
    const chunk = chunks[Math.floor(chunks.length / 2)] ?? 64;
    const context = contexts[Math.floor(contexts.length / 2)] ?? 64;
    const seqs = await open(b, context);
    for (let k = 0; k < Math.min(repeats, 2); k++) {
      const [pre] = await open(1, 0);
      const prompt = Array.from({ length: chunk }, (_, i) => token(i));
      const r = await driver.step([...decodeItems(seqs), [pre as number, prompt, true]]);
      samples.push({ shape: { tokens: b + chunk, contextTokens: b * (context + 1 + k) + chunk, sequences: b + 1, runs: 2 }, ms: r.timing.totalMs });
      driver.close(pre as number);
    }
    for (const seq of seqs) driver.close(seq);
    o.log?.(`calibrate: decode batch ${b} + prefill chunk ${chunk}: ${samples[samples.length - 1]?.ms.toFixed(2)} ms`);
  }
  return { profile: fitProfile(samples), samples: samples.length };
}
