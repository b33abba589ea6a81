import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { GGMLQuantizationType } from '@huggingface/gguf';
import onnxProto from 'onnx-proto';
import { InvalidArgumentError, ModelFormatError } from '../../errors.js';
import { headDim, weightSpecs, type LlamaShape } from '../llama/shape.js';
import { fusedGroup } from '../llama/weight-store.js';
import type { WeightSource } from '../llama/weights.js';
import { CONFIG_FILE, type ModelConfig } from '../modeldir.js';
import { QK, blockBytes, blocksPerRow, dequantize, floatToHalf, quantize, type BlockFormat, type BlockTensor } from '../quant/ggml.js';
import { Llama2cTokenizer } from '../tokenizer/llama2c.js';
import { ggufName, isRopeRows, permuteRows, ropeRowOrder } from './names.js';
import { kv, writeGguf, type GgufEntry, type GgufTensor } from './writer.js';

const { onnx } = onnxProto;

export type GgufWeightType = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4_0';
export const GGUF_WEIGHT_TYPES: readonly GgufWeightType[] = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0'];
export type GgufArchitecture = 'llama' | 'qwen2' | 'mistral';

const GGML_TYPE: Record<GgufWeightType, GGMLQuantizationType> = {
  f32: GGMLQuantizationType.F32,
  f16: GGMLQuantizationType.F16,
  bf16: GGMLQuantizationType.BF16,
  q8_0: GGMLQuantizationType.Q8_0,
  q4_0: GGMLQuantizationType.Q4_0,
};
/** llama_ftype: what general.file_type says the file mostly is. */
const FILE_TYPE: Record<GgufWeightType, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 7, bf16: 32 };

export interface GgufModel {
  architecture: GgufArchitecture;
  name: string;
  shape: LlamaShape;
  /** Weights under Hugging Face names, Q and K rows in `shape.rope`'s layout. */
  weights: WeightSource;
  /** The tokenizer.* metadata (see llama2cTokenizerMetadata). */
  tokenizer: Record<string, GgufEntry>;
  /** Type of the weight matrices; norms, biases and rope factors are always F32. */
  type: GgufWeightType;
  /** Per-tensor exceptions by Hugging Face name (e.g. a classifier kept at higher precision). */
  types?: Record<string, GgufWeightType>;
  /** Tensors written as given, in a type this writer does not encode (tests write K-quant blocks). */
  raw?: Record<string, { type: GGMLQuantizationType; data: () => Uint8Array }>;
  log?: (line: string) => void;
}

/**
 * Writes a Llama-family model as llama.cpp reads it: its tensor names, its metadata keys, Q and
 * K in the rope layout its architecture implies (llama and mistral rotate interleaved pairs,
 * qwen2 rotates halves), matrices in the requested type. A matrix whose rows are not whole
 * 32-value blocks cannot be Q8_0/Q4_0 and stays F32, with a line saying so.
 */
