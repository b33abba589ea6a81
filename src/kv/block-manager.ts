import { EngineCapacityError } from '../errors.js';

/** How cached blocks (no running owner) are chosen for eviction. */
export interface EvictionPolicy {
  /** Lower is evicted first. Called only when a block must be found. */
  keepValue(block: CachedBlockInfo, now: number): number;
}

export interface CachedBlockInfo {
  readonly id: number;
  /** Depth in its hash chain: block i of a prompt holds tokens [i·bs, (i+1)·bs). */
  readonly depth: number;
  readonly hits: number;
  readonly createdAt: number;
  readonly lastUsedAt: number;
}


/**
 * The one account of KV memory: the engine's pool is exactly these blocks (block id = the
 * pool's block index), and the host blocks swapped-out sequences move to. Paged KV memory in
 * fixed-size blocks, with a content-addressed prefix cache in the manner of
 * vLLM's automatic prefix caching: a full block is named by a hash chained over its parent's
 * hash and its own tokens, so equal prefixes map to equal blocks. Hits are verified against the
 * stored tokens, never trusted on the hash alone. A block whose last owner leaves stays cached
 * (reusable) until memory is needed; which cached block goes first is the eviction policy's
 * call (LRU for vLLM-like policies, lowest keep-value for the pricing scheduler).
 *
 * Invariant: free + held + cached = total, checked by `check()`.
 */
export class BlockManager {
  readonly totalBlocks: number;
  readonly blockSize: number;
  readonly hostBlocks: number;
  private readonly hostFree: Int32Array;
  private hostFreeCount: number;
  private readonly refCount: Int32Array;
  private readonly hashOf: Float64Array;
  private readonly depthOf: Int32Array;
  private readonly hits: Int32Array;
  private readonly createdAt: Float64Array;
  private readonly lastUsedAt: Float64Array;
  /** Tokens of each registered block, for verification. */
  private readonly tokens: Int32Array;
  private readonly byHash = new Map<number, number>();
  private readonly freeList: Int32Array;
  private freeCount: number;
  /** Cached blocks (refCount 0, registered) in release order: Map keeps insertion order, so LRU is its first key. */
  private readonly cached = new Map<number, true>();
  private held = 0;
  evictions = 0;
  queries = 0;
  hitBlocks = 0;

  constructor(totalBlocks: number, blockSize: number, hostBlocks = 0) {
    if (!Number.isInteger(totalBlocks) || totalBlocks < 1) throw new EngineCapacityError(`totalBlocks must be a positive integer`);
    if (!Number.isInteger(hostBlocks) || hostBlocks < 0) throw new EngineCapacityError(`hostBlocks must be a non-negative integer`);
    this.totalBlocks = totalBlocks;
    this.blockSize = blockSize;
    this.hostBlocks = hostBlocks;
    this.hostFree = new Int32Array(hostBlocks);
    for (let i = 0; i < hostBlocks; i++) this.hostFree[i] = hostBlocks - 1 - i;
    this.hostFreeCount = hostBlocks;
    this.refCount = new Int32Array(totalBlocks);
    this.hashOf = new Float64Array(totalBlocks).fill(NaN);
    this.depthOf = new Int32Array(totalBlocks);
    this.hits = new Int32Array(totalBlocks);
    this.createdAt = new Float64Array(totalBlocks);
    this.lastUsedAt = new Float64Array(totalBlocks);
    this.tokens = new Int32Array(totalBlocks * blockSize);
    this.freeList = new Int32Array(totalBlocks);
    for (let i = 0; i < totalBlocks; i++) this.freeList[i] = totalBlocks - 1 - i;
    this.freeCount = totalBlocks;
  }

  get freeBlocks(): number {
    return this.freeCount;
  }
  get cachedBlocks(): number {
    return this.cached.size;
  }
  get heldBlocks(): number {
    return this.held;
  }
  /** Blocks that can be handed out now: free ones plus cached ones that may be evicted. */
  get availableBlocks(): number {
    return this.freeCount + this.cached.size;
  }
  get freeHostBlocks(): number {
    return this.hostFreeCount;
  }
  /** Fraction of memory held by running sequences (cached blocks are reclaimable, so not counted). */
  get utilization(): number {
    return this.held / this.totalBlocks;
  }

  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  /**
   * Chain hashes of the first `fullBlocks` blocks, extending `into` (which may already hold a
   * prefix of the chain). A 53-bit value from two 32-bit FNV-style lanes: collisions are
   * possible in principle, which is why lookups verify tokens.
   */
  chainHashes(tokens: ArrayLike<number>, fullBlocks = Math.floor(tokens.length / this.blockSize), into: number[] = []): number[] {
    let parent = into.length > 0 ? (into[into.length - 1] as number) : 0;
    for (let b = into.length; b < fullBlocks; b++) {
      parent = this.hashBlock(parent, tokens, b * this.blockSize);
      into.push(parent);
    }
    return into;
  }

