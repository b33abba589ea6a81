/**
 * ONNX Runtime's C API with I/O binding, through the native addon (native/src/ort/): a session
 * for any graph whose inputs and outputs are bound to views of buffers the caller allocated on
 * the session's device (CUDA memory under the CUDA provider, host memory under CPU) or in host
 * memory. A bound view is read and written in place by every run, so data that lives in a
 * device buffer — a KV pool — never crosses to the host unless the caller copies it, and every
 * copy the runner makes is counted (`RunnerStats`).
 *
 * The addon loads libonnxruntime from onnxruntime-node's own folder with dlopen, so it has no
 * link-time dependency on it; `ortRunnerStatus()` says whether this process can open runners.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { native, nativeStatus } from './index.js';

/** ONNX's TensorProto element types that can be bound to memory, by their ONNX Runtime names. */
export const ElementType = {
  float32: 1,
  uint8: 2,
  int8: 3,
  uint16: 4,
  int16: 5,
  int32: 6,
  int64: 7,
  bool: 9,
  float16: 10,
  float64: 11,
  uint32: 12,
  uint64: 13,
  bfloat16: 16,
} as const;
export type ElementTypeName = keyof typeof ElementType;

const elementBytes: Record<number, number> = { 1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2 };

/** Bytes per element of an ONNX element type code (0 for types that cannot be bound). */
export function bytesPerElement(type: number): number {
  return elementBytes[type] ?? 0;
}

export interface GraphValue {
  name: string;
  /** ONNX element type code (ElementType); 0 when the value is not a tensor. */
  type: number;
  /** Declared dims, -1 where symbolic; null when the value is not a tensor. */
  dims: number[] | null;
}

/** Where a buffer lives: the session's device (host memory under CPU), or host memory (pinned under CUDA). */
export type Where = 'device' | 'host';

/** Index of each figure in the array `stats()` fills; all cumulative since the runner opened. */
export const RunnerStat = {
  runs: 0,
  /** Bytes moved into device buffers from the host (writes, and host inputs a device run needed). */
  uploadBytes: 1,
  /** Bytes moved out of device buffers to the host (reads, and host outputs of a device run). */
  downloadBytes: 2,
  /** Bytes copied within one kind of memory. */
  localCopyBytes: 3,
  /** Bytes read out of buffers allocated with `kv: true`, by any copy: the cache copied. */
  kvCopiedBytes: 4,
} as const;
export const RUNNER_STAT_COUNT = 5;

/** The native object (native/src/ort/runner.h); `OrtRunner` wraps it with names and checks. */
export interface NativeOrtRunner {
  readonly inputs: GraphValue[];
  readonly outputs: GraphValue[];
  readonly provider: 'cpu' | 'cuda';
  readonly version: string;
  allocate(bytes: number, where: Where, kv?: boolean): number;
  view(buffer: number): ArrayBuffer | undefined;
  free(buffer: number): void;
  write(buffer: number, byteOffset: number, source: ArrayBufferView | ArrayBuffer, byteLength?: number): void;
  read(buffer: number, byteOffset: number, target: ArrayBufferView | ArrayBuffer): void;
  copy(dst: number, src: number, regions: Float64Array, count: number): void;
  bindInput(index: number, buffer: number, byteOffset: number, type: number, dims: Float64Array, rank: number): void;
  bindOutput(index: number, buffer: number, byteOffset: number, type: number, dims: Float64Array, rank: number): void;
  clearOutputs(): void;
  run(): Promise<void>;
  runSync(): void;
  stats(into: Float64Array): void;
  deviceMemory(): { free: number; total: number } | undefined;
  release(): void;
}

export interface OrtRunnerOptions {
  provider?: 'cpu' | 'cuda';
  deviceId?: number;
  intraOpThreads?: number;
  interOpThreads?: number;
  /** Let idle intra-op threads spin (ONNX Runtime's default); off unless true. */
  spinning?: boolean;
  graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all';
}

