/**
 * A prompt that cannot fit the context is turned away before it is tokenized, from its size
 * alone: no token stands for more input bytes than the tokenizer's longest piece, so a text of
 * B bytes encodes to at least ⌈B / longest⌉ tokens. Tokenizing a 2 MB prompt only to learn that
 * it is 400 times the context kept the tokenizer from everyone else's prompts (issue 10).
 */
import { ContextLengthError } from '../errors.js';
import type { Tokenizer } from '../models/tokenizer/types.js';

/**
 * Normalizers of Hugging Face tokenizers (NFKC, lower-casing) can shrink text before it is
 * split: a 3-byte character may become a 1-byte one. Dividing by this much more keeps the bound
 * a bound for them; llama2.c tokenizers split the raw bytes and need no margin.
 */
const NORMALIZER_MARGIN = 4;

/** The most input bytes one token of `tokenizer` can stand for. */
export function maxBytesPerToken(tokenizer: Tokenizer): number {
  let longest = 1;
  // After BOS (or at the start) a piece may drop its leading space; elsewhere it keeps it.
  const other = tokenizer.bosId === 0 ? 1 : 0;
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    longest = Math.max(longest, tokenizer.tokenBytes(id, -1).length, tokenizer.tokenBytes(id, other).length);
  }
  const t = tokenizer as Tokenizer & { maxTokenLength?: number; hf?: { get_added_tokens_decoder(): Map<number, { content: string }> } };
  if (typeof t.maxTokenLength === 'number' && t.maxTokenLength > longest) longest = t.maxTokenLength;
  if (t.hf === undefined) return longest;
  // Added tokens written in the text ("<|im_end|>") become one token however long they are.
  for (const added of t.hf.get_added_tokens_decoder().values()) longest = Math.max(longest, Buffer.byteLength(added.content));
  return longest * NORMALIZER_MARGIN;
}

export class PromptBound {
  readonly bytesPerToken: number;

  constructor(
    tokenizer: Tokenizer,
    private readonly maxContext: number,
  ) {
    this.bytesPerToken = maxBytesPerToken(tokenizer);
  }

  /** The fewest tokens `text` can encode to (BOS and other added tokens not counted). */
  minTokens(text: string): number {
    // Every UTF-16 unit is at least one UTF-8 byte: the length decides most cases without a scan.
    if (text.length <= this.bytesPerToken * this.maxContext) {
      const bytes = Buffer.byteLength(text, 'utf8');
      return Math.ceil(bytes / this.bytesPerToken);
    }
    return Math.ceil(text.length / this.bytesPerToken);
  }

  /**
   * Throws the context-length error a text this long must get whatever it says: the prompt alone
   * fills the context, or leaves less than `maxTokens` (when the client set it) to generate.
   */
  check(text: string, maxTokens: number | undefined, param: string): void {
    const min = this.minTokens(text);
    const ctx = this.maxContext;
    if (min >= ctx) {
      throw Object.assign(new ContextLengthError(`the prompt is at least ${min} tokens (${text.length} characters); this model's context is ${ctx} tokens, which leaves no room to generate`), { param });
    }
    // An invalid max_tokens is left to the sampling checks, which name it.
    if (maxTokens !== undefined && Number.isSafeInteger(maxTokens) && maxTokens >= 1 && maxTokens <= ctx && min + maxTokens > ctx) {
      throw Object.assign(new ContextLengthError(`this model's maximum context length is ${ctx} tokens; the prompt is at least ${min} tokens and max_tokens is ${maxTokens}`), { param });
    }
  }

  /** For counting only (/tokenize): refuses texts that are at least `contexts` contexts long. */
  checkCountable(text: string, contexts: number, param: string): void {
    const min = this.minTokens(text);
    if (min > contexts * this.maxContext) {
      throw Object.assign(new ContextLengthError(`the prompt is at least ${min} tokens, more than ${contexts} times this model's context of ${this.maxContext}: too long to count here`), { param });
    }
  }
}
