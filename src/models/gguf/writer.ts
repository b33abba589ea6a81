import { closeSync, openSync, writeSync } from 'node:fs';
import { GGMLQuantizationType, GGUFValueType } from '@huggingface/gguf';

/**
 * A GGUF v3 writer (ggml's docs/gguf.md): header, typed metadata, tensor infos, then the
 * tensors, each at an offset aligned to `general.alignment` (32). Tensors are produced one at a
 * time, so a multi-gigabyte file never sits in memory. @huggingface/gguf parses these files
 * (the importer uses it); its serializer covers metadata only, hence this writer.
 */

export type GgufScalar = { type: GGUFValueType; value: number | bigint | boolean | string };
export type GgufArray = { type: GGUFValueType.ARRAY; subType: GGUFValueType; value: (number | bigint | boolean | string)[] };
export type GgufEntry = GgufScalar | GgufArray;

export interface GgufTensor {
  name: string;
  /** ggml order: ne[0] is the fastest-varying dimension (a row-major [rows, cols] matrix is [cols, rows]). */
  ne: number[];
  type: GGMLQuantizationType;
  /** The tensor's bytes, asked for when the writer reaches it. */
  data: () => Uint8Array;
}

export const GGUF_ALIGNMENT = 32;

/** Bytes per element group of the types this writer is given: [block elements, block bytes]. */
const TYPE_SIZE: Partial<Record<GGMLQuantizationType, [number, number]>> = {
  [GGMLQuantizationType.F32]: [1, 4],
  [GGMLQuantizationType.F16]: [1, 2],
  [GGMLQuantizationType.BF16]: [1, 2],
  [GGMLQuantizationType.Q8_0]: [32, 34],
  [GGMLQuantizationType.Q4_0]: [32, 18],
  // K-quants: the tests write them as raw blocks, for llama.cpp and the importer to decode.
  [GGMLQuantizationType.Q4_K]: [256, 144],
  [GGMLQuantizationType.Q5_K]: [256, 176],
  [GGMLQuantizationType.Q6_K]: [256, 210],
  [GGMLQuantizationType.Q2_K]: [256, 84],
};

export function ggmlTensorBytes(type: GGMLQuantizationType, ne: number[]): number {
  const size = TYPE_SIZE[type];
  if (size === undefined) throw new RangeError(`GGUF writer: tensor type ${GGMLQuantizationType[type] ?? type} is not supported`);
  const n = ne.reduce((a, b) => a * b, 1);
  if ((ne[0] ?? 0) % size[0] !== 0) throw new RangeError(`GGUF writer: a ${GGMLQuantizationType[type]} row needs a multiple of ${size[0]} elements, got ${ne[0]}`);
  return (n / size[0]) * size[1];
}

class ByteSink {
  private chunks: Uint8Array[] = [];
  length = 0;
  private readonly scratch = new DataView(new ArrayBuffer(8));

