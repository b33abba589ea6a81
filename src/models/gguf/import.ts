import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { gguf, GGMLQuantizationType } from '@huggingface/gguf';
import { CheckpointFormatError, UnsupportedModelError } from '../../errors.js';
import { checkShape, headDim, weightSpecs, type LlamaShape, type WeightSpec } from '../llama/shape.js';
import type { WeightSource } from '../llama/weights.js';
import { capContext, writeModelDir, type Architecture, type Flavour, type ModelConfig } from '../modeldir.js';
import { CLASSIFIER, EMBEDDING } from '../llama/weight-store.js';
import { bf16ToFloat, halfToFloat, quantize as quantizeBlocks, type BlockFormat, type BlockTensor } from '../quant/ggml.js';
import { BLOCK_SIZE, type QuantizeOptions } from '../quant/formats.js';
import { dequantizeK, K_BLOCK_BYTES, QK_K, type KQuant } from '../quant/kquants.js';
import { ggufName } from './names.js';
import { ggufTokenizer, type GgufMetadata } from './tokenizer.js';

/**
 * GGUF architectures the graph writer covers. llama.cpp writes Mistral and Mixtral-free
 * Mistral-family checkpoints as `llama`; a file that says `mistral` is read the same way.
 */
const ARCHITECTURES: Record<string, { as: Architecture; rope: 'interleaved' | 'half' }> = {
  llama: { as: 'llama', rope: 'interleaved' },
  mistral: { as: 'mistral', rope: 'interleaved' },
  qwen2: { as: 'qwen2', rope: 'half' },
};

/** Weight types read as they are (block formats) or widened exactly to float32. */
const READABLE = new Set<GGMLQuantizationType>([GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16, GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0]);
/** K-quants: no ONNX Runtime kernel takes them, so they are dequantized and stored as q8 (or what --quantize says). */
const K_QUANTS = new Map<GGMLQuantizationType, KQuant>([
  [GGMLQuantizationType.Q4_K, 'q4_K'],
  [GGMLQuantizationType.Q5_K, 'q5_K'],
  [GGMLQuantizationType.Q6_K, 'q6_K'],
]);

interface TensorInfo {
  name: string;
  ne: number[];
  type: GGMLQuantizationType;
  /** Absolute file offset. */
  offset: number;
}

export interface GgufFile {
  path: string;
  metadata: GgufMetadata;
  tensors: Map<string, TensorInfo>;
  architecture: Architecture;
  shape: LlamaShape;
}

/** Parses a GGUF's header (metadata and tensor table) and derives the model's shape; reads no weights. */
export async function readGguf(path: string): Promise<GgufFile> {
  let parsed: Awaited<ReturnType<typeof gguf>>;
  try {
    parsed = await gguf(resolve(path), { allowLocalFile: true });
  } catch (e) {
    throw new CheckpointFormatError(`${path} is not a readable GGUF file: ${(e as Error).message}`);
  }
  const md = parsed.metadata as unknown as GgufMetadata;
  const tensors = new Map<string, TensorInfo>();
  for (const t of parsed.tensorInfos) {
    tensors.set(t.name, { name: t.name, ne: t.shape.map(Number), type: t.dtype, offset: Number(parsed.tensorDataOffset + t.offset) });
  }
  const archName = String(md['general.architecture'] ?? '');
  const arch = ARCHITECTURES[archName];
  if (arch === undefined) {
    throw new UnsupportedModelError(`GGUF architecture "${archName}" is not supported (supported: ${Object.keys(ARCHITECTURES).join(', ')})`);
  }
  const num = (key: string, fallback?: number): number => {
    const v = md[`${archName}.${key}`];
    if (typeof v === 'number') return v;
    if (typeof v === 'bigint') return Number(v);
    if (Array.isArray(v)) throw new UnsupportedModelError(`${archName}.${key} varies by layer; marginal needs one value for all layers`);
    if (fallback !== undefined) return fallback;
    throw new CheckpointFormatError(`GGUF metadata ${archName}.${key} is missing`);
  };
  const tokens = md['tokenizer.ggml.tokens'];
  const embed = tensors.get('token_embd.weight');
  if (embed === undefined) throw new CheckpointFormatError(`${path} has no token_embd.weight`);
  const nHeads = num('attention.head_count');
  const dim = num('embedding_length');
  const hd = num('attention.key_length', dim / nHeads);
  if (num('attention.value_length', hd) !== hd) throw new UnsupportedModelError('attention.value_length differs from key_length');
  if (num('rope.dimension_count', hd) !== hd) throw new UnsupportedModelError(`partial rotary embeddings (rope.dimension_count ${num('rope.dimension_count')} of head size ${hd})`);
  const shape: LlamaShape = {
    dim,
    hiddenDim: num('feed_forward_length'),
    nLayers: num('block_count'),
    nHeads,
    nKvHeads: num('attention.head_count_kv', nHeads),
    vocabSize: embed.ne[1] ?? (Array.isArray(tokens) ? tokens.length : 0),
    maxSeqLen: num('context_length'),
    normEps: num('attention.layer_norm_rms_epsilon'),
    ropeTheta: num('rope.freq_base', 10000),
    sharedClassifier: !tensors.has('output.weight'),
    rope: arch.rope,
  };
  if (hd !== dim / nHeads) shape.headDim = hd;
  if (tensors.has('blk.0.attn_q.bias')) shape.qkvBias = true;
  const scaling = md[`${archName}.rope.scaling.type`];
  const freqs = tensors.get('rope_freqs.weight');
  if (freqs !== undefined) {
    shape.ropeFreqFactors = Array.from(readFloats(path, freqs));
  } else if (scaling === 'linear') {
    shape.ropeFreqFactors = new Array<number>(hd / 2).fill(num('rope.scaling.factor'));
  } else if (scaling !== undefined && scaling !== 'none') {
    throw new UnsupportedModelError(`rope scaling "${String(scaling)}" (supported: none, linear, and Llama 3's rope_freqs)`);
  }
  const problem = checkShape(shape);
  if (problem !== undefined) throw new CheckpointFormatError(`${path}: ${problem}`);
  return { path, metadata: md, tensors, architecture: arch.as, shape };
}

