import { EngineCapacityError } from '../errors.js';

/**
 * Accounts KV memory in fixed-size blocks: the unit the scheduler prices. Physical storage is
 * the engine's concern; this pool only knows how many blocks exist and who holds them.
 */
export class BlockPool {
  private free: number;
  private readonly held = new Map<number, number>();

  constructor(
    readonly totalBlocks: number,
    readonly blockSize: number,
  ) {
    this.free = totalBlocks;
  }

  get freeBlocks(): number {
    return this.free;
  }

  get usedBlocks(): number {
    return this.totalBlocks - this.free;
  }

  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  heldBy(owner: number): number {
    return this.held.get(owner) ?? 0;
  }

  /** Grows `owner`'s holding to cover `tokens` tokens. */
  ensure(owner: number, tokens: number): void {
    const want = this.blocksFor(tokens);
    const have = this.heldBy(owner);
    if (want <= have) return;
    if (want - have > this.free) {
      throw new EngineCapacityError(`KV cache full: need ${want - have} more blocks, ${this.free} free of ${this.totalBlocks}`);
    }
    this.free -= want - have;
    this.held.set(owner, want);
  }

  release(owner: number): void {
    this.free += this.heldBy(owner);
    this.held.delete(owner);
  }
}
