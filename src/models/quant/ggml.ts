/**
 * ggml's block formats Q8_0 and Q4_0, bit for bit as llama.cpp's reference quantizers write
 * them (ggml-quants.c `quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`), and the half and
 * bfloat16 conversions they rest on. marginal's own q8 and q4 weights are exactly these
 * blocks, so a model quantized here and the GGUF written from it hold the same numbers, and a
 * GGUF's Q8_0/Q4_0 tensors load without passing through float32.
 *
 * A block covers 32 consecutive values of a row: Q8_0 is a half-precision scale d and 32
 * int8 q (value = d·q, 34 bytes); Q4_0 is d and 16 bytes of nibbles (value = d·(q − 8), 18
 * bytes), byte j holding value j in its low nibble and value j + 16 in its high nibble.
 */

export const QK = 32;
export type BlockFormat = 'q8_0' | 'q4_0';

/**
 * A [rows, cols] matrix in blocks, row by row; a row's last block is zero-padded when cols is
 * not a multiple of the block size. Blocks of 32 are ggml's Q8_0/Q4_0; marginal also writes
 * the same formulas over larger blocks (fewer scales, faster kernels), which GGUF cannot hold.
 */
export interface BlockTensor {
  format: BlockFormat;
  rows: number;
  cols: number;
  blocks: Uint8Array;
  /** Values per block; 32 (ggml's) when absent. */
  blockSize?: number;
}

/** Bytes of one block: the half-precision scale, then the values (8 or 4 bits each). */
export function blockBytes(format: BlockFormat, blockSize = QK): number {
  return 2 + (format === 'q8_0' ? blockSize : blockSize / 2);
}

export function blocksPerRow(cols: number, blockSize = QK): number {
  return Math.ceil(cols / blockSize);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE half → float32 (exact). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** float32 → IEEE half, round to nearest even (what F16C's vcvtps2ph does for ggml). */
export function floatToHalf(x: number): number {
  f32[0] = x;
  const bits = u32[0] as number;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (h & 1) === 1)) h++;
    return sign | h;
  }
  let h = mant >>> 13;
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) {
    h++;
    if (h === 0x400) {
      h = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | h;
}

/** bfloat16 → float32 (exact: the top half of a float32). */
export function bf16ToFloat(b: number): number {
  u32[0] = (b & 0xffff) << 16;
  return f32[0] as number;
}

/** C's roundf: halves away from zero (Math.round sends −2.5 to −2). */
function roundf(x: number): number {
  return x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
}

const fr = Math.fround;

/** Quantizes a row-major [rows, cols] float32 matrix into blocks (ggml's reference quantizers, over `blockSize` values). */
export function quantize(format: BlockFormat, src: Float32Array, rows: number, cols: number, blockSize = QK): BlockTensor {
  if (src.length !== rows * cols) throw new RangeError(`quantize: ${src.length} values for a ${rows}×${cols} matrix`);
  const nb = blocksPerRow(cols, blockSize);
  const size = blockBytes(format, blockSize);
  const blocks = new Uint8Array(rows * nb * size);
  const dv = new DataView(blocks.buffer);
  const x = new Float32Array(blockSize);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < nb; b++) {
      const start = r * cols + b * blockSize;
      const n = Math.min(blockSize, cols - b * blockSize);
      x.fill(0);
      x.set(src.subarray(start, start + n));
      const at = (r * nb + b) * size;
      if (format === 'q8_0') quantizeBlockQ8(x, dv, blocks, at);
      else quantizeBlockQ4(x, dv, blocks, at);
    }
  }
  const t: BlockTensor = { format, rows, cols, blocks };
  if (blockSize !== QK) t.blockSize = blockSize;
  return t;
}

function quantizeBlockQ8(x: Float32Array, dv: DataView, out: Uint8Array, at: number): void {
  let amax = 0;
  for (let j = 0; j < x.length; j++) amax = Math.max(amax, Math.abs(x[j] as number));
  const d = fr(amax / 127);
  const id = d !== 0 ? fr(1 / d) : 0;
  dv.setUint16(at, floatToHalf(d), true);
  for (let j = 0; j < x.length; j++) out[at + 2 + j] = roundf(fr((x[j] as number) * id)) & 0xff;
}