  /** One link of the chain: the block at `offset` given its parent's hash (0 for the first block). */
  hashBlock(parent: number, tokens: ArrayLike<number>, offset: number): number {
    let h1 = (0x811c9dc5 ^ (parent >>> 0)) >>> 0;
    let h2 = (0x01000193 ^ Math.floor(parent / 4294967296)) >>> 0;
    for (let i = offset; i < offset + this.blockSize; i++) {
      const t = tokens[i] as number;
      h1 = Math.imul(h1 ^ t, 0x01000193) >>> 0;
      h2 = Math.imul(h2 ^ (t + 0x9e3779b9), 0x85ebca6b) >>> 0;
      h2 = (h2 ^ (h2 >>> 13)) >>> 0;
    }
    return (h2 & 0x1fffff) * 4294967296 + h1;
  }

  /**
   * Leading blocks of `tokens` already cached, verified token by token. Returns how many blocks
   * match; does not take them (see `acquireCached`). At most `maxBlocks` are matched, so a
   * caller can leave the last token to compute (its logits are needed).
   */
  matchPrefix(tokens: ArrayLike<number>, hashes: readonly number[], maxBlocks: number): number {
    const bs = this.blockSize;
    let n = 0;
    for (; n < Math.min(hashes.length, maxBlocks); n++) {
      const id = this.byHash.get(hashes[n] as number);
      if (id === undefined) break;
      const base = id * bs;
      let same = true;
      for (let i = 0; i < bs; i++) {
        if (this.tokens[base + i] !== tokens[n * bs + i]) {
          same = false;
          break;
        }
      }
      if (!same) break;
    }
    return n;
  }

  /** Takes the first `n` matched blocks for a new owner (they leave the cached set). */
  acquireCached(hashes: readonly number[], n: number, now: number, into: number[]): void {
    this.queries++;
    for (let b = 0; b < n; b++) {
      const id = this.byHash.get(hashes[b] as number) as number;
      if (this.refCount[id] === 0) {
        this.cached.delete(id);
        this.held++;
      }
      this.refCount[id] = (this.refCount[id] as number) + 1;
      this.hits[id] = (this.hits[id] as number) + 1;
      this.lastUsedAt[id] = now;
      this.hitBlocks++;
      into.push(id);
    }
  }

  /**
   * Fresh blocks for an owner: from the free list, else by evicting cached blocks in the
   * policy's order. Throws if `n` exceed what is available (callers check `availableBlocks`).
   */
  allocate(n: number, now: number, policy: EvictionPolicy | undefined, into: number[]): void {
    if (n > this.availableBlocks) throw new EngineCapacityError(`KV cache full: need ${n} blocks, ${this.availableBlocks} available`);
    for (let k = 0; k < n; k++) {
      if (this.freeCount === 0) this.evictOne(now, policy);
      const id = this.freeList[--this.freeCount] as number;
      this.refCount[id] = 1;
      this.createdAt[id] = now;
      this.lastUsedAt[id] = now;
      this.hits[id] = 0;
      this.held++;
      into.push(id);
    }
  }

  private evictOne(now: number, policy: EvictionPolicy | undefined): void {
    // LRU order's first key is also the fallback when every keep-value is NaN or Infinity.
    let victim = this.cached.keys().next().value as number;
    if (policy !== undefined) {
      let best = Infinity;
      for (const id of this.cached.keys()) {
        const v = policy.keepValue(this.fill(id), now);
        if (v < best) {
          best = v;
          victim = id;
        }
      }
    }
    this.dropCached(victim);
  }

  /** One reused record for scans over every cached block (no allocation per block). */
  private readonly scratch = { id: 0, depth: 0, hits: 0, createdAt: 0, lastUsedAt: 0 };

  private fill(id: number): CachedBlockInfo {
    const s = this.scratch;
    s.id = id;
    s.depth = this.depthOf[id] as number;
    s.hits = this.hits[id] as number;
    s.createdAt = this.createdAt[id] as number;
    s.lastUsedAt = this.lastUsedAt[id] as number;
    return s;
  }

  /**
   * Whether a holder of `id` must copy it before writing into it: another holder shares it, or
   * it is named in the prefix cache (its content is what its name says).
   */
  isShared(id: number): boolean {
    return (this.refCount[id] as number) > 1 || this.isRegistered(id);
  }

