import { forcedLogProbs, klDivergence, top2 } from '../../engine/evaluate.js';
import { Generator } from '../../serving/generator.js';
import { OnnxEngine } from '../../engine/onnx-engine.js';
import { validateSamplingParams } from '../../sampling/params.js';
import type { LoadedModel } from '../modeldir.js';

/**
 * How far a quantized model strays from its float32 original, measured three ways:
 * - greedy agreement on given prompts: how many generated tokens match before the first
 *   divergence, and how close float32 itself was to choosing otherwise there (its lead of the
 *   best over the second-best log-probability);
 * - teacher-forced on a corpus: mean per-token KL(fp32 ‖ quantized), top-1 agreement, and the
 *   perplexity of each model on the corpus.
 */
export interface GreedyAgreement {
  prompt: string;
  generated: number;
  /** Tokens equal to float32's before the first difference (= generated when none). */
  agreed: number;
  /** The completion token index of the first difference, or null. */
  divergesAt: number | null;
  /** Float32's best-minus-second log-probability at that position (nats): small means a near-tie. */
  fp32Margin: number | null;
  fp32Text: string;
  text: string;
}

export interface AccuracyReport {
  greedy: GreedyAgreement[];
  corpusTokens: number;
  meanKl: number;
  maxKl: number;
  top1Agreement: number;
  fp32Perplexity: number;
  perplexity: number;
}

// One thread: these models are small, and on a shared machine ONNX Runtime's spinning worker
// threads cost more than they bring.
const engineOptions = (maxSequences: number) => ({ providers: ['cpu' as const], maxSequences, intraOpThreads: 1 });

/** The float32 model's own samples: `count` completions of `length` tokens from BOS (temperature 1, seeds 1…count). */
export async function sampleCorpus(model: LoadedModel, count: number, length: number): Promise<number[][]> {
  const engine = await OnnxEngine.create(model, engineOptions(count));
  try {
    const g = new Generator(engine, model);
    const done = Array.from({ length: count }, (_, i) =>
      g.submit({ prompt: [model.bosId], sampling: validateSamplingParams({ temperature: 1, seed: i + 1, max_tokens: length }) }),
    );
    await g.runUntilIdle();
    return (await Promise.all(done)).map((c) => [model.bosId, ...c.tokens]);
  } finally {
    await engine.dispose();
  }
}

async function greedy(model: LoadedModel, prompts: readonly string[], maxTokens: number): Promise<{ text: string; tokens: number[]; prompt: number[] }[]> {
  const engine = await OnnxEngine.create(model, engineOptions(prompts.length));
  try {
    const g = new Generator(engine, model);
    const done = prompts.map((p) => g.submit({ prompt: p, sampling: validateSamplingParams({ temperature: 0, max_tokens: maxTokens }) }));
    await g.runUntilIdle();
    const out = await Promise.all(done);
    return out.map((c, i) => ({ text: c.text, tokens: c.tokens, prompt: model.tokenizer.encode(prompts[i] as string, { bos: model.addBos }) }));
  } finally {
    await engine.dispose();
  }
}

/** What a quantized model is compared with: float32's greedy texts and its distributions along them and along the corpus. */
export interface Fp32Reference {
  prompts: readonly string[];
  maxTokens: number;
  corpus: readonly number[][];
  vocab: number;
  greedy: { text: string; tokens: number[]; prompt: number[] }[];
  /** Per greedy text, then per corpus sequence: log-probabilities [position, vocab]. */
  rows: Float32Array[];
}

export async function fp32Reference(fp32: LoadedModel, opts: { prompts: readonly string[]; maxTokens: number; corpus: readonly number[][] }): Promise<Fp32Reference> {
  const ref = await greedy(fp32, opts.prompts, opts.maxTokens);
  const V = fp32.vocabSize;
  const all = [...ref.map((r) => [...r.prompt, ...r.tokens]), ...opts.corpus];
  const rows = all.map((s) => new Float32Array(s.length * V));
  const engine = await OnnxEngine.create(fp32, engineOptions(all.length));
  try {
    await forcedLogProbs(engine, all, (i, pos, row) => (rows[i] as Float32Array).set(row, pos * V));
  } finally {
    await engine.dispose();
  }
  return { ...opts, vocab: V, greedy: ref, rows };
}

export async function measureAccuracy(reference: Fp32Reference, quant: LoadedModel): Promise<AccuracyReport> {
  const { vocab: V, corpus } = reference;
  const got = await greedy(quant, reference.prompts, reference.maxTokens);
  const greedyReport: GreedyAgreement[] = reference.greedy.map((r, i) => {
    const q = got[i] as (typeof got)[number];
    let agreed = 0;
    while (agreed < r.tokens.length && agreed < q.tokens.length && r.tokens[agreed] === q.tokens[agreed]) agreed++;
    const diverged = agreed < Math.max(r.tokens.length, q.tokens.length);
    // The distribution that chose completion token `agreed` sits at position prompt + agreed − 1.
    const at = r.prompt.length + agreed - 1;
    const rows = reference.rows[i] as Float32Array;
    const margin = diverged && (at + 1) * V <= rows.length ? top2(rows.subarray(at * V, (at + 1) * V)).margin : null;
    return {
      prompt: reference.prompts[i] as string,
      generated: r.tokens.length,
      agreed,
      divergesAt: diverged ? agreed : null,
      fp32Margin: margin,
      fp32Text: r.text,
      text: q.text,
    };
  });

  let kl = 0;
  let maxKl = 0;
  let agree = 0;
  let nllRef = 0;
  let nllQ = 0;
  let n = 0;
  const offset = reference.greedy.length;
  const engine = await OnnxEngine.create(quant, engineOptions(corpus.length));
  try {
    await forcedLogProbs(engine, corpus, (i, pos, row) => {
      const seq = corpus[i] as number[];
      if (pos + 1 >= seq.length) return;
      const p = (reference.rows[offset + i] as Float32Array).subarray(pos * V, (pos + 1) * V);
      const d = klDivergence(p, row);
      kl += d;
      maxKl = Math.max(maxKl, d);
      if (top2(p).best === top2(row).best) agree++;
      const next = seq[pos + 1] as number;
      nllRef -= p[next] as number;
      nllQ -= row[next] as number;
      n++;
    });
  } finally {
    await engine.dispose();
  }
  return {
    greedy: greedyReport,
    corpusTokens: n,
    meanKl: kl / n,
    maxKl,
    top1Agreement: agree / n,
    fp32Perplexity: Math.exp(nllRef / n),
    perplexity: Math.exp(nllQ / n),
  };
}