  bytes(b: Uint8Array): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  private fixed(n: number, set: (dv: DataView) => void): void {
    set(this.scratch);
    this.bytes(new Uint8Array(this.scratch.buffer.slice(0, n)));
  }
  u32(v: number): void {
    this.fixed(4, (dv) => dv.setUint32(0, v, true));
  }
  u64(v: number | bigint): void {
    this.fixed(8, (dv) => dv.setBigUint64(0, BigInt(v), true));
  }
  string(s: string): void {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  value(type: GGUFValueType, v: number | bigint | boolean | string): void {
    switch (type) {
      case GGUFValueType.UINT8:
        return this.fixed(1, (dv) => dv.setUint8(0, Number(v)));
      case GGUFValueType.INT8:
        return this.fixed(1, (dv) => dv.setInt8(0, Number(v)));
      case GGUFValueType.UINT16:
        return this.fixed(2, (dv) => dv.setUint16(0, Number(v), true));
      case GGUFValueType.INT16:
        return this.fixed(2, (dv) => dv.setInt16(0, Number(v), true));
      case GGUFValueType.UINT32:
        return this.fixed(4, (dv) => dv.setUint32(0, Number(v), true));
      case GGUFValueType.INT32:
        return this.fixed(4, (dv) => dv.setInt32(0, Number(v), true));
      case GGUFValueType.FLOAT32:
        return this.fixed(4, (dv) => dv.setFloat32(0, Number(v), true));
      case GGUFValueType.BOOL:
        return this.fixed(1, (dv) => dv.setUint8(0, v ? 1 : 0));
      case GGUFValueType.STRING:
        return this.string(String(v));
      case GGUFValueType.UINT64:
        return this.fixed(8, (dv) => dv.setBigUint64(0, BigInt(v), true));
      case GGUFValueType.INT64:
        return this.fixed(8, (dv) => dv.setBigInt64(0, BigInt(v), true));
      case GGUFValueType.FLOAT64:
        return this.fixed(8, (dv) => dv.setFloat64(0, Number(v), true));
      default:
        throw new RangeError(`GGUF writer: value type ${String(type)} is not a scalar`);
    }
  }
  pad(to: number): void {
    const n = (to - (this.length % to)) % to;
    if (n > 0) this.bytes(new Uint8Array(n));
  }
  concat(): Uint8Array {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}

export function writeGguf(path: string, metadata: Record<string, GgufEntry>, tensors: GgufTensor[]): void {
  const head = new ByteSink();
  head.bytes(new TextEncoder().encode('GGUF'));
  head.u32(3);
  head.u64(tensors.length);
  const entries = Object.entries(metadata);
  head.u64(entries.length);
  for (const [key, e] of entries) {
    head.string(key);
    head.u32(e.type);
    if (e.type === GGUFValueType.ARRAY) {
      const a = e as GgufArray;
      head.u32(a.subType);
      head.u64(a.value.length);
      for (const v of a.value) head.value(a.subType, v);
    } else {
      head.value(e.type, (e as GgufScalar).value);
    }
  }
  const sizes = tensors.map((t) => ggmlTensorBytes(t.type, t.ne));
  let offset = 0;
  tensors.forEach((t, i) => {
    head.string(t.name);
    head.u32(t.ne.length);
    for (const d of t.ne) head.u64(d);
    head.u32(t.type);
    head.u64(offset);
    offset += sizes[i] as number;
    offset += (GGUF_ALIGNMENT - (offset % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
  });
  head.pad(GGUF_ALIGNMENT);

  const fd = openSync(path, 'w');
  try {
    const write = (b: Uint8Array) => {
      let done = 0;
      while (done < b.length) done += writeSync(fd, b, done, b.length - done);
    };
    write(head.concat());
    const zeros = new Uint8Array(GGUF_ALIGNMENT);
    tensors.forEach((t, i) => {
      const data = t.data();
      if (data.length !== sizes[i]) throw new RangeError(`GGUF writer: tensor ${t.name} has ${data.length} bytes, its type and shape need ${sizes[i]}`);
      write(data);
      const pad = (GGUF_ALIGNMENT - (data.length % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
      if (pad > 0) write(zeros.subarray(0, pad));
    });
  } finally {
    closeSync(fd);
  }
}

/** Shorthands for metadata entries. */
export const kv = {
  str: (value: string): GgufEntry => ({ type: GGUFValueType.STRING, value }),
  u32: (value: number): GgufEntry => ({ type: GGUFValueType.UINT32, value }),
  i32: (value: number): GgufEntry => ({ type: GGUFValueType.INT32, value }),
  f32: (value: number): GgufEntry => ({ type: GGUFValueType.FLOAT32, value }),
  bool: (value: boolean): GgufEntry => ({ type: GGUFValueType.BOOL, value }),
  strs: (value: string[]): GgufEntry => ({ type: GGUFValueType.ARRAY, subType: GGUFValueType.STRING, value }),
  f32s: (value: number[]): GgufEntry => ({ type: GGUFValueType.ARRAY, subType: GGUFValueType.FLOAT32, value }),
  i32s: (value: number[]): GgufEntry => ({ type: GGUFValueType.ARRAY, subType: GGUFValueType.INT32, value }),
};
