import onnxProto from 'onnx-proto';
import { ModelFormatError } from '../../errors.js';
import { DType, ExternalDataWriter, tensorBytes } from '../onnx/builder.js';
import { blocksPerRow, dequantize, quantize, toNBits, type BlockFormat, type BlockTensor } from '../quant/ggml.js';
import { ACCURACY_LEVEL, BLOCK_SIZE, quantizationLabel, type QuantizationRecord, type QuantizeOptions, type WeightFormat } from '../quant/formats.js';
import { classifierName, weightSpecs, type LlamaShape, type WeightSpec } from './shape.js';
import type { WeightSource } from './weights.js';

type ITensorProto = onnxProto.onnx.ITensorProto;

/** A projection as the graph multiplies by it: a float32 [N, K] initializer, or MatMulNBits operands. */
export type LinearWeight =
  | { kind: 'float'; name: string }
  | { kind: 'nbits'; bits: 4 | 8; K: number; N: number; codes: string; scales: string };

/** The token embedding as the graph gathers from it: float32 rows, or GatherBlockQuantized operands. */
export type EmbeddingWeight = { kind: 'float'; name: string } | { kind: 'nbits'; bits: 4 | 8; codes: string; scales: string };

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
const EMBEDDING = 'model.embed_tokens.weight';

type Stored = { kind: 'float'; proto: ITensorProto } | { kind: 'nbits'; bits: 4 | 8; rows: number; cols: number; codes: ITensorProto; scales: ITensorProto };

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

  const put = (name: string, value: Float32Array | BlockTensor, rows: number, cols: number, format: WeightFormat): Stored => {
    if (format === 'fp32') {
      const f = value instanceof Float32Array ? value : dequantize(value);
      const proto = data.add(name, [rows, cols], DType.float, tensorBytes(f));
      initializers.push(proto);
      return { kind: 'float', proto };
    }
    const want: BlockFormat = format === 'q8' ? 'q8_0' : 'q4_0';
    let blocks: BlockTensor;
    if (value instanceof Float32Array) {
      blocks = quantize(want, value, rows, cols);
    } else if (value.format === want) {
      blocks = value;
    } else {
      blocks = quantize(want, dequantize(value), rows, cols);
      requantized.push(name);
    }
    const nb = toNBits(blocks);
    const perRow = blocksPerRow(cols);
    const codes = data.add(`${name}.q${nb.bits}`, [rows, perRow, (BLOCK_SIZE * nb.bits) / 8], DType.uint8, nb.codes);
    const scales = data.add(`${name}.scales`, [rows * perRow], DType.float, tensorBytes(nb.scales));
    initializers.push(codes, scales);
    return { kind: 'nbits', bits: nb.bits, rows, cols, codes, scales };
  };
  const asLinear = (s: Stored): LinearWeight =>
    s.kind === 'float'
      ? { kind: 'float', name: s.proto.name as string }
      : { kind: 'nbits', bits: s.bits, K: s.cols, N: s.rows, codes: s.codes.name as string, scales: s.scales.name as string };
  const asEmbedding = (s: Stored): EmbeddingWeight => {
    if (s.kind === 'float') return { kind: 'float', name: s.proto.name as string };
    // GatherBlockQuantized reads the same bytes as [rows, cols·bits/8] with [rows, blocks] scales.
    const perRow = blocksPerRow(s.cols);
    const codes = ExternalDataWriter.view(s.codes, `${s.codes.name as string}.rows`, [s.rows, (perRow * BLOCK_SIZE * s.bits) / 8]);
    const scales = ExternalDataWriter.view(s.scales, `${s.scales.name as string}.rows`, [s.rows, perRow]);
    initializers.push(codes, scales);
    return { kind: 'nbits', bits: s.bits, codes: codes.name as string, scales: scales.name as string };
  };
  const sourceFormat = (v: Float32Array | BlockTensor): WeightFormat => (v instanceof Float32Array ? 'fp32' : v.format === 'q8_0' ? 'q8' : 'q4');

  const specs = weightSpecs(shape);
  let done = 0;
  for (const spec of specs) {
    onProgress?.(done++, specs.length);
    const value = source(spec);
    checkSize(spec, value);
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
      if (embeddingFormat !== 'fp32' && cols % BLOCK_SIZE !== 0) {
        log?.(`marginal: embeddings stay float32: their width ${cols} is not a multiple of ${BLOCK_SIZE}`);
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
      label: quantizationLabel(linearFormat, classifierFormat, embeddingFormat, exceptions),
      linear: linearFormat,
      ...(ranked.length > 1 ? { linearExceptions: exceptions } : {}),
      classifier: classifierFormat,
      embeddings: embeddingFormat,
      blockSize: BLOCK_SIZE,
      accuracyLevel: ACCURACY_LEVEL,
    },
  };
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