function quantizeBlockQ4(x: Float32Array, dv: DataView, out: Uint8Array, at: number): void {
  const bs = x.length;
  let amax = 0;
  let max = 0;
  for (let j = 0; j < bs; j++) {
    const v = x[j] as number;
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  const d = fr(max / -8);
  const id = d !== 0 ? fr(1 / d) : 0;
  dv.setUint16(at, floatToHalf(d), true);
  for (let j = 0; j < bs / 2; j++) {
    // (int8_t) truncates toward zero; x·id + 8.5 is never below 0.5. Value j pairs with j + bs/2.
    const lo = Math.min(15, Math.trunc(fr(fr((x[j] as number) * id) + 8.5)));
    const hi = Math.min(15, Math.trunc(fr(fr((x[j + bs / 2] as number) * id) + 8.5)));
    out[at + 2 + j] = lo | (hi << 4);
  }
}

/** The float32 values a block tensor stands for, row-major [rows, cols]. */
export function dequantize(t: BlockTensor): Float32Array {
  const { rows, cols } = t;
  const bs = t.blockSize ?? QK;
  const nb = blocksPerRow(cols, bs);
  const size = blockBytes(t.format, bs);
  const out = new Float32Array(rows * cols);
  const dv = new DataView(t.blocks.buffer, t.blocks.byteOffset, t.blocks.byteLength);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < nb; b++) {
      const at = (r * nb + b) * size;
      const d = halfToFloat(dv.getUint16(at, true));
      const base = r * cols + b * bs;
      const n = Math.min(bs, cols - b * bs);
      for (let j = 0; j < n; j++) out[base + j] = fr(d * valueAt(t.format, t.blocks, at, j, bs));
    }
  }
  return out;
}

/** The integer of value j of the block at `at`, zero point removed. */
function valueAt(format: BlockFormat, blocks: Uint8Array, at: number, j: number, bs: number): number {
  if (format === 'q8_0') return ((blocks[at + 2 + j] as number) << 24) >> 24;
  const byte = blocks[at + 2 + (j % (bs / 2))] as number;
  return (j < bs / 2 ? byte & 0x0f : byte >> 4) - 8;
}

/**
 * ONNX Runtime's MatMulNBits / GatherBlockQuantized layout of the same numbers (default zero
 * points 128 and 8): codes [rows, blocks, blockSize·bits/8] as uint8, packed low nibble first
 * along the row, and one float32 scale per block. No value changes on the way.
 */
export function toNBits(t: BlockTensor): { bits: 4 | 8; codes: Uint8Array; scales: Float32Array } {
  const bs = t.blockSize ?? QK;
  const nb = blocksPerRow(t.cols, bs);
  const size = blockBytes(t.format, bs);
  const bits = t.format === 'q8_0' ? 8 : 4;
  const blob = (bs * bits) / 8;
  const codes = new Uint8Array(t.rows * nb * blob);
  const scales = new Float32Array(t.rows * nb);
  const dv = new DataView(t.blocks.buffer, t.blocks.byteOffset, t.blocks.byteLength);
  for (let k = 0; k < t.rows * nb; k++) {
    const at = k * size;
    scales[k] = halfToFloat(dv.getUint16(at, true));
    const o = k * blob;
    if (bits === 8) {
      for (let j = 0; j < bs; j++) codes[o + j] = ((t.blocks[at + 2 + j] as number) + 128) & 0xff;
    } else {
      // ggml pairs value j with j + 16 (half a block); ONNX Runtime pairs 2i with 2i + 1.
      const h = bs / 2;
      for (let i = 0; i < bs / 2; i++) {
        const a = 2 * i;
        const b = a + 1;
        const lo = a < h ? (t.blocks[at + 2 + a] as number) & 0x0f : (t.blocks[at + 2 + a - h] as number) >> 4;
        const hi = b < h ? (t.blocks[at + 2 + b] as number) & 0x0f : (t.blocks[at + 2 + b - h] as number) >> 4;
        codes[o + i] = lo | (hi << 4);
      }
    }
  }
  return { bits, codes, scales };
}