function readBytes(path: string, t: TensorInfo, length: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const b = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, b, done, length - done, t.offset + done);
      if (n === 0) throw new CheckpointFormatError(`${path} ends inside tensor ${t.name}`);
      done += n;
    }
    return b;
  } finally {
    closeSync(fd);
  }
}

function readFloats(path: string, t: TensorInfo): Float32Array {
  if (t.type !== GGMLQuantizationType.F32) throw new CheckpointFormatError(`${t.name} should be F32`);
  const b = readBytes(path, t, t.ne.reduce((a, c) => a * c, 1) * 4);
  return new Float32Array(b.buffer);
}

/**
 * The file's tensors under Hugging Face names: F32 as is, F16/BF16 widened exactly, Q8_0/Q4_0 as
 * ggml blocks. K-quants are dequantized; where `quantize` leaves a tensor's format open they come
 * back as q8 blocks, so that a file's other tensors keep their own format (llama.cpp's Q4_0 files
 * hold a Q6_K classifier: it becomes q8, the Q4_0 projections stay q4). Where it names a format,
 * float32, quantized once by the store.
 */
export function ggufWeights(f: GgufFile, quantize: QuantizeOptions = {}): WeightSource {
  const target = (name: string) => (name === EMBEDDING ? quantize.embeddings : name === CLASSIFIER ? quantize.classifier : undefined) ?? quantize.weights;
  return (spec: WeightSpec) => {
    const name = ggufName(spec.name);
    const t = f.tensors.get(name);
    if (t === undefined) throw new CheckpointFormatError(`${f.path} has no tensor ${name}`);
    const rows = spec.dims[0] as number;
    const cols = spec.dims.length === 2 ? (spec.dims[1] as number) : 1;
    const expected = spec.dims.length === 2 ? [cols, rows] : [rows];
    if (t.ne.length !== expected.length || t.ne.some((d, i) => d !== expected[i])) {
      throw new CheckpointFormatError(`tensor ${name} is [${t.ne.join(', ')}], the metadata implies [${expected.join(', ')}]`);
    }
    const n = rows * cols;
    switch (t.type) {
      case GGMLQuantizationType.F32:
        return new Float32Array(readBytes(f.path, t, n * 4).buffer);
      case GGMLQuantizationType.F16:
      case GGMLQuantizationType.BF16: {
        const h = new Uint16Array(readBytes(f.path, t, n * 2).buffer);
        const out = new Float32Array(n);
        const widen = t.type === GGMLQuantizationType.F16 ? halfToFloat : bf16ToFloat;
        for (let i = 0; i < n; i++) out[i] = widen(h[i] as number);
        return out;
      }
      case GGMLQuantizationType.Q4_K:
      case GGMLQuantizationType.Q5_K:
      case GGMLQuantizationType.Q6_K: {
        const k = K_QUANTS.get(t.type) as KQuant;
        const values = dequantizeK(k, readBytes(f.path, t, (n / QK_K) * K_BLOCK_BYTES[k]), n);
        return spec.dims.length === 2 && target(spec.name) === undefined ? quantizeBlocks('q8_0', values, rows, cols, quantize.blockSize ?? BLOCK_SIZE) : values;
      }
      case GGMLQuantizationType.Q8_0:
      case GGMLQuantizationType.Q4_0: {
        const format: BlockFormat = t.type === GGMLQuantizationType.Q8_0 ? 'q8_0' : 'q4_0';
        const size = format === 'q8_0' ? 34 : 18;
        const blocks: BlockTensor = { format, rows, cols, blocks: readBytes(f.path, t, (n / 32) * size) };
        return blocks;
      }
      default:
        throw new UnsupportedModelError(unreadable(name, t.type));
    }
  };
}

