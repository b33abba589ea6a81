import { join } from 'node:path';
import { GGMLQuantizationType } from '@huggingface/gguf';
import { llama2cTokenizerMetadata, writeLlamaGguf, type GgufArchitecture, type GgufWeightType } from '../../src/models/gguf/export.js';
import { kv, type GgufEntry } from '../../src/models/gguf/writer.js';
import { weightSpecs, type LlamaShape, type WeightSpec } from '../../src/models/llama/shape.js';
import { floatToHalf } from '../../src/models/quant/ggml.js';
import type { WeightSource } from '../../src/models/llama/weights.js';
import { Llama2cTokenizer } from '../../src/models/tokenizer/llama2c.js';
import { LLAMA3_SPLIT, QWEN2_SPLIT, trainBpe } from './bpe.js';
import { stories260K } from './models.js';
import { sharedDir } from './shared.js';

/**
 * Small GGUF models of each architecture marginal imports: real shapes scaled down (GQA
 * ratios, head sizes, rope bases, biases, tied or untied classifiers), random weights, and
 * the real Llama 2 tokenizer where the family uses SentencePiece; Llama 3 and Qwen2 get a
 * byte-level BPE trained here. The classifier is scaled so logits spread over several nats:
 * greedy choices are then clear of quantization noise, and a wrong weight layout shows.
 */
export interface TestFamily {
  name: 'llama2' | 'llama3' | 'mistral' | 'qwen2';
  architecture: GgufArchitecture;
  shape: LlamaShape;
  tokenizer: () => Record<string, GgufEntry>;
  prompt: string;
}

export const LLAMA2_TOKENIZER = join(sharedDir, 'models', 'llama2-tokenizer', 'tokenizer.bin');

const CORPUS = [
  stories260K.reference200,
  stories260K.referenceZoo,
  'The little robot wanted to help. It rolled to the garden, where the flowers were tall and the sun was warm.',
  "Once upon a time, there was a robot named Bolt. Bolt liked numbers: 1, 2, 3, 42 and 1234. He said, \"I'm happy!\" and they'd play all day.",
  'System: you are a helpful assistant.\nUser: tell me a story\nAssistant: Once upon a time…',
].join('\n');

const LLAMA3_TEMPLATE =
  "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";
const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const MISTRAL_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";

function bpeMetadata(split: RegExp, pre: string, special: string[], o: { bos: string; eos: string; eot?: string; addBos: boolean; template: string }): Record<string, GgufEntry> {
  const v = trainBpe(CORPUS, split, 300, special);
  const md: Record<string, GgufEntry> = {
    'tokenizer.ggml.model': kv.str('gpt2'),
    'tokenizer.ggml.pre': kv.str(pre),
    'tokenizer.ggml.tokens': kv.strs(v.tokens),
    'tokenizer.ggml.token_type': kv.i32s(v.tokens.map((t) => (t in v.special ? 3 : 1))),
    'tokenizer.ggml.merges': kv.strs(v.merges),
    'tokenizer.ggml.bos_token_id': kv.u32(v.special[o.bos] as number),
    'tokenizer.ggml.eos_token_id': kv.u32(v.special[o.eos] as number),
    'tokenizer.ggml.add_bos_token': kv.bool(o.addBos),
    'tokenizer.chat_template': kv.str(o.template),
  };
  if (o.eot !== undefined) md['tokenizer.ggml.eot_token_id'] = kv.u32(v.special[o.eot] as number);
  return md;
}

/** Llama 3's rope scaling (factor 8, low 1, high 4) over an original context scaled down to 32 positions, so it matters here. */
function llama3FreqFactors(headDim: number, theta: number): number[] {
  const factor = 8;
  const low = 1;
  const high = 4;
  const original = 32;
  const out: number[] = [];
  for (let i = 0; i < headDim / 2; i++) {
    const freq = 1 / Math.pow(theta, (2 * i) / headDim);
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < original / high) out.push(1);
    else if (wavelen > original / low) out.push(factor);
    else {
      const smooth = (original / wavelen - low) / (high - low);
      out.push(1 / ((1 - smooth) / factor + smooth));
    }
  }
  return out;
}

