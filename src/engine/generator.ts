import { ContextLengthError, InvalidArgumentError } from '../errors.js';
import type { LoadedModel } from '../models/modeldir.js';
import { StreamDetokenizer } from '../models/tokenizer/stream.js';
import { Rng, StopMatcher, type SamplingParams } from './sampling.js';
import type { Engine, StepItem, StepTiming } from './types.js';

export type FinishReason = 'stop' | 'length' | 'abort';

export interface Completion {
  text: string;
  tokens: number[];
  promptTokens: number;
  finishReason: FinishReason;
}

export interface GenerationRequest {
  /** Text (encoded with the model's tokenizer, BOS first where the model wants it) or token ids. */
  prompt: string | number[];
  sampling: SamplingParams;
  /** Called with each piece of completion text as it becomes final (never a broken UTF-8 sequence). */
  onText?: (delta: string) => void;
}

interface Running {
  id: number;
  prompt: number[];
  fed: number;
  generated: number[];
  sampling: SamplingParams;
  detok: StreamDetokenizer;
  stop: StopMatcher;
  text: string;
  onText: ((delta: string) => void) | undefined;
  resolve: (c: Completion) => void;
  reject: (e: unknown) => void;
  /** The token to feed next when decoding. */
  last: number;
}

export interface GeneratorOptions {
  /** Largest prompt slice fed in one step. */
  prefillChunk?: number;
}

/**
 * A continuous-batching token loop in its simplest form: first come, first served, every
 * resident sequence advances each step (decodes plus prefill chunks), sequences join and leave
 * between steps. The pricing scheduler replaces the admission and planning; the stop rules,
 * detokenization and bookkeeping here are what every request goes through.
 */
export class Generator {
  private readonly waiting: Running[] = [];
  private readonly running: Running[] = [];
  private nextId = 0;
  private readonly prefillChunk: number;
  lastTiming: StepTiming | undefined;

  constructor(
    readonly engine: Engine,
    readonly model: LoadedModel,
    opts: GeneratorOptions = {},
  ) {
    this.prefillChunk = opts.prefillChunk ?? 64;
    if (!Number.isInteger(this.prefillChunk) || this.prefillChunk < 1) throw new InvalidArgumentError('prefillChunk must be a positive integer');
  }

  get pending(): number {
    return this.waiting.length + this.running.length;
  }

  /** Tokenizes and checks a prompt the way a request will see it. */
  encodePrompt(prompt: string | number[]): number[] {
    if (typeof prompt !== 'string') return prompt.slice();
    const ids = this.model.tokenizer.encode(prompt, { bos: this.model.addBos });
    return ids;
  }

  checkFits(promptTokens: number, maxTokens: number): void {
    const ctx = this.engine.info.maxContext;
    if (promptTokens < 1) throw new InvalidArgumentError('the prompt encodes to no tokens');
    if (promptTokens >= ctx) {
      throw new ContextLengthError(`the prompt is ${promptTokens} tokens; this model's context is ${ctx} tokens, which leaves no room to generate`);
    }
    if (promptTokens + maxTokens > ctx) {
      throw new ContextLengthError(
        `this model's maximum context length is ${ctx} tokens; the prompt is ${promptTokens} tokens and max_tokens is ${maxTokens} (total ${promptTokens + maxTokens})`,
      );
    }
  }

  submit(req: GenerationRequest): Promise<Completion> {
    const prompt = this.encodePrompt(req.prompt);
    for (const t of prompt) {
      if (!Number.isInteger(t) || t < 0 || t >= this.model.vocabSize) throw new InvalidArgumentError(`prompt token ${t} is outside the vocabulary`);
    }
    this.checkFits(prompt.length, req.sampling.maxTokens);
    return new Promise<Completion>((resolve, reject) => {
      this.waiting.push({
        id: this.nextId++,
        prompt,
        fed: 0,
        generated: [],
        sampling: req.sampling,
        detok: new StreamDetokenizer(this.model.tokenizer, prompt[prompt.length - 1] ?? -1),
        stop: new StopMatcher(req.sampling.stop),
        text: '',
        onText: req.onText,
        resolve,
        reject,
        last: -1,
      });
    });
  }

