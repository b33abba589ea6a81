import { freemem } from 'node:os';
import { InvalidArgumentError } from './errors.js';

/**
 * The serving geometry: how many sequences run, how many tokens a step takes, how prompts are
 * chunked, how long a sequence may grow, and the KV pool they share. One definition and one set
 * of defaults for `serve`, `sim`, `tune` and `calibrate`, so a curve tuned in the simulator
 * meets the server it was tuned for. Names follow vLLM's engine arguments where one exists.
 */
export interface Geometry {
  /** Sequences running at once (vLLM --max-num-seqs). */
  maxNumSeqs: number;
  /** Tokens one step may process: one per decode, a chunk's length per prefill (vLLM --max-num-batched-tokens). */
  maxNumBatchedTokens: number;
  /** Largest prompt chunk one request gets in a step (vLLM --long-prefill-token-threshold). */
  prefillChunk: number;
  /** Positions one sequence may reach: prompt plus output (vLLM --max-model-len). */
  maxModelLen: number;
  /** Positions per KV block (vLLM --block-size). */
  blockSize: number;
  /** Blocks in the KV pool (vLLM --num-gpu-blocks-override). */
  kvBlocks: number;
  /** Host blocks preempted sequences can be swapped out to; 0: preemption recomputes (vLLM --swap-space, in blocks). */
  swapBlocks: number;
}

export const GEOMETRY_DEFAULTS = {
  maxNumSeqs: 64,
  maxNumBatchedTokens: 512,
  prefillChunk: 256,
  blockSize: 16,
  /** Without --kv-blocks or --kv-memory: room for every sequence at full length, within this share of free memory. */
  kvMemoryFraction: 0.4,
} as const;

/** What a command line or caller may say; everything else takes its default. */
export interface GeometryOptions {
  maxNumSeqs?: number;
  maxNumBatchedTokens?: number;
  prefillChunk?: number;
  maxModelLen?: number;
  blockSize?: number;
  kvBlocks?: number;
  /** Pool size: bytes ("2GiB", "512MB", 1e9) or, at most 1, a fraction of free memory (vLLM's gpu_memory_utilization). */
  kvMemory?: string | number;
  swapBlocks?: number;
  /** Host swap space in GiB (vLLM --swap-space); converted to blocks. */
  swapSpace?: number;
}

/** What the model (or, in the simulator, the profile) fixes. */
export interface GeometryLimits {
  /** The model's context: maxModelLen defaults to it and may not exceed it. */
  maxContext: number;
  /** Bytes one token's keys and values take (all layers); needed to turn memory into blocks. */
  kvBytesPerToken?: number;
  /** Free memory in bytes, for fractions (default os.freemem()); NaN where there is none to speak of (the simulator). */
  freeMemory?: number;
}

const UNITS: Record<string, number> = { '': 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40, k: 1e3, m: 1e6, g: 1e9 };

/** Bytes from "512MiB", "2GB", "1e9" or 1e9; a value in (0, 1] is a fraction of `free`. */
export function parseKvMemory(v: string | number, free: number): number {
  let bytes: number;
  if (typeof v === 'number') bytes = v;
  else {
    const m = /^\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-z]*)\s*$/i.exec(v);
    const unit = UNITS[(m?.[2] ?? '').toLowerCase()];
    if (!m || unit === undefined) throw new InvalidArgumentError(`--kv-memory must be bytes (e.g. 2GiB, 512MB, 1e9) or a fraction of free memory (e.g. 0.5), got ${v}`);
    bytes = Number(m[1]) * unit;
    if (unit !== 1 && bytes <= 1) throw new InvalidArgumentError(`--kv-memory ${v} is less than a byte`);
  }
  if (!Number.isFinite(bytes) || bytes <= 0) throw new InvalidArgumentError(`--kv-memory must be positive, got ${v}`);
  if (bytes > 1) return bytes;
  if (!Number.isFinite(free)) throw new InvalidArgumentError(`--kv-memory ${v} is a fraction of free memory, which only a server has: give bytes or --kv-blocks`);
  return bytes * free;
}

function positive(name: string, v: number | undefined, fallback: number): number {
  const x = v ?? fallback;
  if (!Number.isInteger(x) || x < 1) throw new InvalidArgumentError(`${name} must be a positive integer, got ${x}`);
  return x;
}