  /** One more owner for a block already held (a request's streams sharing its prompt's blocks). */
  share(id: number, now: number, into: number[]): void {
    if (!((this.refCount[id] as number) > 0)) throw new EngineCapacityError(`block ${id} is not held, so it cannot be shared`);
    this.refCount[id] = (this.refCount[id] as number) + 1;
    this.lastUsedAt[id] = now;
    into.push(id);
  }

  /** Host blocks for a swap-out. Throws if `n` exceed the free ones (callers check `freeHostBlocks`). */
  allocateHost(n: number, into: number[]): void {
    if (n > this.hostFreeCount) throw new EngineCapacityError(`host swap space full: need ${n} blocks, ${this.hostFreeCount} free`);
    for (let k = 0; k < n; k++) into.push(this.hostFree[--this.hostFreeCount] as number);
  }

  releaseHost(ids: number[]): void {
    for (const id of ids) this.hostFree[this.hostFreeCount++] = id;
    ids.length = 0;
  }

  /**
   * A holder's share of `ids`: each block counts 1 / (its holders), so the holders of a shared
   * block (a request's n streams on its prompt, requests on a common prefix) pay its rent once
   * between them, not once each.
   */
  heldShare(ids: readonly number[]): number {
    let share = 0;
    for (let k = 0; k < ids.length; k++) share += 1 / (this.refCount[ids[k] as number] as number);
    return share;
  }

  /** Of `ids`, how many only their holder references: what preempting that holder frees. */
  exclusiveBlocks(ids: readonly number[]): number {
    let n = 0;
    for (const id of ids) if (this.refCount[id] === 1) n++;
    return n;
  }

  /** keepValue of one cached block, through the reused record. */
  keepValueOf(id: number, now: number, policy: EvictionPolicy): number {
    return policy.keepValue(this.fill(id), now);
  }

  /** Evicts a specific cached block (the pricing policy drops blocks whose keep-value is below rent). */
  dropCached(id: number): void {
    if (!this.cached.delete(id)) return;
    this.byHash.delete(this.hashOf[id] as number);
    this.hashOf[id] = NaN;
    this.freeList[this.freeCount++] = id;
    this.evictions++;
  }

  /** Cached blocks, oldest release first (for policies that sweep them). */
  cachedIds(): IterableIterator<number> {
    return this.cached.keys();
  }

  info(id: number): CachedBlockInfo {
    return { id, depth: this.depthOf[id] as number, hits: this.hits[id] as number, createdAt: this.createdAt[id] as number, lastUsedAt: this.lastUsedAt[id] as number };
  }

  /**
   * Names a full block by its content so later prompts can hit it. If an identical block is
   * already registered (two requests computed the same prefix at once), the new one stays
   * unnamed and is simply freed when its owner leaves.
   */
  register(id: number, hash: number, depth: number, tokens: ArrayLike<number>, offset: number): boolean {
    if (!Number.isNaN(this.hashOf[id] as number) || this.byHash.has(hash)) return false;
    this.hashOf[id] = hash;
    this.depthOf[id] = depth;
    this.byHash.set(hash, id);
    const bs = this.blockSize;
    for (let i = 0; i < bs; i++) this.tokens[id * bs + i] = tokens[offset + i] as number;
    return true;
  }

  isRegistered(id: number): boolean {
    return !Number.isNaN(this.hashOf[id] as number);
  }

  /** An owner lets go of its blocks: registered ones become cached, the rest free. */
  release(ids: number[], now: number): void {
    // Release deepest first so that, under LRU, a chain's tail is evicted before its head.
    for (let k = ids.length - 1; k >= 0; k--) this.releaseOne(ids[k] as number, now);
    ids.length = 0;
  }

  releaseOne(id: number, now: number): void {
    const rc = (this.refCount[id] as number) - 1;
    this.refCount[id] = rc;
    if (rc > 0) return;
    this.held--;
    this.lastUsedAt[id] = now;
    if (this.isRegistered(id)) this.cached.set(id, true);
    else this.freeList[this.freeCount++] = id;
  }

  /** Throws unless free + held + cached = total and reference counts agree. */
  check(): void {
    let referenced = 0;
    for (let i = 0; i < this.totalBlocks; i++) if ((this.refCount[i] as number) > 0) referenced++;
    if (referenced !== this.held) throw new Error(`block accounting: ${referenced} referenced, ${this.held} held`);
    if (this.freeCount + this.held + this.cached.size !== this.totalBlocks) {
      throw new Error(`block accounting: free ${this.freeCount} + held ${this.held} + cached ${this.cached.size} != ${this.totalBlocks}`);
    }
    if (this.hostFreeCount < 0 || this.hostFreeCount > this.hostBlocks) throw new Error(`host block accounting: ${this.hostFreeCount} free of ${this.hostBlocks}`);
  }
}