  /** Runs one engine step. Returns false when there was nothing to do. */
  async step(): Promise<boolean> {
    while (this.waiting.length > 0 && this.running.length < this.engine.info.maxSequences) {
      const r = this.waiting.shift() as Running;
      this.engine.open(r.id, r.sampling, Rng.create(r.sampling.seed));
      this.running.push(r);
    }
    if (this.running.length === 0) return false;
    const items: StepItem[] = this.running.map((r) => {
      if (r.fed < r.prompt.length) {
        const end = Math.min(r.prompt.length, r.fed + this.prefillChunk);
        return { seq: r.id, tokens: r.prompt, offset: r.fed, count: end - r.fed, sample: end === r.prompt.length };
      }
      return { seq: r.id, tokens: [r.last], offset: 0, count: 1, sample: true };
    });
    let result;
    try {
      result = await this.engine.execute({ items });
    } catch (e) {
      // A failed step fails the requests in it, never silently: their slots are freed.
      for (const r of this.running.splice(0)) {
        this.engine.close(r.id);
        r.reject(e);
      }
      throw e;
    }
    this.lastTiming = result.timing;
    const finished: Running[] = [];
    for (let i = 0; i < items.length; i++) {
      const r = this.running[i] as Running;
      const item = items[i] as StepItem;
      r.fed = Math.min(r.prompt.length, r.fed + (r.fed < r.prompt.length ? item.count : 0));
      const token = result.tokens[i] as number;
      if (token < 0) continue;
      if (this.finishIfDone(r, token)) finished.push(r);
    }
    for (const r of finished) this.finish(r);
    return true;
  }

  /** Records a sampled token; returns true when the sequence is done. */
  private finishIfDone(r: Running, token: number): boolean {
    if (this.model.stopIds.includes(token)) return this.markDone(r, 'stop');
    r.generated.push(token);
    r.last = token;
    const piece = r.detok.push(token);
    if (piece.length > 0 && this.emit(r, piece)) return this.markDone(r, 'stop');
    if (r.generated.length >= r.sampling.maxTokens) return this.markDone(r, 'length');
    if (this.engine.contextLength(r.id) + 1 >= this.engine.info.maxContext) return this.markDone(r, 'length');
    return false;
  }

  private reason = new Map<number, FinishReason>();

  private markDone(r: Running, why: FinishReason): boolean {
    this.reason.set(r.id, why);
    return true;
  }

  /** Passes text through the stop matcher; returns true when a stop sequence matched. */
  private emit(r: Running, piece: string): boolean {
    const { emit, stopped } = r.stop.push(piece);
    if (emit.length > 0) {
      r.text += emit;
      r.onText?.(emit);
    }
    return stopped;
  }

  private finish(r: Running): void {
    const why = this.reason.get(r.id) ?? 'stop';
    this.reason.delete(r.id);
    if (!r.stop.stopped) {
      const tail = r.detok.flush();
      if (tail.length > 0) this.emit(r, tail);
      const rest = r.stop.flush();
      if (rest.length > 0) {
        r.text += rest;
        r.onText?.(rest);
      }
    }
    this.engine.close(r.id);
    this.running.splice(this.running.indexOf(r), 1);
    r.resolve({ text: r.text, tokens: r.generated, promptTokens: r.prompt.length, finishReason: why });
  }

  async runUntilIdle(): Promise<void> {
    while (await this.step());
  }
}

/** Convenience: one prompt, start to finish. */
export async function generateOnce(engine: Engine, model: LoadedModel, prompt: string | number[], sampling: SamplingParams): Promise<Completion> {
  const g = new Generator(engine, model);
  const done = g.submit({ prompt, sampling });
  await g.runUntilIdle();
  return done;
}
