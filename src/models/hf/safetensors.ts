import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointFormatError, UnsupportedModelError } from '../../errors.js';
import { bf16ToFloat, halfToFloat } from '../quant/ggml.js';

/**
 * Hugging Face safetensors (8-byte little-endian header length, a JSON header of name →
 * dtype, shape, data_offsets, then the data), single-file or sharded with
 * model.safetensors.index.json. The format is a page long; the npm packages that read it
 * fetch from the Hub rather than open local files, hence this reader.
 */
interface Entry {
  dtype: string;
  shape: number[];
  /** Absolute byte range in its file. */
  start: number;
  end: number;
  file: string;
}

export class SafetensorsFolder {
  private readonly entries = new Map<string, Entry>();

  private constructor(readonly dir: string) {}

  static open(dir: string): SafetensorsFolder {
    const f = new SafetensorsFolder(dir);
    const index = join(dir, 'model.safetensors.index.json');
    let files: string[];
    if (existsSync(index)) {
      let map: unknown;
      try {
        map = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map?: unknown }).weight_map;
      } catch (e) {
        throw new CheckpointFormatError(`${index} is not valid JSON: ${(e as Error).message}`);
      }
      if (map === null || typeof map !== 'object') throw new CheckpointFormatError(`${index} has no weight_map`);
      files = [...new Set(Object.values(map as Record<string, string>))];
    } else if (existsSync(join(dir, 'model.safetensors'))) {
      files = ['model.safetensors'];
    } else {
      throw new CheckpointFormatError(`${dir} has neither model.safetensors nor model.safetensors.index.json`);
    }
    for (const file of files) f.readHeader(file);
    return f;
  }

  private readHeader(file: string): void {
    const path = join(this.dir, file);
    if (!existsSync(path)) throw new CheckpointFormatError(`${path} (named in the index) is missing`);
    const fd = openSync(path, 'r');
    try {
      const len = Buffer.alloc(8);
      readSync(fd, len, 0, 8, 0);
      const n = Number(len.readBigUInt64LE(0));
      if (n <= 0 || n > 100 * 2 ** 20) throw new CheckpointFormatError(`${path}: implausible header length ${n}`);
      const head = Buffer.alloc(n);
      readSync(fd, head, 0, n, 8);
      let json: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
      try {
        json = JSON.parse(head.toString('utf8')) as typeof json;
      } catch (e) {
        throw new CheckpointFormatError(`${path}: header is not valid JSON: ${(e as Error).message}`);
      }
      for (const [name, t] of Object.entries(json)) {
        if (name === '__metadata__') continue;
        this.entries.set(name, { dtype: t.dtype, shape: t.shape, start: 8 + n + t.data_offsets[0], end: 8 + n + t.data_offsets[1], file: path });
      }
    } finally {
      closeSync(fd);
    }
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  shape(name: string): number[] | undefined {
    return this.entries.get(name)?.shape;
  }

  /** A tensor as float32 (F16 and BF16 widened exactly). */
  read(name: string): Float32Array {
    const e = this.entries.get(name);
    if (e === undefined) throw new CheckpointFormatError(`${this.dir} has no tensor ${name}`);
    const n = e.shape.reduce((a, b) => a * b, 1);
    const width = e.dtype === 'F32' ? 4 : e.dtype === 'F16' || e.dtype === 'BF16' ? 2 : 0;
    if (width === 0) throw new UnsupportedModelError(`tensor ${name} is ${e.dtype}; marginal reads F32, F16 and BF16 safetensors`);
    if (e.end - e.start !== n * width) throw new CheckpointFormatError(`tensor ${name}: ${e.end - e.start} bytes for ${n} ${e.dtype} values`);
    const b = new Uint8Array(e.end - e.start);
    const fd = openSync(e.file, 'r');
    try {
      let done = 0;
      while (done < b.length) {
        const k = readSync(fd, b, done, b.length - done, e.start + done);
        if (k === 0) throw new CheckpointFormatError(`${e.file} ends inside tensor ${name}`);
        done += k;
      }
    } finally {
      closeSync(fd);
    }
    if (e.dtype === 'F32') return new Float32Array(b.buffer);
    const h = new Uint16Array(b.buffer);
    const out = new Float32Array(n);
    const widen = e.dtype === 'F16' ? halfToFloat : bf16ToFloat;
    for (let i = 0; i < n; i++) out[i] = widen(h[i] as number);
    return out;
  }
}