/** libonnxruntime inside the installed onnxruntime-node, the copy its own binding loads. */
export function onnxRuntimeLibraryPath(): string | undefined {
  let pkg: string;
  try {
    pkg = dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
  } catch {
    return undefined;
  }
  const dir = join(pkg, 'bin', 'napi-v6', process.platform, process.arch);
  const names = process.platform === 'darwin' ? [`libonnxruntime.${ortPackageVersion(pkg)}.dylib`, 'libonnxruntime.1.dylib'] : ['libonnxruntime.so.1'];
  return names.map((n) => join(dir, n)).find((p) => existsSync(p));
}

function ortPackageVersion(pkg: string): string {
  try {
    return (createRequire(import.meta.url)(join(pkg, 'package.json')) as { version: string }).version;
  } catch {
    return '';
  }
}

/** Why runners cannot be opened in this process, or undefined when they can be. */
export function ortRunnerUnavailable(): string | undefined {
  if (process.platform === 'win32') return 'the I/O-binding runner is not ported to Windows';
  if (native === undefined) return `the native addon is unavailable (${nativeStatus()})`;
  if (typeof native.openOrtRunner !== 'function') return 'the native addon was built without the ONNX Runtime runner';
  if (onnxRuntimeLibraryPath() === undefined) return `libonnxruntime was not found inside onnxruntime-node for ${process.platform}-${process.arch}`;
  return undefined;
}

/**
 * Free bytes of CUDA device `deviceId`, for sizing a KV pool that will live there (vLLM's
 * gpu_memory_utilization), or undefined where the addon or the CUDA runtime is missing.
 */
export function cudaFreeMemory(deviceId = 0): number | undefined {
  if (native === undefined || typeof native.cudaMemory !== 'function') return undefined;
  try {
    return native.cudaMemory(deviceId).free;
  } catch {
    return undefined;
  }
}

/**
 * One session. Names resolve to indices once; the per-step calls (`bindInputAt`,
 * `bindOutputAt`, `write`, `copy`, `run`) take numbers and reused typed arrays only.
 */
export class OrtRunner {
  readonly inputs: readonly GraphValue[];
  readonly outputs: readonly GraphValue[];
  readonly provider: 'cpu' | 'cuda';
  /** ONNX Runtime's version string, e.g. "1.29.0". */
  readonly version: string;
  private readonly inputIndex = new Map<string, number>();
  private readonly outputIndex = new Map<string, number>();
  private readonly statsBuf = new Float64Array(RUNNER_STAT_COUNT);
  private readonly dimsBuf = new Float64Array(16);

  private constructor(private readonly r: NativeOrtRunner) {
    this.inputs = r.inputs;
    this.outputs = r.outputs;
    this.provider = r.provider;
    this.version = r.version;
    this.inputs.forEach((v, i) => this.inputIndex.set(v.name, i));
    this.outputs.forEach((v, i) => this.outputIndex.set(v.name, i));
  }

  /** Opens `modelPath`; rejects with the addon's error (code ORT_PROVIDER, ORT_SESSION, ORT_LIBRARY…). */
  static async open(modelPath: string, opts: OrtRunnerOptions = {}): Promise<OrtRunner> {
    const why = ortRunnerUnavailable();
    if (why !== undefined) throw Object.assign(new Error(why), { code: 'ORT_UNAVAILABLE' });
    const library = onnxRuntimeLibraryPath() as string;
    const r = await (native as NonNullable<typeof native>).openOrtRunner(library, modelPath, opts);
    return new OrtRunner(r);
  }

  hasInput(name: string): boolean {
    return this.inputIndex.has(name);
  }

  hasOutput(name: string): boolean {
    return this.outputIndex.has(name);
  }

  /** The input's index for `bindInputAt`; throws for a name the graph lacks. */
  input(name: string): number {
    const i = this.inputIndex.get(name);
    if (i === undefined) throw new RangeError(`the graph has no input ${name}`);
    return i;
  }

