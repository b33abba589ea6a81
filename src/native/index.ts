/**
 * Loader for the optional Node-API addon built from native/ (issue 6). Everything it offers has
 * a TypeScript twin giving identical results, so a missing or refused addon only costs speed:
 * callers test `native` and fall back, and `nativeStatus()` says which path runs and why.
 *
 * `MARGINAL_NATIVE=0` forces the fallback (to compare, or to rule the addon out of a bug).
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { NativeOrtRunner, OrtRunnerOptions } from './ort-runner.js';

/** Must equal kAbiVersion in native/src/addon.cc; a stale build with another number is refused. */
export const NATIVE_ABI_VERSION = 3;

export interface NativeAddon {
  readonly abiVersion: number;
  /** std::thread::hardware_concurrency(), at least 1. */
  readonly hardwareThreads: number;
  /**
   * out[i] = the Sampler's pick from logits[rows[i] * vocab, (rows[i] + 1) * vocab) with
   * params[4i .. 4i+4) = (temperature, topP, topK, minP) and the xoshiro128** state
   * rngState[4i .. 4i+4), which it advances in place (one draw per non-greedy row). Validates
   * everything before sampling anything. Rows are split over `threads` (default 1) threads.
   */
  sampleBatch(logits: Float32Array, vocab: number, rows: Int32Array, params: Float64Array, rngState: Uint32Array, out: Int32Array, threads?: number): void;
  /** applyLogitAdjust (src/sampling/penalties.ts) on logits[row * vocab, (row + 1) * vocab), bit for bit. */
  adjustLogits(
    logits: Float32Array,
    vocab: number,
    row: number,
    tokens: Int32Array,
    counts: Int32Array,
    flags: Uint8Array,
    bias: Float64Array,
    n: number,
    presence: number,
    frequency: number,
    repetition: number,
  ): void;
  /**
   * Copies positions [from + b*n, from + (b+1)*n) of one slot of the per-layer caches
   * ([slot][kvHead][capacity][headDim]) to or from packed[b] ([layer][k|v][kvHead][n][headDim]).
   */
  kvCopy(
    toCache: boolean,
    keys: readonly Float32Array[],
    values: readonly Float32Array[],
    packed: readonly Float32Array[],
    kvHeads: number,
    capacity: number,
    headDim: number,
    slot: number,
    from: number,
    n: number,
  ): void;
  /** Which SIMD kernels the sampler uses on this machine: "avx2", "vector" (portable) or "scalar". */
  readonly kernels: string;
  /**
   * Loads ONNX Runtime from `libraryPath` (dlopen, once per process) and opens `modelPath` for
   * I/O-bound runs; see src/native/ort-runner.ts, which wraps the result.
   */
  openOrtRunner(libraryPath: string, modelPath: string, options: OrtRunnerOptions): Promise<NativeOrtRunner>;
  /** Free and total bytes of CUDA device `deviceId` (the CUDA runtime, opened with dlopen); throws (code ORT_CUDA) without one. */
  cudaMemory(deviceId: number): { free: number; total: number };

  // Test hooks, so test/native.test.ts can hold each piece to its TypeScript definition directly.
  /** The addon's port of V8's Math.exp / Math.log, element-wise. */
  fdlibmExp(input: Float64Array, out: Float64Array): void;
  fdlibmLog(input: Float64Array, out: Float64Array): void;
  /**
   * With the named kernel set (default: the one in use); undefined when this machine lacks it.
   * softmaxWeights: out[i] = z > -Infinity ? Math.exp(z) : 0 with z = (row[i] - max) * invT
   * (with `prefix`, the running sum through i instead); returns the sum in index order.
   * argmax: first index of the largest non-NaN value, 0 when none is above -Infinity.
   * firstAbove: first i >= from with row[i] > threshold, or row.length.
   */
  softmaxWeights(row: Float32Array, max: number, invT: number, out: Float64Array, prefix: boolean, kernel?: string): number | undefined;
  argmax(row: Float32Array, kernel?: string): number | undefined;
  firstAbove(row: Float32Array, from: number, threshold: number, kernel?: string): number | undefined;
}

/**
 * Resolved from this module, two levels below the package root in both src/native (tsx) and
 * dist/native (built), so the same relative path serves both.
 */
export const nativeAddonPath = fileURLToPath(new URL('../../native/build/Release/marginal_native.node', import.meta.url));

function load(): { addon: NativeAddon | undefined; status: string } {
  if (process.env.MARGINAL_NATIVE === '0') return { addon: undefined, status: 'TypeScript fallback: MARGINAL_NATIVE=0' };
  let addon: NativeAddon;
  try {
    addon = createRequire(import.meta.url)(nativeAddonPath) as NativeAddon;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const reason = e.code === 'MODULE_NOT_FOUND'
      ? `${nativeAddonPath} is not built (run \`npm run build:native\`)`
      : `${nativeAddonPath} failed to load: ${e.message.split('\n')[0]}`;
    return { addon: undefined, status: `TypeScript fallback: ${reason}` };
  }
  if (addon.abiVersion !== NATIVE_ABI_VERSION) {
    return {
      addon: undefined,
      status: `TypeScript fallback: ${nativeAddonPath} has ABI ${String(addon.abiVersion)}, this code needs ${NATIVE_ABI_VERSION} (rebuild with \`npm run build:native\`)`,
    };
  }
  return { addon, status: `native addon loaded from ${nativeAddonPath} (${addon.kernels} kernels)` };
}

const loaded = load();

/** The addon, or undefined when the TypeScript fallback is in use (see nativeStatus()). */
export const native: NativeAddon | undefined = loaded.addon;

/** "native addon loaded from …" or "TypeScript fallback: <reason>", for startup logs and tests. */
export function nativeStatus(): string {
  return loaded.status;
}

/** The addon, or an Error carrying the reason it is unavailable. */
export function requireNative(): NativeAddon {
  if (native === undefined) throw new Error(`the native addon is required but unavailable: ${loaded.status}`);
  return native;
}