const llamaSpm = () => llama2cTokenizerMetadata(Llama2cTokenizer.fromFileSync(LLAMA2_TOKENIZER, 32000));

export const TEST_FAMILIES: TestFamily[] = [
  {
    name: 'llama2',
    architecture: 'llama',
    shape: { dim: 128, hiddenDim: 352, nLayers: 2, nHeads: 4, nKvHeads: 4, vocabSize: 32000, maxSeqLen: 256, normEps: 1e-5, ropeTheta: 10000, sharedClassifier: false },
    tokenizer: llamaSpm,
    prompt: 'Once upon a time, there was a little robot',
  },
  {
    name: 'llama3',
    architecture: 'llama',
    shape: {
      dim: 128, hiddenDim: 384, nLayers: 2, nHeads: 8, nKvHeads: 2, vocabSize: 0, maxSeqLen: 256, normEps: 1e-5, ropeTheta: 500000, sharedClassifier: true,
      ropeFreqFactors: llama3FreqFactors(16, 500000),
    },
    tokenizer: () =>
      bpeMetadata(LLAMA3_SPLIT, 'llama-bpe', ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'], {
        bos: '<|begin_of_text|>',
        eos: '<|end_of_text|>',
        eot: '<|eot_id|>',
        addBos: true,
        template: LLAMA3_TEMPLATE,
      }),
    prompt: 'Once upon a time, there was a little robot',
  },
  {
    // llama.cpp writes Mistral checkpoints as its llama architecture.
    name: 'mistral',
    architecture: 'llama',
    shape: { dim: 128, hiddenDim: 448, nLayers: 2, nHeads: 8, nKvHeads: 2, vocabSize: 32000, maxSeqLen: 256, normEps: 1e-5, ropeTheta: 1000000, sharedClassifier: false },
    tokenizer: () => {
      const md = llamaSpm();
      md['tokenizer.chat_template'] = kv.str(MISTRAL_TEMPLATE);
      return md;
    },
    prompt: 'Once upon a time, there was a little robot',
  },
  {
    name: 'qwen2',
    architecture: 'qwen2',
    shape: { dim: 128, hiddenDim: 320, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 0, maxSeqLen: 256, normEps: 1e-6, ropeTheta: 1000000, sharedClassifier: true, qkvBias: true, rope: 'half' },
    tokenizer: () =>
      bpeMetadata(QWEN2_SPLIT, 'qwen2', ['<|endoftext|>', '<|im_start|>', '<|im_end|>'], {
        bos: '<|endoftext|>',
        eos: '<|im_end|>',
        addBos: false,
        template: CHATML_TEMPLATE,
      }),
    prompt: 'Once upon a time, there was a little robot',
  },
];
for (const f of TEST_FAMILIES) if (f.shape.vocabSize === 0) f.shape.vocabSize = (f.tokenizer()['tokenizer.ggml.tokens']?.value as string[]).length;

/** Deterministic random weights under Hugging Face names (mulberry32 seeded by name), Q and K in the shape's rope layout. */
export function testWeights(shape: LlamaShape, seed = 7): WeightSource {
  return (spec: WeightSpec) => {
    const n = spec.dims.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    let state = (hash(spec.name) ^ seed) >>> 0;
    const rand = () => {
      state = (state + 0x6d2b79f5) >>> 0;
      let t = state;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
    };
    const isNorm = /norm\.weight$/.test(spec.name);
    const isBias = /\.bias$/.test(spec.name);
    const classifier = spec.name === 'lm_head.weight' || (shape.sharedClassifier && spec.name === 'model.embed_tokens.weight');
    const fanIn = spec.dims[spec.dims.length - 1] as number;
    // Unit-gain projections; a classifier whose logits spread ~6 nats; norms near 1; small biases.
    const scale = isNorm ? 0.2 : isBias ? 0.3 : classifier ? (shape.sharedClassifier ? 4 : 10) / Math.sqrt(fanIn) : spec.name === 'model.embed_tokens.weight' ? 1 : 1.7 / Math.sqrt(fanIn);
    for (let i = 0; i < n; i++) out[i] = (isNorm ? 1 : 0) + rand() * scale;
    return out;
  };
}

