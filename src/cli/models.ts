import { describeModel, loadModelDir } from '../models/modeldir.js';
import { importLlama2c, synthesize } from '../models/importers.js';

const log = (s: string) => process.stderr.write(s + '\n');

export async function runImportLlama2c(checkpoint: string, tokenizer: string, opts: { out: string }): Promise<void> {
  importLlama2c(checkpoint, tokenizer, opts.out);
  log(`wrote ${describeModel(await loadModelDir(opts.out))} to ${opts.out}`);
}

export async function runSynth(opts: { shape: string; out: string }): Promise<void> {
  synthesize(opts.shape, opts.out, { log });
  log(`wrote ${describeModel(await loadModelDir(opts.out))} to ${opts.out}`);
}
