import { InvalidArgumentError } from '../../errors.js';

/**
 * How a weight matrix is stored in a model directory: float32, or weight-only int8 / int4 in
 * blocks of 32 with one scale each (ggml's Q8_0 / Q4_0 numbers, run by ONNX Runtime's
 * MatMulNBits and GatherBlockQuantized). Norms and biases always stay float32.
 */
export type WeightFormat = 'fp32' | 'q8' | 'q4';
export const WEIGHT_FORMATS: readonly WeightFormat[] = ['fp32', 'q8', 'q4'];

/**
 * ggml's block: GGUF Q8_0/Q4_0 tensors hold blocks of 32 values, so a GGUF's blocks are kept
 * at this size (exact), and a directory in blocks of 32 exports to GGUF byte for byte.
 */
export const BLOCK_SIZE = 32;
export const BLOCK_SIZES = [32, 64, 128, 256] as const;
/**
 * The largest block marginal's own quantization of float weights chooses, by format.
 * MatMulNBits pays per block: at batch 1 blocks of 256 run int8 weights 1.6–2.1× and int4
 * ones 2.3× as fast as blocks of 32 on this CPU (BENCHMARKS.md, issue 12). int8 weights lose
 * little even with one scale per row, and activations rounded per 256 values are what
 * llama.cpp's K-quants multiply with (Q8_K); int4 stops at 128, the group size GPTQ and AWQ
 * checkpoints use, since one 4-bit scale per 256 weights lets an outlier flatten its block.
 * No real checkpoint here has rows wider than 172 (stories260K), so the accuracy of these
 * larger blocks is argued, not measured, on this machine.
 */
export const MAX_DEFAULT_BLOCK: Record<'q8' | 'q4', number> = { q8: 256, q4: 128 };

/**
 * The block size `--quantize` uses when `--block-size` is not given: the largest of
 * BLOCK_SIZES, up to MAX_DEFAULT_BLOCK, that divides the width of every matrix quantized
 * (a block that straddles a row's end is padded, which costs more than smaller blocks save,
 * and GatherBlockQuantized needs whole blocks along the embedding row).
 */
export function defaultBlockSize(format: 'q8' | 'q4', widths: Iterable<number>): number {
  const all = [...widths];
  for (let i = BLOCK_SIZES.length - 1; i >= 0; i--) {
    const b = BLOCK_SIZES[i] as number;
    if (b <= MAX_DEFAULT_BLOCK[format] && all.every((w) => w % b === 0)) return b;
  }
  return BLOCK_SIZE;
}
/**
 * MatMulNBits accuracy_level 4: activations are quantized to int8 per block and multiplied
 * with integer dot products (AVX-512 VNNI where present), as llama.cpp does for Q8_0/Q4_0.
 * Lower levels dequantize to float32 instead; 8-bit weights at level 0 take a path ~50×
 * slower on this CPU.
 */
export const ACCURACY_LEVEL = 4;

/** `--quantize` and friends; an unset field keeps what the source has. */
export interface QuantizeOptions {
  /** Every projection (attention and MLP), and the classifier and embeddings unless set below. */
  weights?: WeightFormat;
  classifier?: WeightFormat;
  embeddings?: WeightFormat;
  /** Values per scale for the int8/int4 tensors (default: defaultBlockSize, or 32 for a GGUF's blocks). */
  blockSize?: number;
}

/** What marginal.json records about the weights (and /v1/models reports). */
export interface QuantizationRecord {
  /** 'fp32', 'q8', 'q4', or the projections' format with the exceptions, e.g. 'q4 (classifier q8)'. */
  label: string;
  /** The format of most projections (a GGUF may keep a few in another). */
  linear: WeightFormat;
  /** Projections in another format than `linear`, by format. */
  linearExceptions?: Partial<Record<WeightFormat, number>>;
  classifier: WeightFormat;
  embeddings: WeightFormat;
  blockSize: number;
  accuracyLevel: number;
}

export function parseWeightFormat(value: string, flag: string, allowed: readonly WeightFormat[] = WEIGHT_FORMATS): WeightFormat {
  if (!(allowed as readonly string[]).includes(value)) throw new InvalidArgumentError(`${flag} must be one of ${allowed.join(', ')}, got ${value}`);
  return value as WeightFormat;
}

/** QuantizeOptions from the CLI's `--quantize`, `--classifier`, `--embeddings` strings. */
export function quantizeOptions(o: { quantize?: string; classifier?: string; embeddings?: string; blockSize?: number }): QuantizeOptions {
  const q: QuantizeOptions = {};
  if (o.blockSize !== undefined) {
    if (!(BLOCK_SIZES as readonly number[]).includes(o.blockSize)) throw new InvalidArgumentError(`--block-size must be one of ${BLOCK_SIZES.join(', ')}, got ${o.blockSize}`);
    q.blockSize = o.blockSize;
  }
  if (o.quantize !== undefined) q.weights = parseWeightFormat(o.quantize, '--quantize', ['q8', 'q4']) as 'q8' | 'q4';
  if (o.classifier !== undefined) q.classifier = parseWeightFormat(o.classifier, '--classifier');
  if (o.embeddings !== undefined) q.embeddings = parseWeightFormat(o.embeddings, '--embeddings');
  return q;
}

export function quantizationLabel(linear: WeightFormat, classifier: WeightFormat, embeddings: WeightFormat, exceptions: Partial<Record<WeightFormat, number>> = {}, blockSize = BLOCK_SIZE): string {
  const extra: string[] = [];
  if (blockSize !== BLOCK_SIZE && [linear, classifier, embeddings].some((f) => f !== 'fp32')) extra.push(`blocks of ${blockSize}`);
  for (const [f, n] of Object.entries(exceptions)) extra.push(`${n} projection${n === 1 ? '' : 's'} ${f}`);
  if (classifier !== linear) extra.push(`classifier ${classifier}`);
  if (embeddings !== linear) extra.push(`embeddings ${embeddings}`);
  return extra.length === 0 ? linear : `${linear} (${extra.join(', ')})`;
}
