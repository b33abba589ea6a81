import assert from 'node:assert/strict';
import { getLlama, LlamaLogLevel, type Llama } from 'node-llama-cpp';
import { top2 } from '../../src/engine/evaluate.js';
import { OnnxEngine } from '../../src/engine/onnx-engine.js';
import type { LoadedModel } from '../../src/models/modeldir.js';
import { validateSamplingParams } from '../../src/sampling/params.js';
import { Generator } from '../../src/serving/generator.js';

/**
 * llama.cpp (node-llama-cpp's prebuilt CPU binaries) as the independent reference: next-token
 * probabilities along its own greedy continuation of a prompt. The KV cache is float32 and
 * flash attention off, so that only the weights' format separates its numbers from marginal's
 * (its default half-precision cache alone moves probabilities by ~1e-3).
 */
let llama: Promise<Llama> | undefined;

export function llamaCpp(): Promise<Llama> {
  llama ??= getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  return llama;
}

export interface LlamaCppRun {
  /** The prompt as llama.cpp tokenizes it (with BOS where the file asks for one). */
  prompt: number[];
  /** Its greedy continuation. */
  greedy: number[];
  /** Per continuation step: probabilities over the vocabulary before that token was chosen. */
  probs: Float32Array[];
  vocab: number;
}

export async function llamaCppGreedy(modelPath: string, text: string, steps: number): Promise<LlamaCppRun> {
  const l = await llamaCpp();
  const model = await l.loadModel({ modelPath });
  try {
    const context = await model.createContext({ contextSize: 256, threads: 1, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32', flashAttention: false });
    try {
      const prompt = model.tokenize(text, false);
      if (model.tokens.shouldPrependBosToken && model.tokens.bos !== null) prompt.unshift(model.tokens.bos);
      const vocab = (model.fileInfo.metadata.tokenizer.ggml.tokens as unknown[]).length;
      const greedy: number[] = [];
      const probs: Float32Array[] = [];
      const seq = context.getSequence();
      for await (const out of seq.evaluateWithMetadata(prompt.map(Number) as never, { probabilities: true }, { temperature: 0, yieldEogToken: true })) {
        const row = new Float32Array(vocab);
        for (const [t, p] of out.probabilities) row[Number(t)] = p;
        probs.push(row);
        greedy.push(Number(out.token));
        if (greedy.length >= steps) break;
      }
      return { prompt: prompt.map(Number), greedy, probs, vocab };
    } finally {
      await context.dispose();
    }
  } finally {
    await model.dispose();
  }
}

/** marginal's greedy continuation of `prompt` (token ids), n tokens at most. */
export async function greedy(model: LoadedModel, prompt: number[], n: number): Promise<number[]> {
  const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 1, intraOpThreads: 1 });
  try {
    const g = new Generator(engine, model);
    const done = g.submit({ prompt, sampling: validateSamplingParams({ temperature: 0, max_tokens: n }) });
    await g.runUntilIdle();
    return (await done).tokens;
  } finally {
    await engine.dispose();
  }
}

/**
 * Greedy texts agree token for token, except that after a step where llama.cpp's best two
 * choices were within `tie` nats either engine may take the other branch.
 */
export function assertGreedyAgrees(mine: number[], ref: LlamaCppRun, stopIds: number[], tie: number, what: string): void {
  for (let i = 0; i < Math.min(mine.length, ref.greedy.length); i++) {
    if (mine[i] === ref.greedy[i]) continue;
    const p = ref.probs[i] as Float32Array;
    const logs = Float32Array.from(p, (x) => Math.log(x));
    const margin = top2(logs).margin;
    assert.ok(margin < tie, `${what}: greedy token ${i} is ${mine[i]}, llama.cpp's ${ref.greedy[i]}, where llama.cpp led by ${margin.toFixed(3)} nats`);
    return;
  }
  if (mine.length < ref.greedy.length) assert.ok(stopIds.includes(mine[mine.length - 1] as number), `${what}: marginal stopped after ${mine.length} tokens without a stop token`);
}