export function writeLlamaGguf(path: string, m: GgufModel): void {
  const s = m.shape;
  const arch = m.architecture;
  const hd = headDim(s);
  const wantInterleaved = arch !== 'qwen2';
  const haveInterleaved = (s.rope ?? 'interleaved') === 'interleaved';
  const fallbacks: string[] = [];
  const tensors: GgufTensor[] = [];
  for (const spec of weightSpecs(s)) {
    const name = ggufName(spec.name);
    const rows = spec.dims[0] as number;
    const cols = spec.dims.length === 2 ? (spec.dims[1] as number) : 1;
    const ne = spec.dims.length === 2 ? [cols, rows] : [rows];
    let type: GgufWeightType = spec.dims.length === 1 ? 'f32' : (m.types?.[spec.name] ?? m.type);
    if ((type === 'q8_0' || type === 'q4_0') && cols % QK !== 0) {
      fallbacks.push(name);
      type = 'f32';
    }
    const t = type;
    const raw = m.raw?.[spec.name];
    if (raw !== undefined) {
      tensors.push({ name, ne, type: raw.type, data: raw.data });
      continue;
    }
    tensors.push({
      name,
      ne,
      type: GGML_TYPE[t],
      data: () => {
        let v = m.weights(spec);
        if (isRopeRows(spec.name) && wantInterleaved !== haveInterleaved) v = permuteRows(v, ropeRowOrder(rows, hd, wantInterleaved));
        return encode(v, t, rows, cols);
      },
    });
  }
  if (s.ropeFreqFactors !== undefined) {
    const f = Float32Array.from(s.ropeFreqFactors);
    tensors.push({ name: 'rope_freqs.weight', ne: [f.length], type: GGMLQuantizationType.F32, data: () => new Uint8Array(f.buffer) });
  }
  if (fallbacks.length > 0) m.log?.(`marginal: ${fallbacks.length} tensor(s) stay F32 in the GGUF: their rows are not whole blocks of ${QK} (${fallbacks.slice(0, 3).join(', ')}${fallbacks.length > 3 ? ', …' : ''})`);

  const a = (k: string) => `${arch}.${k}`;
  const metadata: Record<string, GgufEntry> = {
    'general.architecture': kv.str(arch),
    'general.name': kv.str(m.name),
    'general.file_type': kv.u32(FILE_TYPE[m.type]),
    'general.quantization_version': kv.u32(2),
    [a('context_length')]: kv.u32(s.maxSeqLen),
    [a('embedding_length')]: kv.u32(s.dim),
    [a('block_count')]: kv.u32(s.nLayers),
    [a('feed_forward_length')]: kv.u32(s.hiddenDim),
    [a('rope.dimension_count')]: kv.u32(hd),
    [a('attention.head_count')]: kv.u32(s.nHeads),
    [a('attention.head_count_kv')]: kv.u32(s.nKvHeads),
    [a('attention.layer_norm_rms_epsilon')]: kv.f32(s.normEps),
    [a('rope.freq_base')]: kv.f32(s.ropeTheta),
    [a('vocab_size')]: kv.u32(s.vocabSize),
    ...m.tokenizer,
  };
  if (s.headDim !== undefined) {
    metadata[a('attention.key_length')] = kv.u32(hd);
    metadata[a('attention.value_length')] = kv.u32(hd);
  }
  writeGguf(path, metadata, tensors);
}

/** A weight in GGUF's encoding of `type`. */
function encode(v: Float32Array | BlockTensor, type: GgufWeightType, rows: number, cols: number): Uint8Array {
  if (type === 'q8_0' || type === 'q4_0') {
    const fmt: BlockFormat = type;
    const t = v instanceof Float32Array ? quantize(fmt, v, rows, cols) : v.format === fmt && (v.blockSize ?? QK) === QK ? v : quantize(fmt, dequantize(v), rows, cols);
    return t.blocks;
  }
  const f = v instanceof Float32Array ? v : dequantize(v);
  if (type === 'f32') return new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
  const out = new Uint16Array(f.length);
  if (type === 'f16') {
    for (let i = 0; i < f.length; i++) out[i] = floatToHalf(f[i] as number);
  } else {
    const u = new Uint32Array(f.buffer, f.byteOffset, f.length);
    // bfloat16: the top half of the float32, rounded to nearest even (NaN kept quiet).
    for (let i = 0; i < f.length; i++) {
      const x = u[i] as number;
      out[i] = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    }
  }
  return new Uint8Array(out.buffer);
}

/**
 * llama2.c's tokenizer as GGUF's SentencePiece vocabulary (tokenizer.ggml.model = llama):
 * '▁' for its spaces, <unk>/<s>/</s> for ids 0–2, <0xXX> pieces typed as bytes.
 */