function hash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export function writeTestGguf(path: string, family: TestFamily, type: GgufWeightType, architecture: string = family.architecture): void {
  writeLlamaGguf(path, {
    architecture: architecture as GgufArchitecture,
    name: `test-${family.name}`,
    shape: family.shape,
    weights: testWeights(family.shape),
    tokenizer: family.tokenizer(),
    type,
  });
}

/**
 * A Q4_K_M-like file (Q4_K projections and embeddings, Q6_K for V, down and the classifier) or
 * one all in Q5_K: random K-quant blocks with scales that give unit-gain layers, in a shape
 * whose rows are whole 256-value super-blocks.
 */
export const KQUANT_FAMILY: TestFamily = {
  name: 'llama2',
  architecture: 'llama',
  shape: { dim: 256, hiddenDim: 512, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 32000, maxSeqLen: 256, normEps: 1e-5, ropeTheta: 10000, sharedClassifier: false },
  tokenizer: llamaSpm,
  prompt: 'Once upon a time, there was a little robot',
};

function randomKBlocks(type: 'q4_K' | 'q5_K' | 'q6_K', rows: number, cols: number, gain: number, seed: number): Uint8Array {
  const size = { q4_K: 144, q5_K: 176, q6_K: 210 }[type];
  const n = (rows * cols) / 256;
  const out = new Uint8Array(n * size);
  let state = seed >>> 0;
  for (let i = 0; i < out.length; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = state >>> 24;
  }
  const dv = new DataView(out.buffer);
  const s = gain / Math.sqrt(cols);
  for (let b = 0; b < n; b++) {
    const at = b * size;
    if (type === 'q6_K') {
      dv.setUint16(at + 208, floatToHalf((4 * s) / (127 * 32)), true);
    } else {
      // Values d·sc·q − dmin·m, centred near zero.
      const qmax = type === 'q4_K' ? 15 : 31;
      dv.setUint16(at, floatToHalf((4 * s) / (63 * qmax)), true);
      dv.setUint16(at + 2, floatToHalf((2 * s) / 63), true);
    }
  }
  return out;
}

/**
 * `q4_0_Q6_K` is a Q4_0 file as llama-quantize writes one by default: Q4_0 projections and
 * embeddings, a Q6_K classifier.
 */
export function writeKQuantGguf(path: string, kind: 'q4_K_M' | 'q5_K' | 'q4_0_Q6_K'): void {
  const s = KQUANT_FAMILY.shape;
  const raw: Record<string, { type: GGMLQuantizationType; data: () => Uint8Array }> = {};
  let seed = 11;
  for (const spec of weightSpecs(s)) {
    if (spec.dims.length !== 2) continue;
    if (kind === 'q4_0_Q6_K' && spec.name !== 'lm_head.weight') continue;
    const heavy = /v_proj|down_proj|lm_head/.test(spec.name);
    const type = kind === 'q5_K' ? 'q5_K' : heavy ? 'q6_K' : 'q4_K';
    const gain = spec.name === 'lm_head.weight' ? 10 : spec.name === 'model.embed_tokens.weight' ? Math.sqrt(spec.dims[1] as number) : 1.7;
    const [rows, cols] = spec.dims as [number, number];
    const mySeed = seed++;
    raw[spec.name] = { type: { q4_K: GGMLQuantizationType.Q4_K, q5_K: GGMLQuantizationType.Q5_K, q6_K: GGMLQuantizationType.Q6_K }[type], data: () => randomKBlocks(type, rows, cols, gain, mySeed) };
  }
  writeLlamaGguf(path, { architecture: 'llama', name: `test-${kind}`, shape: s, weights: testWeights(s), tokenizer: KQUANT_FAMILY.tokenizer(), type: kind === 'q4_0_Q6_K' ? 'q4_0' : 'f32', raw });
}
