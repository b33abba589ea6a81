import onnxProto from 'onnx-proto';
import { ModelFormatError } from '../../errors.js';
import { DType, ExternalDataWriter, tensorBytes } from '../onnx/builder.js';
import { blocksPerRow, dequantize, quantize, toNBits, type BlockFormat, type BlockTensor } from '../quant/ggml.js';
import { ACCURACY_LEVEL, BLOCK_SIZE, defaultBlockSize, quantizationLabel, type QuantizationRecord, type QuantizeOptions, type WeightFormat } from '../quant/formats.js';
import { classifierName, weightSpecs, type LlamaShape, type WeightSpec } from './shape.js';
import type { WeightSource } from './weights.js';

type ITensorProto = onnxProto.onnx.ITensorProto;

/** A projection as the graph multiplies by it: a float32 [N, K] initializer, or MatMulNBits operands. */
export type LinearWeight =
  | { kind: 'float'; name: string }
  | { kind: 'nbits'; bits: 4 | 8; blockSize: number; K: number; N: number; codes: string; scales: string };

/** The token embedding as the graph gathers from it: float32 rows, or GatherBlockQuantized operands. */
export type EmbeddingWeight = { kind: 'float'; name: string } | { kind: 'nbits'; bits: 4 | 8; blockSize: number; codes: string; scales: string };

/** What the graph writers need to know about the stored weights. */
export interface GraphWeights {
  initializers: ITensorProto[];
  /** By Hugging Face weight name; the classifier is always under lm_head.weight, tied or not. */
  linear: Map<string, LinearWeight>;
  /** Float32 vectors (norms, biases) by name. */
  vectors: Set<string>;
  embedding: EmbeddingWeight;
  /** Whether any node needs the com.microsoft domain for its weights. */
  quantized: boolean;
}

export const CLASSIFIER = 'lm_head.weight';
export const EMBEDDING = 'model.embed_tokens.weight';

/**
 * Projections that read the same input are stored as one matrix, their rows stacked, so a
 * layer runs one MatMulNBits (or Gemm) for Q, K and V and one for gate and up, and the graph
 * splits the result: fewer kernel calls per token, one activation quantization instead of
 * three, wider matrices for the kernels. Only when the parts share a format.
 */