export function llama2cTokenizerMetadata(tok: Llama2cTokenizer, chatTemplate?: string): Record<string, GgufEntry> {
  const tokens: string[] = [];
  const scores: number[] = [];
  const types: number[] = [];
  const names = ['<unk>', '<s>', '</s>'];
  for (let id = 0; id < tok.vocabSize; id++) {
    const special = names[id];
    const piece = special ?? tok.piece(id).replaceAll(' ', '\u2581');
    tokens.push(piece);
    scores.push(tok.score(id));
    // llama_token_type: 1 normal, 2 unknown, 3 control, 6 byte.
    types.push(id === 0 ? 2 : special !== undefined ? 3 : /^<0x[0-9A-F]{2}>$/.test(piece) ? 6 : 1);
  }
  const out: Record<string, GgufEntry> = {
    'tokenizer.ggml.model': kv.str('llama'),
    'tokenizer.ggml.tokens': kv.strs(tokens),
    'tokenizer.ggml.scores': kv.f32s(scores),
    'tokenizer.ggml.token_type': kv.i32s(types),
    'tokenizer.ggml.bos_token_id': kv.u32(1),
    'tokenizer.ggml.eos_token_id': kv.u32(2),
    'tokenizer.ggml.unknown_token_id': kv.u32(0),
    'tokenizer.ggml.add_bos_token': kv.bool(true),
    'tokenizer.ggml.add_eos_token': kv.bool(false),
  };
  if (chatTemplate !== undefined) out['tokenizer.chat_template'] = kv.str(chatTemplate);
  return out;
}

/**
 * Reads a model directory's weights back as stored: float32 tensors as they are, int8/int4
 * ones as the ggml blocks they came from (the MatMulNBits layout holds the same numbers).
 */
export function modelDirWeights(dir: string): { config: ModelConfig; weights: WeightSource; close(): void } {
  const config = JSON.parse(readFileSync(join(dir, CONFIG_FILE), 'utf8')) as ModelConfig;
  const graph = config.graphs.fast ?? config.graphs.hf;
  if (graph === undefined) throw new ModelFormatError(`${dir} lists no graphs`);
  const model = onnx.ModelProto.decode(readFileSync(join(dir, graph)));
  const where = new Map<string, { offset: number; length: number }>();
  let location: string | undefined;
  for (const t of model.graph?.initializer ?? []) {
    const info = new Map((t.externalData ?? []).map((e) => [e.key, e.value]));
    if (!info.has('location')) continue;
    location = info.get('location') ?? undefined;
    where.set(t.name as string, { offset: Number(info.get('offset') ?? 0), length: Number(info.get('length')) });
  }
  if (location === undefined) throw new ModelFormatError(`${graph} keeps no weights in external data`);
  const fd = openSync(join(dir, 'onnx', location), 'r');
  const read = (name: string): Uint8Array | undefined => {
    const w = where.get(name);
    if (w === undefined) return undefined;
    const b = new Uint8Array(w.length);
    readSync(fd, b, 0, w.length, w.offset);
    return b;
  };
  const bs = config.quantization?.blockSize ?? QK;
  const stored = (name: string, rows: number, cols: number): Float32Array | BlockTensor | undefined => {
    const plain = read(name);
    if (plain !== undefined) return new Float32Array(plain.buffer, plain.byteOffset, plain.byteLength / 4);
    for (const bits of [8, 4] as const) {
      const codes = read(`${name}.q${bits}`);
      const scales = read(`${name}.scales`);
      if (codes !== undefined && scales !== undefined) return fromNBits(bits, codes, new Float32Array(scales.buffer, scales.byteOffset, scales.byteLength / 4), rows, cols, bs);
    }
    return undefined;
  };
  const s = config.shape;
  const partRows: Record<string, number> = {
    'self_attn.q_proj': s.nHeads * headDim(s),
    'self_attn.k_proj': s.nKvHeads * headDim(s),
    'self_attn.v_proj': s.nKvHeads * headDim(s),
    'mlp.gate_proj': s.hiddenDim,
    'mlp.up_proj': s.hiddenDim,
  };
  const weights: WeightSource = (spec) => {
    const rows = spec.dims[0] as number;
    const cols = spec.dims.length === 2 ? (spec.dims[1] as number) : 1;
    const direct = stored(spec.name, rows, cols);
    if (direct !== undefined) return direct;
    // A part of a fused matrix: its rows of the stacked one.
    const member = fusedGroup(spec.name);
    if (member !== undefined) {
      const sizes = member.group.parts.map((p) => partRows[p] as number);
      const whole = stored(`model.layers.${member.layer}.${member.group.fused}.${member.kind}`, sizes.reduce((a, b) => a + b, 0), cols);
      if (whole !== undefined) {
        const from = sizes.slice(0, member.index).reduce((a, b) => a + b, 0);
        if (whole instanceof Float32Array) return whole.slice(from * cols, (from + rows) * cols);
        const rowBytes = whole.blocks.length / whole.rows;
        return { ...whole, rows, blocks: whole.blocks.slice(from * rowBytes, (from + rows) * rowBytes) };
      }
    }
    throw new ModelFormatError(`${dir} has no tensor ${spec.name}`);
  };
  return { config, weights, close: () => closeSync(fd) };
}

