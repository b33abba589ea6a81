import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { ModelNotFoundError } from '../errors.js';
import { importGguf } from './gguf/import.js';
import { importHf, isSafetensorsFolder } from './hf/import.js';
import { packageRoot } from './importers.js';
import { CONFIG_FILE, GRAPH_VERSION } from './modeldir.js';
import type { QuantizeOptions } from './quant/formats.js';

/** The local model store: models/ beside the package, or MARGINAL_MODEL_STORE. */
export function storeDir(): string {
  return process.env.MARGINAL_MODEL_STORE ?? join(packageRoot(), 'models');
}

export interface ResolveOptions {
  log?: (line: string) => void;
  /** Progress of a first-use import (done and total weight tensors). */
  onProgress?: (done: number, total: number) => void;
  quantize?: QuantizeOptions;
  maxContext?: number;
}

/** A source's identity for the store: its path, and the size and modification time of its files. */
function stamp(path: string, files: string[], o: ResolveOptions): string {
  const h = createHash('sha256').update(resolve(path));
  for (const f of files) {
    const s = statSync(f);
    h.update(`\0${basename(f)}\0${s.size}\0${s.mtimeMs}`);
  }
  h.update(JSON.stringify([o.quantize ?? {}, o.maxContext ?? null]));
  return h.digest('hex').slice(0, 12);
}

function current(dir: string): boolean {
  const cfg = join(dir, CONFIG_FILE);
  return existsSync(cfg) && (JSON.parse(readFileSync(cfg, 'utf8')) as { graphVersion?: number }).graphVersion === GRAPH_VERSION;
}

/**
 * What `--model` names, as a model directory: a marginal directory or an ONNX export as it is;
 * a GGUF file or a Hugging Face safetensors folder imported into the store on first use and
 * reused while the source (and the import options) stay the same. An import writes to a
 * private folder and renames it into place, so concurrent servers never see half a model.
 */
export async function resolveModel(arg: string, o: ResolveOptions = {}): Promise<string> {
  if (!existsSync(arg)) throw new ModelNotFoundError(`${arg} does not exist`);
  const isGguf = statSync(arg).isFile();
  const isHf = !isGguf && !existsSync(join(arg, CONFIG_FILE)) && isSafetensorsFolder(arg);
  if (!isGguf && !isHf) return arg;
  const files = isGguf ? [arg] : readdirSync(arg).filter((f) => f.endsWith('.json') || f.endsWith('.safetensors')).map((f) => join(arg, f));
  const name = basename(resolve(arg)).replace(/\.gguf$/i, '').replace(/[^A-Za-z0-9._-]+/g, '_');
  const dir = join(storeDir(), `${isGguf ? 'gguf' : 'hf'}-${name}-${stamp(arg, files, o)}`);
  if (current(dir)) {
    o.log?.(`marginal: using ${dir} (imported from ${arg} before)`);
    return dir;
  }
  o.log?.(`marginal: importing ${arg} into ${dir}`);
  const partial = `${dir}.partial-${process.pid}`;
  rmSync(partial, { recursive: true, force: true });
  try {
    const opts = { log: o.log, onProgress: o.onProgress, quantize: o.quantize, maxContext: o.maxContext };
    if (isGguf) await importGguf(arg, partial, opts);
    else importHf(arg, partial, opts);
    if (current(dir)) rmSync(partial, { recursive: true, force: true });
    else {
      rmSync(dir, { recursive: true, force: true });
      renameSync(partial, dir);
    }
  } catch (e) {
    rmSync(partial, { recursive: true, force: true });
    throw e;
  }
  return dir;
}
