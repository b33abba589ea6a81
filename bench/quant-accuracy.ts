/**
 * What quantization costs in accuracy, on the real stories260K: for each weight format, greedy
 * agreement with float32 on the llama2.c reference prompts (and, where the text diverges, how
 * near a tie float32 itself was there), and teacher-forced mean KL(fp32 ‖ quantized), top-1
 * agreement and perplexity on float32's own samples.
 *
 *   npm run bench:quant-accuracy -- [--samples 32] [--length 255]
 */
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { importLlama2c, packageRoot } from '../src/models/importers.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { fp32Reference, measureAccuracy, sampleCorpus } from '../src/models/quant/accuracy.js';
import type { QuantizeOptions } from '../src/models/quant/formats.js';

const o = new Command().option('--samples <n>', 'float32 samples in the corpus', '32').option('--length <n>', 'tokens per sample', '255').parse().opts<{ samples: string; length: string }>();
const shared = join(packageRoot(), '..', 'shared', 'models', 'stories260K');
if (!existsSync(shared)) throw new Error(`stories260K needs ../shared (looked in ${shared})`);
const ck = join(shared, 'stories260K.bin');
const tok = join(shared, 'tok512.bin');
const work = mkdtempSync(join(tmpdir(), 'marginal-qacc-'));
importLlama2c(ck, tok, join(work, 'fp32'), { flavours: ['fast'] });
const fp32 = await loadModelDir(join(work, 'fp32'));
const prompts = ['', 'Zoo'];
const corpus = await sampleCorpus(fp32, Number(o.samples), Number(o.length));
const reference = await fp32Reference(fp32, { prompts, maxTokens: 200, corpus });

const variants: [string, QuantizeOptions][] = [
  ['q8', { weights: 'q8' }],
  ['q8, classifier fp32', { weights: 'q8', classifier: 'fp32' }],
  ['q8, classifier + embeddings fp32', { weights: 'q8', classifier: 'fp32', embeddings: 'fp32' }],
  ['q4', { weights: 'q4' }],
  ['q4, classifier q8', { weights: 'q4', classifier: 'q8' }],
  ['q4, classifier + embeddings fp32', { weights: 'q4', classifier: 'fp32', embeddings: 'fp32' }],
];
console.log(`stories260K, corpus: ${corpus.length} float32 samples × ${o.length} tokens (temperature 1); greedy: 200 tokens from "" and from "Zoo"\n`);
console.log('| weights | "" agrees | "Zoo" agrees | fp32 lead where it diverges (nats) | mean KL (nats/token) | max KL | top-1 agreement | perplexity (fp32 → quantized) |');
console.log('|---|---:|---:|---|---:|---:|---:|---|');
const texts: string[] = [];
for (const [name, quantize] of variants) {
  const dir = join(work, name.replace(/[^a-z0-9]+/g, '-'));
  importLlama2c(ck, tok, dir, { flavours: ['fast'], quantize });
  const r = await measureAccuracy(reference, await loadModelDir(dir));
  const g = (i: number) => r.greedy[i] as (typeof r.greedy)[number];
  const lead = r.greedy.map((x) => (x.divergesAt === null ? '—' : `token ${x.divergesAt}: ${x.fp32Margin?.toFixed(3)}`)).join('; ');
  console.log(
    `| ${name} | ${g(0).agreed}/${g(0).generated} | ${g(1).agreed}/${g(1).generated} | ${lead} | ${r.meanKl.toExponential(2)} | ${r.maxKl.toFixed(3)} | ${(100 * r.top1Agreement).toFixed(2)}% | ${r.fp32Perplexity.toFixed(3)} → ${r.perplexity.toFixed(3)} (${(100 * (r.perplexity / r.fp32Perplexity - 1)).toFixed(2)}%) |`,
  );
  texts.push(`${name}, "Zoo": Zoo${g(1).text.slice(0, 160)}…`);
}
console.log('\n' + texts.join('\n'));
