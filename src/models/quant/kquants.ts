import { halfToFloat } from './ggml.js';

/**
 * llama.cpp's K-quants Q4_K, Q5_K and Q6_K (ggml-quants.c dequantize_row_q*_K): 256-value
 * super-blocks with 6-bit (Q4_K, Q5_K: scales and mins) or 8-bit (Q6_K) sub-block scales.
 * ONNX Runtime has no kernel for these layouts, so the importer dequantizes them and stores the
 * values in one of marginal's formats; these are what Q4_K_M and Q5_K_M files are made of.
 */
export type KQuant = 'q4_K' | 'q5_K' | 'q6_K';
export const QK_K = 256;
export const K_BLOCK_BYTES: Record<KQuant, number> = { q4_K: 144, q5_K: 176, q6_K: 210 };

/** Sub-block j's 6-bit scale and min from the 12 packed bytes at `at` (get_scale_min_k4). */
function scaleMin(b: Uint8Array, at: number, j: number): [number, number] {
  if (j < 4) return [(b[at + j] as number) & 63, (b[at + j + 4] as number) & 63];
  return [((b[at + j + 4] as number) & 0x0f) | (((b[at + j - 4] as number) >> 6) << 4), ((b[at + j + 4] as number) >> 4) | (((b[at + j] as number) >> 6) << 4)];
}

const fr = Math.fround;

/** The float32 values of `count` elements (a multiple of 256) stored as `type`. */
export function dequantizeK(type: KQuant, b: Uint8Array, count: number): Float32Array {
  const out = new Float32Array(count);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const blocks = count / QK_K;
  for (let i = 0; i < blocks; i++) {
    const at = i * K_BLOCK_BYTES[type];
    let y = i * QK_K;
    if (type === 'q6_K') {
      // ql[128], qh[64], scales[16] (int8), d.
      const d = halfToFloat(dv.getUint16(at + 208, true));
      for (let n = 0; n < 2; n++) {
        const ql = at + n * 64;
        const qh = at + 128 + n * 32;
        const sc = at + 192 + n * 8;
        for (let l = 0; l < 32; l++) {
          const is = l >> 4;
          const h = b[qh + l] as number;
          const q1 = (((b[ql + l] as number) & 0x0f) | ((h & 3) << 4)) - 32;
          const q2 = (((b[ql + l + 32] as number) & 0x0f) | (((h >> 2) & 3) << 4)) - 32;
          const q3 = (((b[ql + l] as number) >> 4) | (((h >> 4) & 3) << 4)) - 32;
          const q4 = (((b[ql + l + 32] as number) >> 4) | (((h >> 6) & 3) << 4)) - 32;
          const s = (k: number) => ((b[sc + is + k] as number) << 24) >> 24;
          out[y + l] = fr(fr(d * s(0)) * q1);
          out[y + l + 32] = fr(fr(d * s(2)) * q2);
          out[y + l + 64] = fr(fr(d * s(4)) * q3);
          out[y + l + 96] = fr(fr(d * s(6)) * q4);
        }
        y += 128;
      }
      continue;
    }
    // Q4_K: d, dmin, scales[12], qs[128]. Q5_K: d, dmin, scales[12], qh[32], qs[128].
    const d = halfToFloat(dv.getUint16(at, true));
    const dmin = halfToFloat(dv.getUint16(at + 2, true));
    const five = type === 'q5_K';
    const qh = at + 16;
    let q = at + (five ? 48 : 16);
    let u1 = 1;
    let u2 = 2;
    for (let j = 0, is = 0; j < QK_K; j += 64, is += 2) {
      const [sc1, m1] = scaleMin(b, at + 4, is);
      const [sc2, m2] = scaleMin(b, at + 4, is + 1);
      const d1 = fr(d * sc1);
      const min1 = fr(dmin * m1);
      const d2 = fr(d * sc2);
      const min2 = fr(dmin * m2);
      for (let l = 0; l < 32; l++) {
        const lo = ((b[q + l] as number) & 0x0f) + (five && ((b[qh + l] as number) & u1) !== 0 ? 16 : 0);
        out[y + l] = fr(fr(d1 * lo) - min1);
      }
      for (let l = 0; l < 32; l++) {
        const hi = ((b[q + l] as number) >> 4) + (five && ((b[qh + l] as number) & u2) !== 0 ? 16 : 0);
        out[y + 32 + l] = fr(fr(d2 * hi) - min2);
      }
      y += 64;
      q += 32;
      u1 <<= 2;
      u2 <<= 2;
    }
  }
  return out;
}