function unreadable(name: string, type: GGMLQuantizationType): string {
  return `tensor ${name} is ${GGMLQuantizationType[type] ?? `type ${type}`}; marginal reads F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K GGUF files (llama.cpp's llama-quantize --allow-requantize can rewrite this one as Q8_0 or Q4_0)`;
}

export interface GgufImportOptions {
  flavours?: Flavour[];
  quantize?: QuantizeOptions;
  maxContext?: number;
  log?: (line: string) => void;
  onProgress?: (done: number, total: number) => void;
  name?: string;
}

/** `marginal import gguf FILE.gguf --out DIR`: the shape, weights, tokenizer and chat template of a GGUF. */
export async function importGguf(path: string, out: string, o: GgufImportOptions = {}): Promise<ModelConfig> {
  const f = await readGguf(path);
  // Every tensor's type is checked before anything is written, so an unsupported file fails at once.
  const kquants = new Map<string, number>();
  let holdsBlocks = false;
  for (const spec of weightSpecs(f.shape)) {
    const t = f.tensors.get(ggufName(spec.name));
    if (t === undefined) continue;
    const k = K_QUANTS.get(t.type);
    if (k !== undefined) kquants.set(k.toUpperCase(), (kquants.get(k.toUpperCase()) ?? 0) + 1);
    else if (!READABLE.has(t.type)) throw new UnsupportedModelError(unreadable(t.name, t.type));
    if (t.type !== GGMLQuantizationType.F32 && t.type !== GGMLQuantizationType.F16 && t.type !== GGMLQuantizationType.BF16) holdsBlocks = true;
  }
  // A file's Q8_0/Q4_0 blocks are kept exactly as written (ggml's 32 values each), and what
  // is dequantized beside them is stored in blocks of the same size; only a float file lets
  // the store choose its own, larger blocks.
  const quantize: QuantizeOptions | undefined = holdsBlocks && o.quantize?.blockSize === undefined ? { ...o.quantize, blockSize: BLOCK_SIZE } : o.quantize;
  if (kquants.size > 0) {
    const target = quantize?.weights ?? 'q8';
    const list = [...kquants.entries()].map(([k, n]) => `${n} ${k}`).join(', ');
    o.log?.(`marginal: ${list} tensor(s) dequantized and stored as ${target} (ONNX Runtime has no K-quant kernel; --quantize q4 for less memory)`);
  }
  const widened = weightSpecs(f.shape).filter((s) => {
    const t = f.tensors.get(ggufName(s.name));
    return s.dims.length === 2 && (t?.type === GGMLQuantizationType.F16 || t?.type === GGMLQuantizationType.BF16);
  });
  if (widened.length > 0) o.log?.(`marginal: ${widened.length} F16/BF16 matrices widened to float32 (exact; ONNX Runtime's CPU kernels have no fast half-precision path)`);
  const tokenizer = ggufTokenizer(f.metadata, f.shape.vocabSize);
  capContext(f.shape, o.maxContext, o.log);
  const name = o.name ?? (typeof f.metadata['general.name'] === 'string' && f.metadata['general.name'] !== '' ? (f.metadata['general.name'] as string) : basename(path).replace(/\.gguf$/i, ''));
  const size = statSync(path).size;
  return writeModelDir({
    dir: out,
    name,
    shape: f.shape,
    weights: ggufWeights(f, quantize),
    tokenizer,
    synthetic: false,
    description: `GGUF ${f.architecture} ${basename(path)} (${(size / 2 ** 20).toFixed(0)} MiB, ${headDim(f.shape)}-wide heads, ${f.shape.nHeads}/${f.shape.nKvHeads} heads)`,
    architecture: f.architecture,
    source: resolve(path),
    ...(o.flavours ? { flavours: o.flavours } : {}),
    ...(quantize ? { quantize } : {}),
    ...(o.log ? { log: o.log } : {}),
    ...(o.onProgress ? { onProgress: o.onProgress } : {}),
  });
}