  output(name: string): number {
    const i = this.outputIndex.get(name);
    if (i === undefined) throw new RangeError(`the graph has no output ${name}`);
    return i;
  }

  /** A zero-filled buffer; `kv` marks cache memory, whose every byte copied out is counted. */
  allocate(bytes: number, where: Where, opts: { kv?: boolean } = {}): number {
    return this.r.allocate(bytes, where, opts.kv === true);
  }

  /** The buffer's memory as an ArrayBuffer when the host can address it (host buffers; all under CPU). */
  view(buffer: number): ArrayBuffer | undefined {
    return this.r.view(buffer);
  }

  /** Frees a buffer no binding refers to (throws ORT_BOUND otherwise). */
  free(buffer: number): void {
    this.r.free(buffer);
  }

  /** Copies `source` (its first byteLength bytes, when given) into the buffer at byteOffset. */
  write(buffer: number, byteOffset: number, source: ArrayBufferView | ArrayBuffer, byteLength?: number): void {
    this.r.write(buffer, byteOffset, source, byteLength);
  }

  read(buffer: number, byteOffset: number, target: ArrayBufferView | ArrayBuffer): void {
    this.r.read(buffer, byteOffset, target);
  }

  /**
   * Strided copies from `src` to `dst` where the memory lives (memmove on the host, cudaMemcpy2D
   * on the device), all checked before any moves. `regions` holds `count` groups of six byte
   * figures: [dstOffset, dstPitch, srcOffset, srcPitch, width, rows].
   */
  copy(dst: number, src: number, regions: Float64Array, count: number): void {
    this.r.copy(dst, src, regions, count);
  }

  /** Binds input `index` to `rank` dims (from `dims`) of `type` at byteOffset in buffer; the same view again is free. */
  bindInputAt(index: number, buffer: number, byteOffset: number, type: number, dims: Float64Array, rank: number): void {
    this.r.bindInput(index, buffer, byteOffset, type, dims, rank);
  }

  bindOutputAt(index: number, buffer: number, byteOffset: number, type: number, dims: Float64Array, rank: number): void {
    this.r.bindOutput(index, buffer, byteOffset, type, dims, rank);
  }

  /** By name, for setup code and tests. */
  bindInput(name: string, buffer: number, byteOffset: number, type: ElementTypeName, dims: readonly number[]): void {
    this.dimsBuf.set(dims);
    this.r.bindInput(this.input(name), buffer, byteOffset, ElementType[type], this.dimsBuf, dims.length);
  }

  bindOutput(name: string, buffer: number, byteOffset: number, type: ElementTypeName, dims: readonly number[]): void {
    this.dimsBuf.set(dims);
    this.r.bindOutput(this.output(name), buffer, byteOffset, ElementType[type], this.dimsBuf, dims.length);
  }

  /** Unbinds every output: the next run computes only the outputs bound after this. */
  clearOutputs(): void {
    this.r.clearOutputs();
  }

  /** Runs on what is bound, off the JavaScript thread; the runner refuses other calls until it settles. */
  run(): Promise<void> {
    return this.r.run();
  }

  /** Runs on what is bound, on this thread (as onnxruntime-node's session.run does): no thread hop. */
  runSync(): void {
    this.r.runSync();
  }

  /** Fills `into` (RUNNER_STAT_COUNT numbers, indexed by RunnerStat) without allocating. */
  statsInto(into: Float64Array): void {
    this.r.stats(into);
  }

  /** One cumulative figure (RunnerStat). */
  stat(which: number): number {
    this.r.stats(this.statsBuf);
    return this.statsBuf[which] as number;
  }

  /** Free and total bytes of the CUDA device; undefined under CPU. */
  deviceMemory(): { free: number; total: number } | undefined {
    return this.r.deviceMemory();
  }

  /** Releases the session and every device buffer; host views stay valid until collected. */
  release(): void {
    this.r.release();
  }
}