/** The inverse of toNBits: MatMulNBits codes and scales back to blocks. */
function fromNBits(bits: 4 | 8, codes: Uint8Array, scales: Float32Array, rows: number, cols: number, bs: number): BlockTensor {
  const format: BlockFormat = bits === 8 ? 'q8_0' : 'q4_0';
  const size = blockBytes(format, bs);
  const n = rows * blocksPerRow(cols, bs);
  const blob = (bs * bits) / 8;
  const blocks = new Uint8Array(n * size);
  const dv = new DataView(blocks.buffer);
  for (let k = 0; k < n; k++) {
    const at = k * size;
    dv.setUint16(at, floatToHalf(scales[k] as number), true);
    const o = k * blob;
    if (bits === 8) {
      for (let j = 0; j < bs; j++) blocks[at + 2 + j] = ((codes[o + j] as number) - 128) & 0xff;
    } else {
      const v = new Uint8Array(bs);
      for (let i = 0; i < bs / 2; i++) {
        v[2 * i] = (codes[o + i] as number) & 0x0f;
        v[2 * i + 1] = (codes[o + i] as number) >> 4;
      }
      for (let j = 0; j < bs / 2; j++) blocks[at + 2 + j] = (v[j] as number) | ((v[j + bs / 2] as number) << 4);
    }
  }
  const t: BlockTensor = { format, rows, cols, blocks };
  if (bs !== QK) t.blockSize = bs;
  return t;
}

/**
 * A llama2.c-tokenizer model directory (imported or synthetic) as a GGUF llama.cpp runs: for
 * running llama.cpp on exactly marginal's weights. Stored int8/int4 blocks are copied when the
 * requested type is theirs, so a q8 directory and its Q8_0 GGUF hold the same numbers.
 */
export function exportModelDir(dir: string, out: string, type: GgufWeightType, opts: { types?: Record<string, GgufWeightType>; log?: (line: string) => void } = {}): void {
  if (!GGUF_WEIGHT_TYPES.includes(type)) throw new InvalidArgumentError(`GGUF type must be one of ${GGUF_WEIGHT_TYPES.join(', ')}, got ${type}`);
  const src = modelDirWeights(dir);
  try {
    const c = src.config;
    if (c.tokenizer.type !== 'llama2c') throw new InvalidArgumentError(`${dir} has a Hugging Face tokenizer; GGUF export covers llama2.c-tokenizer models`);
    const tok = Llama2cTokenizer.fromFileSync(join(dir, c.tokenizer.file), c.shape.vocabSize);
    const m: GgufModel = { architecture: c.architecture, name: c.name, shape: c.shape, weights: src.weights, tokenizer: llama2cTokenizerMetadata(tok), type };
    if (opts.types) m.types = opts.types;
    if (opts.log) m.log = opts.log;
    const bs = c.quantization?.blockSize ?? QK;
    if (bs !== QK && Object.values({ type, ...opts.types }).some((t) => t === 'q8_0' || t === 'q4_0')) {
      opts.log?.(`marginal: ${dir} holds blocks of ${bs}; GGUF's Q8_0/Q4_0 hold 32, so its blocks are rounded again (a directory written with --block-size 32 exports exactly)`);
    }
    writeLlamaGguf(out, m);
  } finally {
    src.close();
  }
}
