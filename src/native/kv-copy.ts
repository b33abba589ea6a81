import { native as loadedAddon, type NativeAddon } from './index.js';

/**
 * Block copies between per-layer KV caches and packed host copies, in one call per operation:
 * the TypeScript version costs two subarray views and two `set`s per layer and head (thousands
 * per block on a real model); the native one is a memmove loop.
 *
 * Layouts:
 * - cache: keys[layer] and values[layer], each [slot][kvHead][capacity][headDim];
 * - packed: [layer][k|v][kvHead][n][headDim], one Float32Array per run of n positions.
 *
 * A call moves positions [from + b*n, from + (b+1)*n) of one slot to or from packed[b], for each
 * b. The paged KV pool (src/kv/pool.ts, [kvHead][block][blockSize][headDim] per layer) is one
 * slot of capacity blocks × blockSize to it, so block `id` is positions [id·bs, (id+1)·bs):
 *
 *   swapOut(id, host):   kvCopy('gather',  keys, values, shape, 0, id * bs, bs, [hostBlock])
 *   swapIn(host, id):    kvCopy('scatter', keys, values, shape, 0, id * bs, bs, [hostBlock])
 *   copyBlock(src, dst): a gather of src into a scratch block, then a scatter to dst
 */
export type KvDirection = 'gather' | 'scatter';

export interface KvShape {
  readonly kvHeads: number;
  /** Positions per slot. */
  readonly capacity: number;
  readonly headDim: number;
}

export type KvCopy = (
  direction: KvDirection,
  keys: readonly Float32Array[],
  values: readonly Float32Array[],
  shape: KvShape,
  slot: number,
  from: number,
  n: number,
  packed: readonly Float32Array[],
) => void;

function whole(v: number, what: string): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${what} must be a non-negative integer, got ${v}`);
}

/**
 * Checks every bound before anything is copied, so both versions either copy all of it or throw
 * having copied nothing (`subarray` would otherwise clamp silently and `set` throw half-way).
 */
export function checkKvCopy(
  keys: readonly Float32Array[],
  values: readonly Float32Array[],
  shape: KvShape,
  slot: number,
  from: number,
  n: number,
  packed: readonly Float32Array[],
): void {
  const { kvHeads: H, capacity, headDim: hd } = shape;
  whole(H, 'kvHeads');
  whole(capacity, 'capacity');
  whole(hd, 'headDim');
  whole(slot, 'slot');
  whole(from, 'from');
  whole(n, 'n');
  if (keys.length !== values.length) throw new RangeError(`keys (${keys.length}) and values (${values.length}) must have one array per layer each`);
  if (from + packed.length * n > capacity) {
    throw new RangeError(`positions [${from}, ${from + packed.length * n}) run past the slot's capacity of ${capacity}`);
  }
  if (n === 0 || H === 0 || hd === 0 || keys.length === 0 || packed.length === 0) return;
  const slotBase = slot * H * capacity * hd;
  const cacheEnd = slotBase + (H - 1) * capacity * hd + (from + packed.length * n) * hd;
  for (let l = 0; l < keys.length; l++) {
    if (cacheEnd > keys[l]!.length || cacheEnd > values[l]!.length) throw new RangeError(`slot ${slot} is outside layer ${l}'s cache`);
  }
  const packedLength = keys.length * 2 * H * n * hd;
  for (let b = 0; b < packed.length; b++) {
    if (packedLength > packed[b]!.length) throw new RangeError(`packed[${b}] holds ${packed[b]!.length} floats, needs ${packedLength}`);
  }
}

export const kvCopyTs: KvCopy = (direction, keys, values, shape, slot, from, n, packed) => {
  checkKvCopy(keys, values, shape, slot, from, n, packed);
  const { kvHeads: H, capacity, headDim: hd } = shape;
  const span = n * hd;
  const slotBase = slot * H * capacity * hd;
  for (let b = 0; b < packed.length; b++) {
    const p = packed[b]!;
    const posOff = (from + b * n) * hd;
    for (let l = 0; l < keys.length; l++) {
      const k = keys[l]!;
      const v = values[l]!;
      const kBase = l * 2 * H * span;
      const vBase = kBase + H * span;
      for (let h = 0; h < H; h++) {
        const c = slotBase + h * capacity * hd + posOff;
        if (direction === 'scatter') {
          k.set(p.subarray(kBase + h * span, kBase + h * span + span), c);
          v.set(p.subarray(vBase + h * span, vBase + h * span + span), c);
        } else {
          p.set(k.subarray(c, c + span), kBase + h * span);
          p.set(v.subarray(c, c + span), vBase + h * span);
        }
      }
    }
  }
};

/** The addon's version, or undefined when it is not loaded. */
export const kvCopyNative: KvCopy | undefined = nativeKvCopy(loadedAddon);

function nativeKvCopy(addon: NativeAddon | undefined): KvCopy | undefined {
  if (addon === undefined) return undefined;
  return (direction, keys, values, shape, slot, from, n, packed) => {
    // Checked here too so both versions throw the same RangeError; the addon checks again
    // because it must never trust its caller with raw pointers.
    checkKvCopy(keys, values, shape, slot, from, n, packed);
    addon.kvCopy(direction === 'scatter', keys, values, packed, shape.kvHeads, shape.capacity, shape.headDim, slot, from, n);
  };
}

/** The native version when the addon is loaded, else the TypeScript one. */
export const kvCopy: KvCopy = kvCopyNative ?? kvCopyTs;

/** Which version `kvCopy` is. */
export const kvCopyBackend: 'native' | 'typescript' = kvCopyNative ? 'native' : 'typescript';
