import { Option, type Command } from 'commander';
import { intArg, numArg } from './args.js';
import type { GeometryOptions } from '../geometry.js';

/** The geometry flags as commander stores them: vLLM's names, and the older names kept as aliases. */
export interface GeometryCliOptions {
  maxNumSeqs?: number;
  maxSequences?: number;
  maxRunning?: number;
  maxNumBatchedTokens?: number;
  maxBatchTokens?: number;
  prefillChunk?: number;
  maxModelLen?: number;
  maxContext?: number;
  blockSize?: number;
  kvBlocks?: number;
  blocks?: number;
  kvMemory?: string;
  swapBlocks?: number;
  swapSpace?: number;
}

/** The serving geometry's flags, the same for serve, sim and tune (src/geometry.ts has the defaults). */
export function addGeometryOptions(c: Command): Command {
  const hidden = (flags: string, parse: (v: string) => number) => new Option(flags).argParser(parse).hideHelp();
  return c
    .option('--max-num-seqs <n>', 'sequences running at once (default 64)', intArg('--max-num-seqs'))
    .addOption(hidden('--max-sequences <n>', intArg('--max-sequences')))
    .addOption(hidden('--max-running <n>', intArg('--max-running')))
    .option('--max-num-batched-tokens <n>', 'tokens one step may process (default 512)', intArg('--max-num-batched-tokens'))
    .addOption(hidden('--max-batch-tokens <n>', intArg('--max-batch-tokens')))
    .option('--prefill-chunk <n>', 'largest prompt chunk a request gets per step (default 256)', intArg('--prefill-chunk'))
    .option('--max-model-len <n>', "positions per sequence, prompt plus output (default: the model's context)", intArg('--max-model-len'))
    .addOption(hidden('--max-context <n>', intArg('--max-context')))
    .option('--block-size <n>', 'positions per KV block (default 16)', intArg('--block-size'))
    .option('--kv-blocks <n>', 'KV pool size in blocks', intArg('--kv-blocks'))
    .addOption(hidden('--blocks <n>', intArg('--blocks')))
    .option('--kv-memory <size>', 'KV pool size: bytes (2GiB, 512MB) or a fraction of free memory (0.5); default: every sequence at full length, within 40% of free memory')
    .option('--swap-blocks <n>', 'host blocks preempted sequences can swap out to, 0 to always recompute (default: as many as the pool)', intArg('--swap-blocks'))
    .option('--swap-space <GiB>', 'host swap space in GiB, instead of --swap-blocks', numArg('--swap-space'));
}

export function geometryFromCli(o: GeometryCliOptions): GeometryOptions {
  const g: GeometryOptions = {};
  const pick = <K extends keyof GeometryOptions>(k: K, ...vs: (GeometryOptions[K] | undefined)[]) => {
    const v = vs.find((x) => x !== undefined);
    if (v !== undefined) g[k] = v;
  };
  pick('maxNumSeqs', o.maxNumSeqs, o.maxSequences, o.maxRunning);
  pick('maxNumBatchedTokens', o.maxNumBatchedTokens, o.maxBatchTokens);
  pick('prefillChunk', o.prefillChunk);
  pick('maxModelLen', o.maxModelLen, o.maxContext);
  pick('blockSize', o.blockSize);
  pick('kvBlocks', o.kvBlocks, o.blocks);
  pick('kvMemory', o.kvMemory);
  pick('swapBlocks', o.swapBlocks);
  pick('swapSpace', o.swapSpace);
  return g;
}

/** The same geometry as `marginal sim` flags (for replay commands). */
export function geometryFlags(g: GeometryOptions): string[] {
  const f: string[] = [];
  if (g.maxNumSeqs !== undefined) f.push(`--max-num-seqs ${g.maxNumSeqs}`);
  if (g.maxNumBatchedTokens !== undefined) f.push(`--max-num-batched-tokens ${g.maxNumBatchedTokens}`);
  if (g.prefillChunk !== undefined) f.push(`--prefill-chunk ${g.prefillChunk}`);
  if (g.maxModelLen !== undefined) f.push(`--max-model-len ${g.maxModelLen}`);
  if (g.blockSize !== undefined) f.push(`--block-size ${g.blockSize}`);
  if (g.kvBlocks !== undefined) f.push(`--kv-blocks ${g.kvBlocks}`);
  if (g.kvMemory !== undefined) f.push(`--kv-memory ${g.kvMemory}`);
  if (g.swapBlocks !== undefined) f.push(`--swap-blocks ${g.swapBlocks}`);
  if (g.swapSpace !== undefined) f.push(`--swap-space ${g.swapSpace}`);
  return f;
}
