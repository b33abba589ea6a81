import { Generator } from '../serving/generator.js';
import { validateSamplingParams } from '../engine/sampling.js';
import { openModelAndEngine, type EngineCliOptions } from './engine-options.js';

interface GenerateOptions extends EngineCliOptions {
  prompt: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed?: number;
  stop?: string[];
}

export async function runGenerate(o: GenerateOptions): Promise<void> {
  // Validate before loading anything: a bad flag should fail in milliseconds.
  const sampling = validateSamplingParams({ temperature: o.temperature, top_p: o.topP, top_k: o.topK, seed: o.seed, max_tokens: o.maxTokens, stop: o.stop });
  const { model, engine, geometry } = await openModelAndEngine(o, { maxNumSeqs: 1 });
  try {
    const g = new Generator(engine, model, { geometry });
    const done = g.submit({ prompt: o.prompt, sampling, onText: (t) => process.stdout.write(t) });
    await g.runUntilIdle();
    await done;
  } finally {
    await engine.dispose();
  }
}
