import { EngineCapacityError, InvalidArgumentError } from '../errors.js';
import type { Rng, SamplingParams } from './sampling.js';
import { KvOp, type Engine, type StepItem, type StepPlan, type StepResult } from './types.js';

interface Sequence {
  tokens: number[];
  blocks: number[];
  hostBlocks: number[];
  swapped: boolean;
}

/** One sequence's share of a DirectDriver step: tokens to feed after what it holds (a sampled token is fed by the next step), and whether to sample. */
export type DirectItem = [seq: number, tokens: ArrayLike<number>, sample: boolean];

/**
 * Drives an engine without a scheduler — calibration, benchmarks and tests of the engine
 * itself: sequences take pool blocks from a plain free list and each call builds one plan
 * (with the opens, closes and block moves queued since the last). Serving never uses it: there
 * the scheduler's block manager is the one account of the pool.
 */
export class DirectDriver {
  private readonly seqs = new Map<number, Sequence>();
  private readonly free: number[];
  private readonly hostFree: number[];
  private plan: StepPlan = { items: [], opens: [], closes: [], kvOps: [] };

  constructor(readonly engine: Engine) {
    const { totalBlocks, hostBlocks } = engine.info;
    this.free = Array.from({ length: totalBlocks }, (_, i) => totalBlocks - 1 - i);
    this.hostFree = Array.from({ length: hostBlocks }, (_, i) => hostBlocks - 1 - i);
  }

  get freeBlocks(): number {
    return this.free.length;
  }

  /** Positions `seq` holds. */
  length(seq: number): number {
    return this.seqs.get(seq)?.tokens.length ?? 0;
  }

  /** `seq`'s block table (grows as it does). */
  blocks(seq: number): readonly number[] {
    return this.get(seq).blocks;
  }

  /** Takes blocks for `seq` to reach `positions` ahead of time (a caller building its own plans). */
  reserve(seq: number, positions: number): void {
    const s = this.get(seq);
    while (s.blocks.length * this.engine.info.blockSize < positions) s.blocks.push(this.take());
  }

  /** Tokens `seq` holds (fed and sampled-then-fed). */
  tokens(seq: number): readonly number[] {
    return this.seqs.get(seq)?.tokens ?? [];
  }

  open(seq: number, sampling: SamplingParams, rng: Rng): void {
    if (this.seqs.has(seq)) throw new InvalidArgumentError(`sequence ${seq} is already open`);
    this.seqs.set(seq, { tokens: [], blocks: [], hostBlocks: [], swapped: false });
    this.plan.opens.push({ seq, sampling, rng });
  }

  close(seq: number): void {
    const s = this.seqs.get(seq);
    if (s === undefined) return;
    this.free.push(...s.blocks);
    this.hostFree.push(...s.hostBlocks);
    this.seqs.delete(seq);
    this.plan.closes.push(seq);
  }

  /** Drops `seq`'s positions (a recompute preemption): its sampling state stays on the engine. */
  reset(seq: number): void {
    const s = this.get(seq);
    this.free.push(...s.blocks);
    s.blocks.length = 0;
    s.tokens.length = 0;
  }

  swapOut(seq: number): void {
    const s = this.get(seq);
    if (s.blocks.length > this.hostFree.length) throw new EngineCapacityError('host blocks exhausted');
    for (const b of s.blocks) {
      const h = this.hostFree.pop() as number;
      s.hostBlocks.push(h);
      this.plan.kvOps.push(KvOp.swapOut, b, h);
    }
    this.free.push(...s.blocks);
    s.blocks.length = 0;
    s.swapped = true;
  }

  swapIn(seq: number): void {
    const s = this.get(seq);
    if (!s.swapped) throw new InvalidArgumentError(`sequence ${seq} is not swapped out`);
    for (const h of s.hostBlocks) {
      const b = this.take();
      s.blocks.push(b);
      this.plan.kvOps.push(KvOp.swapIn, h, b);
    }
    this.hostFree.push(...s.hostBlocks);
    s.hostBlocks.length = 0;
    s.swapped = false;
  }

  /**
   * Starts `seq` (open, empty) on the first `blocks` full blocks of `from`, shared, not copied:
   * what a prefix-cache hit is. It holds the first `keep` of their positions (all by default);
   * keeping fewer makes its next write land inside the last shared block, which is then copied
   * first (copy-on-write).
   */
  share(from: number, seq: number, blocks: number, keep?: number): void {
    const src = this.get(from);
    const s = this.get(seq);
    if (s.tokens.length > 0) throw new InvalidArgumentError(`sequence ${seq} is not empty`);
    const bs = this.engine.info.blockSize;
    const held = keep ?? blocks * bs;
    if (blocks * bs > src.tokens.length || held > blocks * bs || held <= (blocks - 1) * bs) throw new InvalidArgumentError(`cannot share ${blocks} full blocks of sequence ${from} keeping ${held} positions`);
    for (let b = 0; b < blocks; b++) s.blocks.push(src.blocks[b] as number);
    s.tokens.push(...src.tokens.slice(0, held));
    this.shared.add(seq);
  }

  private readonly shared = new Set<number>();

  async step(items: DirectItem[], keepLogits = false): Promise<StepResult> {
    const bs = this.engine.info.blockSize;
    const plan = this.plan;
    for (const [seq, tokens, sample] of items) {
      const s = this.get(seq);
      const offset = s.tokens.length;
      for (let k = 0; k < tokens.length; k++) s.tokens.push(tokens[k] as number);
      // Writing into a block another sequence also holds: copy it first.
      if (this.shared.has(seq) && offset % bs !== 0) {
        const i = Math.floor(offset / bs);
        const copy = this.take();
        plan.kvOps.push(KvOp.copy, s.blocks[i] as number, copy);
        s.blocks[i] = copy;
      }
      this.shared.delete(seq);
      while (s.blocks.length * bs < s.tokens.length) s.blocks.push(this.take());
      const item: StepItem = { seq, tokens: s.tokens, offset, count: tokens.length, sample, blocks: s.blocks };
      plan.items.push(item);
    }
    if (keepLogits) plan.keepLogits = true;
    this.plan = { items: [], opens: [], closes: [], kvOps: [] };
    try {
      return await this.engine.execute(plan);
    } catch (e) {
      // The engine applied nothing its checks rejected; the positions this step meant to add are not held.
      for (const [seq, tokens] of items) {
        const s = this.seqs.get(seq);
        if (s !== undefined) s.tokens.length = Math.max(0, s.tokens.length - tokens.length);
      }
      throw e;
    }
  }

  private take(): number {
    const b = this.free.pop();
    if (b === undefined) throw new EngineCapacityError(`all ${this.engine.info.totalBlocks} KV blocks are in use`);
    return b;
  }

  private get(seq: number): Sequence {
    const s = this.seqs.get(seq);
    if (s === undefined) throw new InvalidArgumentError(`sequence ${seq} is not open`);
    return s;
  }
}
