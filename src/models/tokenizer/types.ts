/**
 * What the engine, the server and the simulator need from a tokenizer. Kept minimal so that a
 * llama2.c tokenizer and a Hugging Face tokenizer.json are interchangeable behind it.
 */
export interface EncodeOptions {
  /** Prepend the BOS token (default false). */
  bos?: boolean;
  /** Append the EOS token (default false). */
  eos?: boolean;
}

export interface Tokenizer {
  readonly vocabSize: number;
  /** llama2.c: 1. */
  readonly bosId: number;
  /** llama2.c: 2. */
  readonly eosId: number;
  /**
   * llama2.c semantics when bos is true: BOS first, then a dummy leading space ("▁") if text is
   * non-empty, then merges by score, byte fallback <0xXX>.
   */
  encode(text: string, opts?: EncodeOptions): number[];
  /** Full decode, with llama2.c's rule that a piece following BOS drops its leading space. */
  decode(ids: ArrayLike<number>): string;
  /**
   * Raw bytes of token `id` when it follows token `prev` (llama2.c's decode(prev, token) rule;
   * byte pieces <0xXX> become one byte). `prev` < 0 means "no previous token". Special/control
   * tokens and ids outside the vocabulary yield no bytes. The returned array may be shared
   * between calls: callers must copy it before keeping or mutating it.
   */
  tokenBytes(id: number, prev: number): Uint8Array;
}