export const FUSED: readonly { fused: string; parts: readonly string[] }[] = [
  { fused: 'self_attn.qkv_proj', parts: ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'] },
  { fused: 'mlp.gate_up_proj', parts: ['mlp.gate_proj', 'mlp.up_proj'] },
];

/** Where `name` (model.layers.L.PART.weight|bias) sits in a fused group, if it is part of one. */
export function fusedGroup(name: string): { layer: number; group: (typeof FUSED)[number]; index: number; kind: 'weight' | 'bias' } | undefined {
  const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(name);
  if (!m) return undefined;
  for (const group of FUSED) {
    const index = group.parts.indexOf(m[2] as string);
    if (index >= 0) return { layer: Number(m[1]), group, index, kind: m[3] as 'weight' | 'bias' };
  }
  return undefined;
}

/** Stacks the rows of matrices of one representation (all float32, or all blocks of one format). */
function stackRows(parts: (Float32Array | BlockTensor)[]): Float32Array | BlockTensor {
  const first = parts[0] as Float32Array | BlockTensor;
  if (first instanceof Float32Array) {
    const out = new Float32Array(parts.reduce((n, p) => n + (p as Float32Array).length, 0));
    let at = 0;
    for (const p of parts as Float32Array[]) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
  const blocks = parts as BlockTensor[];
  const bytes = new Uint8Array(blocks.reduce((n, p) => n + p.blocks.length, 0));
  let at = 0;
  for (const p of blocks) {
    bytes.set(p.blocks, at);
    at += p.blocks.length;
  }
  return { ...first, rows: blocks.reduce((n, p) => n + p.rows, 0), blocks: bytes };
}

type Stored = { kind: 'float'; proto: ITensorProto } | { kind: 'nbits'; bits: 4 | 8; blockSize: number; rows: number; cols: number; codes: ITensorProto; scales: ITensorProto };

/**
 * Writes every weight of `shape` from `source` into the external-data file in the format the
 * options ask for, and says how the graphs must use each one. One tensor at a time, so a model
 * larger than memory in float32 can still be quantized.
 */
export function storeWeights(
  data: ExternalDataWriter,
  shape: LlamaShape,
  source: WeightSource,
  opts: QuantizeOptions = {},
  log?: (line: string) => void,
  onProgress?: (done: number, total: number) => void,
): { weights: GraphWeights; record: QuantizationRecord } {
  const initializers: ITensorProto[] = [];
  const linear = new Map<string, LinearWeight>();
  const vectors = new Set<string>();
  let embedding: EmbeddingWeight | undefined;
  const linearFormats = new Map<WeightFormat, number>();
  let classifierFormat: WeightFormat = 'fp32';
  let embeddingFormat: WeightFormat = 'fp32';
  const requantized: string[] = [];
  const bs = opts.blockSize ?? ownBlockSize(shape, opts);

  /** `value` in the representation of `format`: float32 values, or blocks of its block format. */
  const represent = (name: string, value: Float32Array | BlockTensor, rows: number, cols: number, format: WeightFormat): Float32Array | BlockTensor => {
    if (format === 'fp32') return value instanceof Float32Array ? value : dequantize(value);
    const want: BlockFormat = format === 'q8' ? 'q8_0' : 'q4_0';
    if (value instanceof Float32Array) return quantize(want, value, rows, cols, bs);
    if (value.format === want && (value.blockSize ?? BLOCK_SIZE) === bs) return value;
    requantized.push(name);
    return quantize(want, dequantize(value), rows, cols, bs);
  };
  const put = (name: string, value: Float32Array | BlockTensor, rows: number, cols: number, format: WeightFormat): Stored => {
    const v = represent(name, value, rows, cols, format);
    if (v instanceof Float32Array) {
      const proto = data.add(name, [rows, cols], DType.float, tensorBytes(v));
      initializers.push(proto);
      return { kind: 'float', proto };
    }
    const blocks = v;
    const nb = toNBits(blocks);
    const perRow = blocksPerRow(cols, bs);
    const codes = data.add(`${name}.q${nb.bits}`, [rows, perRow, (bs * nb.bits) / 8], DType.uint8, nb.codes);
    const scales = data.add(`${name}.scales`, [rows * perRow], DType.float, tensorBytes(nb.scales));
    initializers.push(codes, scales);
    return { kind: 'nbits', bits: nb.bits, blockSize: bs, rows, cols, codes, scales };
  };
  const asLinear = (s: Stored): LinearWeight =>
    s.kind === 'float'
      ? { kind: 'float', name: s.proto.name as string }
      : { kind: 'nbits', bits: s.bits, blockSize: s.blockSize, K: s.cols, N: s.rows, codes: s.codes.name as string, scales: s.scales.name as string };
  const asEmbedding = (s: Stored): EmbeddingWeight => {
    if (s.kind === 'float') return { kind: 'float', name: s.proto.name as string };
    // GatherBlockQuantized reads the same bytes as [rows, cols·bits/8] with [rows, blocks] scales.
    const perRow = blocksPerRow(s.cols, s.blockSize);
    const codes = ExternalDataWriter.view(s.codes, `${s.codes.name as string}.rows`, [s.rows, (perRow * s.blockSize * s.bits) / 8]);
    const scales = ExternalDataWriter.view(s.scales, `${s.scales.name as string}.rows`, [s.rows, perRow]);
    initializers.push(codes, scales);
    return { kind: 'nbits', bits: s.bits, blockSize: s.blockSize, codes: codes.name as string, scales: scales.name as string };
  };
  const sourceFormat = (v: Float32Array | BlockTensor): WeightFormat => (v instanceof Float32Array ? 'fp32' : v.format === 'q8_0' ? 'q8' : 'q4');

  // Parts of fused groups wait here until their group is complete.
  const pending = new Map<string, { values: (Float32Array | BlockTensor | undefined)[]; formats: WeightFormat[]; rows: number[]; cols: number }>();
  const fusedLayers = new Set<string>();
  const storeVector = (name: string, f: Float32Array) => {
    initializers.push(data.add(name, [f.length], DType.float, tensorBytes(f)));
    vectors.add(name);
  };

  const specs = weightSpecs(shape);
  let done = 0;
  for (const spec of specs) {
    onProgress?.(done++, specs.length);
    const value = source(spec);
    checkSize(spec, value);
    const member = fusedGroup(spec.name);
    if (member !== undefined) {
      const key = `${member.layer}:${member.group.fused}:${member.kind}`;
      const base = `model.layers.${member.layer}.`;
      let p = pending.get(key);
      if (p === undefined) {
        p = { values: new Array(member.group.parts.length).fill(undefined), formats: [], rows: [], cols: spec.dims[1] ?? 1 };
        pending.set(key, p);
      }
      const rows = spec.dims[0] as number;
      if (member.kind === 'bias') {
        p.values[member.index] = value instanceof Float32Array ? value : dequantize(value);
      } else {
        const format = opts.weights ?? sourceFormat(value);
        linearFormats.set(format, (linearFormats.get(format) ?? 0) + 1);
        p.formats[member.index] = format;
        p.values[member.index] = represent(spec.name, value, rows, p.cols, format);
      }
      p.rows[member.index] = rows;
      if (p.values.some((v) => v === undefined)) continue;
      pending.delete(key);
      const parts = p.values as (Float32Array | BlockTensor)[];
      const names = member.group.parts.map((part) => `${base}${part}.${member.kind}`);
      const fusedName = `${base}${member.group.fused}.${member.kind}`;
      if (member.kind === 'bias') {
        if (fusedLayers.has(`${member.layer}:${member.group.fused}`)) storeVector(fusedName, stackRows(parts) as Float32Array);
        else parts.forEach((v, i) => storeVector(names[i] as string, v as Float32Array));
      } else if (p.formats.every((f) => f === p.formats[0])) {
        fusedLayers.add(`${member.layer}:${member.group.fused}`);
        const total = p.rows.reduce((a, b) => a + b, 0);
        linear.set(fusedName, asLinear(put(fusedName, stackRows(parts), total, p.cols, p.formats[0] as WeightFormat)));
      } else {
        parts.forEach((v, i) => linear.set(names[i] as string, asLinear(put(names[i] as string, v, p.rows[i] as number, p.cols, p.formats[i] as WeightFormat))));
      }
      continue;
    }
    if (spec.dims.length === 1) {
      const f = value instanceof Float32Array ? value : dequantize(value);
      initializers.push(data.add(spec.name, spec.dims, DType.float, tensorBytes(f)));
      vectors.add(spec.name);
      continue;
    }
    const [rows, cols] = spec.dims as [number, number];
    const from = sourceFormat(value);
    if (spec.name === EMBEDDING) {
      embeddingFormat = opts.embeddings ?? opts.weights ?? from;
      // GatherBlockQuantized wants whole blocks along the row.
      if (embeddingFormat !== 'fp32' && cols % bs !== 0) {
        log?.(`marginal: embeddings stay float32: their width ${cols} is not a multiple of the block size ${bs}`);
        embeddingFormat = 'fp32';
      }
      const stored = put(spec.name, value, rows, cols, embeddingFormat);
      embedding = asEmbedding(stored);
      if (shape.sharedClassifier) {
        classifierFormat = opts.classifier ?? opts.weights ?? from;
        linear.set(CLASSIFIER, classifierFormat === embeddingFormat ? asLinear(stored) : asLinear(put(CLASSIFIER, value, rows, cols, classifierFormat)));
      }
    } else if (spec.name === CLASSIFIER) {
      classifierFormat = opts.classifier ?? opts.weights ?? from;
      linear.set(CLASSIFIER, asLinear(put(spec.name, value, rows, cols, classifierFormat)));
    } else {
      const format = opts.weights ?? from;
      linearFormats.set(format, (linearFormats.get(format) ?? 0) + 1);
      linear.set(spec.name, asLinear(put(spec.name, value, rows, cols, format)));
    }
  }
  onProgress?.(specs.length, specs.length);
  if (embedding === undefined || !linear.has(CLASSIFIER)) throw new ModelFormatError(`weights lack ${EMBEDDING} or ${classifierName(shape)}`);
  if (requantized.length > 0) log?.(`marginal: requantized ${requantized.length} tensor(s) from one block format to the other (${requantized.slice(0, 3).join(', ')}${requantized.length > 3 ? ', …' : ''})`);
  const ranked = [...linearFormats.entries()].sort((a, b) => b[1] - a[1]);
  const linearFormat: WeightFormat = ranked[0]?.[0] ?? 'fp32';
  const exceptions: Partial<Record<WeightFormat, number>> = Object.fromEntries(ranked.slice(1));
  const quantized = [...linear.values()].some((w) => w.kind === 'nbits') || embedding.kind === 'nbits';
  return {
    weights: { initializers, linear, vectors, embedding, quantized },
    record: {
      label: quantizationLabel(linearFormat, classifierFormat, embeddingFormat, exceptions, bs),
      linear: linearFormat,
      ...(ranked.length > 1 ? { linearExceptions: exceptions } : {}),
      classifier: classifierFormat,
      embeddings: embeddingFormat,
      blockSize: bs,
      accuracyLevel: ACCURACY_LEVEL,
    },
  };
}

/**
 * The block size when the options name none: defaultBlockSize over every matrix's width for
 * the formats asked for (q4's cap where q4 is among them), or ggml's 32 when nothing is
 * quantized here. Callers whose source holds ggml blocks (GGUF import) pass 32 explicitly.
 */
export function ownBlockSize(shape: LlamaShape, opts: QuantizeOptions): number {
  const asked = [opts.weights, opts.classifier, opts.embeddings].filter((f): f is 'q8' | 'q4' => f === 'q8' || f === 'q4');
  if (asked.length === 0) return BLOCK_SIZE;
  const widths = weightSpecs(shape)
    .filter((s) => s.dims.length === 2)
    .map((s) => s.dims[1] as number);
  return defaultBlockSize(asked.includes('q4') ? 'q4' : 'q8', widths);
}

function checkSize(spec: WeightSpec, value: Float32Array | BlockTensor): void {
  const expected = spec.dims.reduce((a, b) => a * b, 1);
  if (value instanceof Float32Array) {
    if (value.length !== expected) throw new ModelFormatError(`weight ${spec.name} has ${value.length} values, expected ${expected}`);
    return;
  }
  const [rows, cols] = spec.dims.length === 1 ? [1, spec.dims[0] as number] : (spec.dims as [number, number]);
  if (value.rows !== rows || value.cols !== cols) throw new ModelFormatError(`weight ${spec.name} is ${value.rows}×${value.cols}, expected ${spec.dims.join('×')}`);
}
