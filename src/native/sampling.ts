import { Sampler } from '../sampling/sampler.js';
import { applyLogitAdjust, type LogitAdjust } from '../sampling/penalties.js';
import type { Rng } from '../sampling/rng.js';
import type { SamplingParams } from '../sampling/params.js';
import { native as loadedAddon, requireNative, type NativeAddon } from './index.js';

/**
 * What the native path needs from an Rng: its four xoshiro128** words moved out to the addon
 * and back. Checked per call rather than assumed, so the class works (on the TypeScript path)
 * with Rng objects that lack the methods.
 */
interface RngStateAccess {
  /** Writes s0..s3 as uint32 to into[at .. at + 4). */
  saveState(into: Uint32Array, at: number): void;
  /** Reads s0..s3 from from[at .. at + 4), as saveState wrote them. */
  loadState(from: Uint32Array, at: number): void;
}

function hasStateAccess(rng: Rng): rng is Rng & RngStateAccess {
  const r = rng as Partial<RngStateAccess>;
  return typeof r.saveState === 'function' && typeof r.loadState === 'function';
}

export interface BatchSamplerOptions {
  /** false: always TypeScript. true: the addon is required (throws if it is unavailable). Default: the addon when loaded. */
  native?: boolean;
  /** Threads the addon may split one batch over (default 1); results do not depend on it. */
  threads?: number;
}

/**
 * Samples many rows of one logits buffer in one call: out[i] is what
 * `new Sampler(vocab).sample(logits, rows[i] * vocab, params[i], rngs[i])` returns, run for
 * i = 0, 1, … in order, and every Rng ends in the state that loop leaves it in — whichever
 * backend runs. The addon performs the Sampler's float64 arithmetic in the same order (with a
 * port of V8's own exp and log) and reorganises only comparisons, so the two agree bit for bit
 * (native/src/sampler.h says how); test/native.test.ts holds them to it.
 *
 * Inputs are validated before anything is sampled, so a bad row throws with every Rng untouched
 * (the plain Sampler loop would have advanced the rows before it).
 */
export class BatchSampler {
  readonly vocabSize: number;
  readonly backend: 'native' | 'typescript';
  private readonly addon: NativeAddon | undefined;
  private readonly threads: number;
  private sampler: Sampler | undefined;
  // Grown, never shrunk; the addon takes the batch size from the rows view's length, and the
  // view is only rebuilt when the batch size changes.
  private rowsBuf = new Int32Array(0);
  private rowsView = new Int32Array(0);
  private paramsBuf = new Float64Array(0);
  private stateBuf = new Uint32Array(0);

