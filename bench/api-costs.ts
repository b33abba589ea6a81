/**
 * What structured output and logprobs cost per decode step, side by side in one run: B
 * sequences decode greedily, and each round runs the same number of steps in each mode, the
 * modes interleaved so the machine's noise falls on all of them alike:
 *
 *   plain     greedy rows, served by the in-graph top-k (no full logits copied out)
 *   logprobs  greedy rows with logprobs: 5 (full logits, a log-sum-exp and a top-5 per row)
 *   grammar   greedy rows under a json_object grammar: each step every row's xgrammar matcher
 *             accepts its last token and computes the next mask, which the engine applies
 *
 *   node --import tsx bench/api-costs.ts [--model stories15m] [--batch 1,32] [--steps 24] [--rounds 3] [--json FILE]
 */
import { Command } from 'commander';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { DirectDriver, type DirectItem } from '../src/engine/direct.js';
import { ensureSynthetic, packageRoot } from '../src/models/importers.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { GrammarEngine, type TokenMasker } from '../src/sampling/grammar.js';
import { validateSamplingParams } from '../src/sampling/params.js';
import { Rng } from '../src/sampling/rng.js';

const o = new Command()
  .option('--model <shape>', 'synthetic shape', 'stories15m')
  .option('--batch <list>', 'batch sizes', '1,32')
  .option('--steps <n>', 'decode steps per mode per round', '24')
  .option('--rounds <n>', 'rounds', '3')
  .option('--json <file>', 'write results as JSON')
  .parse()
  .opts<{ model: string; batch: string; steps: string; rounds: string; json?: string }>();

const dir = ensureSynthetic(o.model, join(packageRoot(), 'models', `bench-${o.model}`), (l) => console.error(l));
const model = await loadModelDir(dir);
const grammars = new GrammarEngine(model.tokenizer, model.vocabSize, model.stopIds);
const t0 = performance.now();
await grammars.matcher({ kind: 'json_object' }, 'bench');
console.error(`xgrammar: vocabulary of ${model.vocabSize} prepared and json_object compiled in ${(performance.now() - t0).toFixed(0)} ms`);

type Mode = 'plain' | 'logprobs' | 'grammar';
const modes: Mode[] = ['plain', 'logprobs', 'grammar'];
const results: { batch: number; mode: Mode; msPerStep: number; maskMsPerStep: number }[] = [];
const steps = Number(o.steps);
const prompt = model.tokenizer.encode('Once upon a time there was a', { bos: true });

for (const B of o.batch.split(',').map(Number)) {
  const engines = new Map<Mode, OnnxEngine>();
  const drivers = new Map<Mode, DirectDriver>();
  const state = new Map<Mode, { tokens: number[][]; maskers: TokenMasker[] }>();
  for (const mode of modes) {
    const e = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: B, maxContext: 256 });
    const d = new DirectDriver(e);
    const sampling = validateSamplingParams(mode === 'logprobs' ? { temperature: 0, logprobs: 5 } : { temperature: 0 });
    const tokens: number[][] = [];
    const maskers: TokenMasker[] = [];
    for (let s = 0; s < B; s++) {
      d.open(s, sampling, new Rng(s));
      tokens.push(prompt.slice());
      if (mode === 'grammar') maskers.push(await grammars.matcher({ kind: 'json_object' }, 'bench'));
    }
    // Prefill, sampling each sequence's first token.
    const first = await d.step(tokens.map((t, s) => [s, t, true]));
    tokens.forEach((t, s) => t.push(first.tokens[s] as number));
    engines.set(mode, e);
    drivers.set(mode, d);
    state.set(mode, { tokens, maskers });
  }
  const time = new Map<Mode, { ms: number; mask: number; n: number }>(modes.map((m) => [m, { ms: 0, mask: 0, n: 0 }]));
  for (let round = 0; round < Number(o.rounds); round++) {
    for (const mode of modes) {
      const d = drivers.get(mode) as DirectDriver;
      const st = state.get(mode) as { tokens: number[][]; maskers: TokenMasker[] };
      const acc = time.get(mode) as { ms: number; mask: number; n: number };
      for (let k = 0; k < steps; k++) {
        // A fresh sequence when the context fills: the cost per step, not the length, is measured.
        if ((st.tokens[0] as number[]).length >= 250) break;
        const a = performance.now();
        const items: DirectItem[] = st.tokens.map((t, s) => [s, [t[t.length - 1] as number], true]);
        if (mode === 'grammar') {
          for (let s = 0; s < B; s++) {
            const m = st.maskers[s] as TokenMasker;
            const t = st.tokens[s] as number[];
            if (t.length > prompt.length) m.accept(t[t.length - 1] as number);
            (items[s] as DirectItem)[3] = { mask: await m.mask() };
          }
        }
        const b = performance.now();
        const r = await d.step(items);
        st.tokens.forEach((t, s) => t.push(r.tokens[s] as number));
        acc.ms += performance.now() - a;
        acc.mask += b - a;
        acc.n++;
      }
    }
  }
  for (const mode of modes) {
    const acc = time.get(mode) as { ms: number; mask: number; n: number };
    results.push({ batch: B, mode, msPerStep: acc.ms / acc.n, maskMsPerStep: acc.mask / acc.n });
    await (engines.get(mode) as OnnxEngine).dispose();
  }
}

console.log(`\n${o.model} (vocab ${model.vocabSize}), greedy decode, context 256, CPU\n`);
console.log('| batch | mode | ms/step | × plain | of which grammar masks (ms) |');
console.log('|---:|---|---:|---:|---:|');
for (const r of results) {
  const plain = results.find((x) => x.batch === r.batch && x.mode === 'plain') as (typeof results)[number];
  console.log(`| ${r.batch} | ${r.mode} | ${r.msPerStep.toFixed(2)} | ${(r.msPerStep / plain.msPerStep).toFixed(2)} | ${r.mode === 'grammar' ? r.maskMsPerStep.toFixed(2) : ''} |`);
}
if (o.json) writeFileSync(o.json, JSON.stringify(results, null, 2) + '\n');
