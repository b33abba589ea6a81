import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TokenizerFormatError } from '../errors.js';
import { readLlama2cCheckpoint } from './llama/weights.js';
import { syntheticShape, syntheticWeights } from './llama/synthetic.js';
import { GRAPH_VERSION, writeModelDir, type Flavour, type ModelConfig } from './modeldir.js';
import type { QuantizeOptions } from './quant/formats.js';
import { syntheticTokenizerBuffer } from './synthetic-tokenizer.js';
import { Llama2cTokenizer } from './tokenizer/llama2c.js';

export interface ImportOptions {
  flavours?: Flavour[];
  quantize?: QuantizeOptions;
  log?: (line: string) => void;
}

/** `marginal import llama2c CKPT.bin TOK.bin --out DIR [--quantize q8|q4]` */
export function importLlama2c(checkpoint: string, tokenizerPath: string, out: string, o: ImportOptions = {}): ModelConfig {
  const ck = readLlama2cCheckpoint(checkpoint);
  let tok: Buffer;
  try {
    tok = readFileSync(tokenizerPath);
  } catch (e) {
    throw new TokenizerFormatError(`cannot read ${tokenizerPath}: ${(e as Error).message}`);
  }
  // Parse before writing anything, so a bad tokenizer leaves no half-written model behind.
  Llama2cTokenizer.fromBuffer(tok, ck.shape.vocabSize);
  return writeModelDir({
    dir: out,
    name: basename(checkpoint).replace(/\.bin$/, ''),
    shape: ck.shape,
    weights: ck.weights,
    tokenizer: tok,
    synthetic: false,
    description: `llama2.c checkpoint ${basename(checkpoint)}`,
    source: checkpoint,
    ...o,
  });
}

/** The package root, whether running from src/ (tsx) or dist/. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}

/** The Llama 2 tokenizer beside the checkout (../shared), or where MARGINAL_LLAMA2_TOKENIZER points. */
export function findLlama2Tokenizer(): string | undefined {
  const candidates = [
    process.env.MARGINAL_LLAMA2_TOKENIZER,
    join(packageRoot(), '..', 'shared', 'models', 'llama2-tokenizer', 'tokenizer.bin'),
    resolve('..', 'shared', 'models', 'llama2-tokenizer', 'tokenizer.bin'),
  ];
  return candidates.find((p): p is string => p !== undefined && existsSync(p));
}

/** `marginal synth --shape NAME --out DIR [--quantize q8|q4]` */
export function synthesize(shapeName: string, out: string, opts: ImportOptions = {}): ModelConfig {
  const entry = syntheticShape(shapeName);
  let tokenizer: Buffer;
  let tokNote: string;
  const llama2 = entry.tokenizer === 'llama2' ? findLlama2Tokenizer() : undefined;
  if (llama2 !== undefined) {
    tokenizer = readFileSync(llama2);
    tokNote = 'Llama 2 tokenizer';
  } else {
    if (entry.tokenizer === 'llama2') opts.log?.('marginal: Llama 2 tokenizer not found (set MARGINAL_LLAMA2_TOKENIZER); using a synthetic tokenizer');
    tokenizer = syntheticTokenizerBuffer(entry.shape.vocabSize);
    tokNote = 'synthetic tokenizer';
  }
  return writeModelDir({
    dir: out,
    name: `synthetic-${shapeName}`,
    shape: entry.shape,
    weights: syntheticWeights(),
    tokenizer,
    synthetic: true,
    description: `synthetic model in ${entry.about}, random weights, ${tokNote}`,
    ...opts,
  });
}

export const DEFAULT_SHAPE = 'stories15m';

/** Writes a synthetic model into `dir` unless an up-to-date one is already there. */
export function ensureSynthetic(shape: string, dir: string, log?: (s: string) => void): string {
  const cfg = join(dir, 'marginal.json');
  const current = existsSync(cfg) && (JSON.parse(readFileSync(cfg, 'utf8')) as { graphVersion?: number }).graphVersion === GRAPH_VERSION;
  if (!current) {
    log?.(`marginal: generating a synthetic ${shape} model (random weights) in ${dir}`);
    synthesize(shape, dir, log ? { log } : {});
  }
  return dir;
}

/** The built-in default model, generated on first use. */
export function defaultModelDir(log?: (s: string) => void): string {
  return ensureSynthetic(DEFAULT_SHAPE, process.env.MARGINAL_DEFAULT_MODEL ?? join(packageRoot(), 'models', `synthetic-${DEFAULT_SHAPE}`), log);
}
