import { describeModel, loadModelDir } from '../models/modeldir.js';
import { importLlama2c, synthesize } from '../models/importers.js';
import { importGguf } from '../models/gguf/import.js';
import { importHf } from '../models/hf/import.js';
import { quantizeOptions } from '../models/quant/formats.js';
import { weightProgress } from './progress.js';

const log = (s: string) => process.stderr.write(s + '\n');

interface QuantizeFlags {
  quantize?: string;
  classifier?: string;
  embeddings?: string;
  blockSize?: number;
}

export async function runImportLlama2c(checkpoint: string, tokenizer: string, opts: { out: string } & QuantizeFlags): Promise<void> {
  importLlama2c(checkpoint, tokenizer, opts.out, { quantize: quantizeOptions(opts), log });
  log(`wrote ${describeModel(await loadModelDir(opts.out))} to ${opts.out}`);
}

export async function runSynth(opts: { shape: string; out: string } & QuantizeFlags): Promise<void> {
  synthesize(opts.shape, opts.out, { log, quantize: quantizeOptions(opts) });
  log(`wrote ${describeModel(await loadModelDir(opts.out))} to ${opts.out}`);
}

export async function runImportGguf(file: string, opts: { out: string; maxContext?: number } & QuantizeFlags): Promise<void> {
  const progress = weightProgress('importing');
  try {
    await importGguf(file, opts.out, { quantize: quantizeOptions(opts), maxContext: opts.maxContext, log, onProgress: progress.onProgress });
  } finally {
    progress.stop();
  }
  log(`wrote ${describeModel(await loadModelDir(opts.out))} to ${opts.out}`);
}

export async function runImportHf(dir: string, opts: { out: string; maxContext?: number } & QuantizeFlags): Promise<void> {
  const progress = weightProgress('importing');
  try {
    importHf(dir, opts.out, { quantize: quantizeOptions(opts), maxContext: opts.maxContext, log, onProgress: progress.onProgress });
  } finally {
    progress.stop();
  }
  log(`wrote ${describeModel(await loadModelDir(opts.out))} to ${opts.out}`);
}
