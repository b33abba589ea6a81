import { getRandomValues } from 'node:crypto';

const M64 = 0xffff_ffff_ffff_ffffn;

/**
 * Seeded PRNG whose stream a native (C++) sampler must reproduce bit for bit, so the algorithm is
 * fixed here exactly:
 *
 * Seeding (SplitMix64, all arithmetic mod 2^64):
 *   x = (uint64_t)(int64_t)seed                       // negative seeds wrap two's-complement
 *   splitmix64(): x += 0x9E3779B97F4A7C15;
 *                 z = x;
 *                 z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
 *                 z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
 *                 return z ^ (z >> 31);
 *   a = splitmix64(); b = splitmix64();
 *   s[0] = (uint32_t)a; s[1] = (uint32_t)(a >> 32); s[2] = (uint32_t)b; s[3] = (uint32_t)(b >> 32);
 *   (a and b come from distinct counter values of a bijection, so at most one is 0 and the state
 *   can never be all-zero.)
 *
 * Step (xoshiro128**, Blackman & Vigna, all arithmetic mod 2^32):
 *   result = rotl(s[1] * 5, 7) * 9;
 *   t = s[1] << 9;
 *   s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 11);
 *
 * Uniform: next() = (float)(result >> 8) * 2^-24, i.e. a float32-exact value in [0, 1). Using only
 * 24 bits means the C++ side can hold it in a float without rounding and still agree.
 *
 * Known answers: seed 42 → nextUint32() = 1776835114, 4165204688, 17111135, ...
 */
export class Rng {
  /** The seed actually in use (drawn from crypto for unseeded requests), for logging/replay. */
  readonly seed: number;
  // State kept as int32 numbers: V8 keeps them unboxed, and Math.imul/bit ops give mod-2^32 math.
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** Copies the four state words to into[at .. at + 4), the native sampler's layout (s0..s3). */
  saveState(into: Uint32Array, at: number): void {
    into[at] = this.s0;
    into[at + 1] = this.s1;
    into[at + 2] = this.s2;
    into[at + 3] = this.s3;
  }

  /** Restores the state saveState wrote at from[at .. at + 4). */
  loadState(from: Uint32Array, at: number): void {
    this.s0 = from[at]! | 0;
    this.s1 = from[at + 1]! | 0;
    this.s2 = from[at + 2]! | 0;
    this.s3 = from[at + 3]! | 0;
  }

  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`Rng seed must be a safe integer, got ${seed}`);
    this.seed = seed;
    // BigInt only at construction (once per request); the per-token path is pure int32 math.
    let x = BigInt.asUintN(64, BigInt(seed));
    const splitmix64 = (): bigint => {
      x = (x + 0x9e3779b97f4a7c15n) & M64;
      let z = x;
      z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
      z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
      return z ^ (z >> 31n);
    };
    const a = splitmix64();
    const b = splitmix64();
    this.s0 = Number(a & 0xffff_ffffn) | 0;
    this.s1 = Number(a >> 32n) | 0;
    this.s2 = Number(b & 0xffff_ffffn) | 0;
    this.s3 = Number(b >> 32n) | 0;
  }

  /** A random seed in [0, 2^53), so it round-trips through JSON and through `new Rng(seed)`. */
  static randomSeed(): number {
    const w = getRandomValues(new Uint32Array(2));
    return (w[0]! & 0x1f_ffff) * 0x1_0000_0000 + w[1]!;
  }

  /** Seeded requests replay exactly; unseeded ones get a crypto seed (recorded in `.seed`). */
  static create(seed: number | undefined): Rng {
    return new Rng(seed === undefined ? Rng.randomSeed() : seed);
  }

  /** Raw xoshiro128** output as an unsigned 32-bit integer. */
  nextUint32(): number {
    const s0 = this.s0;
    const s1 = this.s1;
    const s2 = this.s2 ^ s0;
    const s3 = this.s3 ^ s1;
    const m = Math.imul(s1, 5);
    const result = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
    this.s1 = s1 ^ s2;
    this.s0 = s0 ^ s3;
    this.s2 = s2 ^ (s1 << 9);
    this.s3 = (s3 << 11) | (s3 >>> 21);
    return result;
  }

  /** Uniform float32-precision value in [0, 1). */
  next(): number {
    return (this.nextUint32() >>> 8) * 5.9604644775390625e-8; // 2^-24
  }
}