/** Fills in the defaults and checks that the pieces fit together. */
export function resolveGeometry(o: GeometryOptions, limits: GeometryLimits): Geometry {
  const maxNumSeqs = positive('--max-num-seqs', o.maxNumSeqs, GEOMETRY_DEFAULTS.maxNumSeqs);
  const maxNumBatchedTokens = positive('--max-num-batched-tokens', o.maxNumBatchedTokens, GEOMETRY_DEFAULTS.maxNumBatchedTokens);
  const prefillChunk = positive('--prefill-chunk', o.prefillChunk, Math.min(GEOMETRY_DEFAULTS.prefillChunk, maxNumBatchedTokens));
  const maxModelLen = positive('--max-model-len', o.maxModelLen, limits.maxContext);
  const blockSize = positive('--block-size', o.blockSize, GEOMETRY_DEFAULTS.blockSize);
  if (maxModelLen > limits.maxContext) throw new InvalidArgumentError(`--max-model-len ${maxModelLen} exceeds the model's context of ${limits.maxContext}`);
  if (maxModelLen < 2) throw new InvalidArgumentError('--max-model-len must be at least 2');
  const blockBytes = limits.kvBytesPerToken === undefined ? undefined : limits.kvBytesPerToken * blockSize;
  const free = limits.freeMemory ?? freemem();
  const toBlocks = (bytes: number, what: string): number => {
    if (blockBytes === undefined) throw new InvalidArgumentError(`${what} needs the model's bytes per token (a profile from this version of marginal calibrate), or give blocks instead`);
    return Math.floor(bytes / blockBytes);
  };
  const full = maxNumSeqs * Math.ceil(maxModelLen / blockSize);
  let kvBlocks: number;
  if (o.kvBlocks !== undefined && o.kvMemory !== undefined) throw new InvalidArgumentError('give --kv-blocks or --kv-memory, not both');
  if (o.kvBlocks !== undefined) kvBlocks = positive('--kv-blocks', o.kvBlocks, 1);
  else if (o.kvMemory !== undefined) kvBlocks = toBlocks(parseKvMemory(o.kvMemory, free), '--kv-memory');
  else kvBlocks = blockBytes === undefined || !Number.isFinite(free) ? full : Math.max(1, Math.min(full, Math.floor((GEOMETRY_DEFAULTS.kvMemoryFraction * free) / blockBytes)));
  const one = Math.ceil(maxModelLen / blockSize);
  if (kvBlocks < one) {
    throw new InvalidArgumentError(`the KV pool holds ${kvBlocks} blocks (${kvBlocks * blockSize} tokens), less than one sequence at --max-model-len ${maxModelLen} needs (${one} blocks): give more memory or a shorter --max-model-len`);
  }
  if (o.swapBlocks !== undefined && o.swapSpace !== undefined) throw new InvalidArgumentError('give --swap-blocks or --swap-space, not both');
  let swapBlocks = kvBlocks;
  if (o.swapBlocks !== undefined) {
    swapBlocks = o.swapBlocks;
    if (!Number.isInteger(swapBlocks) || swapBlocks < 0) throw new InvalidArgumentError(`--swap-blocks must be a non-negative integer, got ${swapBlocks}`);
  } else if (o.swapSpace !== undefined) {
    if (!Number.isFinite(o.swapSpace) || o.swapSpace < 0) throw new InvalidArgumentError(`--swap-space must be a non-negative number of GiB, got ${o.swapSpace}`);
    swapBlocks = o.swapSpace === 0 ? 0 : toBlocks(o.swapSpace * 2 ** 30, '--swap-space');
  }
  return { maxNumSeqs, maxNumBatchedTokens, prefillChunk, maxModelLen, blockSize, kvBlocks, swapBlocks };
}

/** One line for logs: the pool's capacity in tokens and what it means in sequences. */
export function describeGeometry(g: Geometry, kvBytesPerToken?: number): string {
  const tokens = g.kvBlocks * g.blockSize;
  const mem = kvBytesPerToken === undefined ? '' : ` (${formatBytes(tokens * kvBytesPerToken)})`;
  const atFull = Math.floor(g.kvBlocks / Math.ceil(g.maxModelLen / g.blockSize));
  return `KV pool ${g.kvBlocks} blocks × ${g.blockSize} tokens = ${tokens} tokens${mem}, ${atFull} sequences at the full ${g.maxModelLen}-token context; ` +
    `up to ${g.maxNumSeqs} sequences, ${g.maxNumBatchedTokens} tokens per step, ${g.prefillChunk}-token prefill chunks; ${g.swapBlocks} swap blocks`;
}

function formatBytes(b: number): string {
  if (b >= 2 ** 30) return `${(b / 2 ** 30).toFixed(2)} GiB`;
  if (b >= 2 ** 20) return `${(b / 2 ** 20).toFixed(1)} MiB`;
  return `${(b / 2 ** 10).toFixed(0)} KiB`;
}
