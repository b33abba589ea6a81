import { InvalidArgumentError } from '../../errors.js';
import type { LlamaShape, WeightSpec } from './shape.js';
import type { WeightSource } from './weights.js';

/**
 * Named shapes of real models, for throughput work with a realistic compute profile. Weights
 * are random, so their text is meaningless.
 */
export const SYNTHETIC_SHAPES: Record<string, { shape: LlamaShape; tokenizer: 'llama2' | 'synthetic'; about: string }> = {
  tiny: {
    shape: { dim: 64, hiddenDim: 172, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 512, maxSeqLen: 256, normEps: 1e-5, ropeTheta: 10000, sharedClassifier: true },
    tokenizer: 'synthetic',
    about: 'the shape of a tiny Llama for unit tests',
  },
  stories15m: {
    shape: { dim: 288, hiddenDim: 768, nLayers: 6, nHeads: 6, nKvHeads: 6, vocabSize: 32000, maxSeqLen: 256, normEps: 1e-5, ropeTheta: 10000, sharedClassifier: true },
    tokenizer: 'llama2',
    about: "the shape of llama2.c's stories15M",
  },
  stories110m: {
    shape: { dim: 768, hiddenDim: 2048, nLayers: 12, nHeads: 12, nKvHeads: 12, vocabSize: 32000, maxSeqLen: 1024, normEps: 1e-5, ropeTheta: 10000, sharedClassifier: true },
    tokenizer: 'llama2',
    about: "the shape of llama2.c's stories110M",
  },
  'llama-1b': {
    shape: { dim: 2048, hiddenDim: 8192, nLayers: 16, nHeads: 32, nKvHeads: 8, vocabSize: 32000, maxSeqLen: 2048, normEps: 1e-5, ropeTheta: 10000, sharedClassifier: true },
    tokenizer: 'llama2',
    about: 'the shape of a 1B Llama (Llama 3.2 1B dimensions, Llama 2 vocabulary)',
  },
};

export function syntheticShape(name: string): (typeof SYNTHETIC_SHAPES)[string] {
  const entry = SYNTHETIC_SHAPES[name];
  if (entry === undefined) {
    throw new InvalidArgumentError(`unknown shape "${name}"; known shapes: ${Object.keys(SYNTHETIC_SHAPES).join(', ')}`);
  }
  return entry;
}

/**
 * Deterministic pseudo-random weights: each tensor is seeded from its name, so a tensor's
 * values do not depend on which others were generated before it. Norm weights are 1.
 */
export function syntheticWeights(seed = 0): WeightSource {
  return (spec: WeightSpec) => {
    const n = spec.dims.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    if (spec.dims.length === 1) return out.fill(1);
    const fanIn = spec.dims[spec.dims.length - 1] as number;
    // Embeddings small (GPT-2's 0.02) so the tied classifier does not simply echo the input
    // token; projections at unit gain so every layer moves the residual stream.
    const scale = spec.name === 'model.embed_tokens.weight' ? 0.02 : 1 / Math.sqrt(fanIn);
    let state = (hashString(spec.name) ^ seed) >>> 0;
    for (let i = 0; i < n; i++) {
      // mulberry32: tiny and fast; quality is ample for weights that only need to look random.
      state = (state + 0x6d2b79f5) >>> 0;
      let t = state;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
      out[i] = (u * 2 - 1) * 1.7320508 * scale;
    }
    return out;
  };
}

function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