  constructor(vocabSize: number, opts: BatchSamplerOptions = {}) {
    if (!Number.isSafeInteger(vocabSize) || vocabSize < 1 || vocabSize > 0x7fff_ffff) {
      throw new RangeError(`vocabSize must be a positive 32-bit integer, got ${vocabSize}`);
    }
    const threads = opts.threads ?? 1;
    if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`threads must be a positive integer, got ${threads}`);
    this.vocabSize = vocabSize;
    this.threads = threads;
    this.addon = opts.native === false ? undefined : opts.native === true ? requireNative() : loadedAddon;
    this.backend = this.addon ? 'native' : 'typescript';
  }

  /**
   * Applies a LogitAdjust to logits row `row` in place, in the addon when it is loaded (the same
   * float32 results as applyLogitAdjust). Callers adjust a row before sampling it.
   */
  adjust(logits: Float32Array, row: number, a: LogitAdjust): void {
    const V = this.vocabSize;
    if (!Number.isInteger(row) || row < 0 || (row + 1) * V > logits.length) throw new RangeError(`row ${row} is outside logits of length ${logits.length}`);
    if (this.addon !== undefined) this.addon.adjustLogits(logits, V, row, a.tokens, a.counts, a.flags, a.bias, a.n, a.presence, a.frequency, a.repetition);
    else applyLogitAdjust(logits, row * V, a);
  }

  /** Samples rows[0 .. count) into out[0 .. count); count defaults to rows.length. */
  sample(
    logits: Float32Array,
    rows: ArrayLike<number>,
    params: readonly SamplingParams[],
    rngs: readonly Rng[],
    out: Int32Array,
    count: number = rows.length,
  ): void {
    this.check(logits, rows, params, rngs, out, count);
    if (count === 0) return;
    const addon = this.addon;
    if (addon !== undefined && this.nativeCanRun(rngs, count)) this.sampleNative(addon, logits, rows, params, rngs as readonly (Rng & RngStateAccess)[], out, count);
    else this.sampleTs(logits, rows, params, rngs, out, count);
  }

  private check(logits: Float32Array, rows: ArrayLike<number>, params: readonly SamplingParams[], rngs: readonly Rng[], out: Int32Array, count: number): void {
    if (!Number.isInteger(count) || count < 0 || count > rows.length) throw new RangeError(`count ${count} is outside [0, ${rows.length}]`);
    if (params.length < count || rngs.length < count || out.length < count) {
      throw new RangeError(`batch of ${count} rows needs as many params (${params.length}), rngs (${rngs.length}) and out slots (${out.length})`);
    }
    const V = this.vocabSize;
    for (let i = 0; i < count; i++) {
      const r = rows[i]!;
      // Sampler.sample wants an int32 offset; the addon takes int32 rows. Both hold if the
      // offset is an int32.
      const offset = r * V;
      if (!Number.isInteger(r) || r < 0 || offset > 0x7fff_ffff || offset + V > logits.length) {
        throw new RangeError(`row ${r} (logits [${offset}, ${offset + V})) is outside logits of length ${logits.length}`);
      }
    }
  }

  /**
   * The addon gives each row its own copy of the state, which equals the sequential loop only
   * when no Rng appears twice; the engine never shares one, so the check almost never bites.
   */
  private nativeCanRun(rngs: readonly Rng[], count: number): boolean {
    for (let i = 0; i < count; i++) if (!hasStateAccess(rngs[i]!)) return false;
    if (count > 1) {
      const seen = new Set<Rng>();
      for (let i = 0; i < count; i++) {
        const r = rngs[i]!;
        if (seen.has(r)) return false;
        seen.add(r);
      }
    }
    return true;
  }

  private sampleNative(
    addon: NativeAddon,
    logits: Float32Array,
    rows: ArrayLike<number>,
    params: readonly SamplingParams[],
    rngs: readonly (Rng & RngStateAccess)[],
    out: Int32Array,
    count: number,
  ): void {
    if (this.rowsBuf.length < count) {
      const cap = Math.max(count, 2 * this.rowsBuf.length);
      this.rowsBuf = new Int32Array(cap);
      this.paramsBuf = new Float64Array(4 * cap);
      this.stateBuf = new Uint32Array(4 * cap);
    }
    if (this.rowsView.buffer !== this.rowsBuf.buffer || this.rowsView.length !== count) this.rowsView = this.rowsBuf.subarray(0, count);
    const rowsBuf = this.rowsView;
    const paramsBuf = this.paramsBuf;
    const stateBuf = this.stateBuf;
    for (let i = 0; i < count; i++) {
      const p = params[i]!;
      rowsBuf[i] = rows[i]!;
      paramsBuf[4 * i] = p.temperature;
      paramsBuf[4 * i + 1] = p.topP;
      paramsBuf[4 * i + 2] = p.topK;
      paramsBuf[4 * i + 3] = p.minP ?? 0;
      rngs[i]!.saveState(stateBuf, 4 * i);
    }
    addon.sampleBatch(logits, this.vocabSize, rowsBuf, paramsBuf, stateBuf, out, this.threads);
    for (let i = 0; i < count; i++) rngs[i]!.loadState(stateBuf, 4 * i);
  }

  private sampleTs(logits: Float32Array, rows: ArrayLike<number>, params: readonly SamplingParams[], rngs: readonly Rng[], out: Int32Array, count: number): void {
    // Built on first use: a native-backed instance never needs the three vocab-sized buffers.
    const s = (this.sampler ??= new Sampler(this.vocabSize));
    const V = this.vocabSize;
    for (let i = 0; i < count; i++) out[i] = s.sample(logits, rows[i]! * V, params[i]!, rngs[i]!);
  }
}
