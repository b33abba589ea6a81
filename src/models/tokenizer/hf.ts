import { readFile } from 'node:fs/promises';
import { Tokenizer as HfCoreTokenizer } from '@huggingface/tokenizers';
import { TokenizerFormatError } from '../../errors.js';
import type { EncodeOptions, Tokenizer } from './types.js';
import { decodeTokenBytes } from './bytes.js';

const EMPTY = new Uint8Array(0);
const UTF8 = new TextEncoder();
// ignoreBOM: a U+FEFF the model produces is text, not a byte-order mark to swallow.
const UTF8_DECODER = new TextDecoder('utf-8', { ignoreBOM: true });
const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;
const EOS_GUESSES = ['</s>', '<|endoftext|>', '<|end_of_text|>', '<eos>', '<|im_end|>', '<|eot_id|>'];
const BOS_GUESSES = ['<s>', '<|begin_of_text|>', '<bos>'];

/** GPT-2's bytes_to_unicode, inverted: the printable stand-in character → the byte it encodes. */
function byteLevelDecoderTable(): Map<string, number> {
  const table = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table.set(String.fromCharCode(printable ? b : 256 + extra++), b);
  }
  return table;
}

/**
 * The part of @huggingface/tokenizers' Tokenizer used here. Its bundled .d.ts files import
 * without extensions, which NodeNext cannot resolve, so the class arrives typed `any`: this
 * interface puts the types back.
 */
export interface HfLibraryTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[]; tokens: string[] };
  decode(ids: number[], options?: { skip_special_tokens?: boolean; clean_up_tokenization_spaces?: boolean | null }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  get_added_tokens_decoder(): Map<number, { content: string; special: boolean }>;
  get_vocab(withAddedTokens?: boolean): Map<string, number>;
}

type Json = Record<string, unknown>;

function asObject(v: unknown): Json | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : undefined;
}

/** tokenizer_config.json spells special tokens as strings or as AddedToken objects. */
function tokenName(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  const c = asObject(v)?.content;
  return typeof c === 'string' ? c : undefined;
}

/**
 * How token strings become bytes, read off the tokenizer.json decoder so that tokenBytes can
 * work per token (the library only decodes whole sequences, to strings):
 * - 'bytelevel': GPT-2 style, each character stands for one byte.
 * - 'pieces': SentencePiece style (Llama, Mistral, Gemma): Replace/Metaspace turn '▁' into ' ',
 *   ByteFallback turns <0xXX> into a byte, Fuse joins, Strip/Metaspace drop the first space of
 *   the sequence.
 * - 'generic': anything else (WordPiece, CTC, regex replaces...): each token is decoded alone
 *   by the library, which loses context-dependent spacing; decode() then uses the library on the
 *   whole sequence, so streaming and full decode can differ in spacing for such tokenizers.
 */
interface DecoderPlan {
  kind: 'bytelevel' | 'pieces' | 'generic';
  replacements: [string, string][];
  byteFallback: boolean;
  /** Leading spaces dropped from the first token of a sequence. */
  stripFirst: number;
}

function planDecoder(decoder: unknown): DecoderPlan {
  const generic: DecoderPlan = { kind: 'generic', replacements: [], byteFallback: false, stripFirst: 0 };
  const d = asObject(decoder);
  if (!d) return generic;
  const steps: Json[] = [];
  if (d.type === 'Sequence') {
    const list = d.decoders;
    if (!Array.isArray(list)) return generic;
    for (const s of list) {
      const o = asObject(s);
      if (!o) return generic;
      steps.push(o);
    }
  } else {
    steps.push(d);
  }
  if (steps.length === 1 && steps[0]!.type === 'ByteLevel') {
    return { kind: 'bytelevel', replacements: [], byteFallback: false, stripFirst: 0 };
  }
  const plan: DecoderPlan = { kind: 'pieces', replacements: [], byteFallback: false, stripFirst: 0 };
  let fused = false;
  for (const s of steps) {
    switch (s.type) {
      case 'Replace': {
        const from = asObject(s.pattern)?.String;
        if (typeof from !== 'string' || from === '') return generic;
        plan.replacements.push([from, typeof s.content === 'string' ? s.content : '']);
        break;
      }
      case 'Metaspace': {
        const rep = typeof s.replacement === 'string' ? s.replacement : '\u2581';
        plan.replacements.push([rep, ' ']);
        const never = s.prepend_scheme === 'never' || s.add_prefix_space === false;
        if (!never) plan.stripFirst = Math.max(plan.stripFirst, 1);
        break;
      }
      case 'ByteFallback':
        plan.byteFallback = true;
        break;
      case 'Fuse':
        fused = true;
        break;
      case 'Strip': {
        // Before a Fuse, Strip would apply to every token, not just the sequence start.
        if (!fused || s.content !== ' ' || (typeof s.stop === 'number' && s.stop !== 0)) return generic;
        plan.stripFirst = Math.max(plan.stripFirst, typeof s.start === 'number' ? s.start : 0);
        break;
      }
      default:
        return generic;
    }
  }
  return plan;
}

export interface HfTokenizerOptions {
  /**
   * Whether encode({ bos: true }) prepends BOS. Default: what the model's tokenizer does
   * (tokenizer_config add_bos_token, else whether its post-processor adds BOS), so GPT-2 and
   * Qwen get no BOS while Llama and Mistral do.
   */
  addBos?: boolean;
}

/**
 * A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json, as in transformers and
 * Optimum exports), through the pure-JS @huggingface/tokenizers.
 *
 * - bosId/eosId come from the config's bos_token/eos_token. Models without a BOS (GPT-2 style)
 *   get bosId = eosId, the document separator they were trained with.
 * - encode({ bos: true }) prepends BOS only where the model itself does (see addsBos);
 *   eos: true always appends eosId. Added tokens written in the text ("<s>", "<|im_end|>")
 *   become those tokens, as in transformers.
 * - tokenBytes is derived from the token strings and the decoder config (see DecoderPlan);
 *   after BOS or at the start (prev < 0) a SentencePiece-style token drops one leading space,
 *   which is where HF's Strip/Metaspace decoders drop it. Special tokens yield no bytes.
 * - decode skips special tokens and does no clean_up_tokenization_spaces, so that it equals
 *   the concatenation of the streamed pieces.
 */
export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  /** Whether encode({ bos: true }) actually prepends bosId for this model. */
  readonly addsBos: boolean;
  /** The underlying @huggingface/tokenizers instance. */
  readonly hf: HfLibraryTokenizer;

  private readonly plan: DecoderPlan;
  private readonly special: Uint8Array;
  private readonly bytes: (Uint8Array | undefined)[];
  private readonly bytesAtStart: (Uint8Array | undefined)[];
  private byteLevel: Map<string, number> | undefined;

  constructor(tokenizerJson: unknown, tokenizerConfig: unknown = {}, opts: HfTokenizerOptions = {}) {
    const json = asObject(tokenizerJson);
    if (!json || !asObject(json.model)) throw new TokenizerFormatError('tokenizer.json has no model');
    const config = asObject(tokenizerConfig) ?? {};
    // The library requires these keys to be present, even as null.
    const complete: Json = { added_tokens: [], normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, ...json };
    try {
      this.hf = new HfCoreTokenizer(complete, config) as HfLibraryTokenizer;
    } catch (e) {
      throw new TokenizerFormatError(`tokenizer.json rejected: ${e instanceof Error ? e.message : String(e)}`);
    }

    let maxId = -1;
    for (const id of this.hf.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    if (this.vocabSize <= 0) throw new TokenizerFormatError('tokenizer.json has an empty vocabulary');

    this.special = new Uint8Array(this.vocabSize);
    for (const [id, added] of this.hf.get_added_tokens_decoder()) {
      if (added.special && id < this.vocabSize) this.special[id] = 1;
    }
    const extra = config.additional_special_tokens;
    if (Array.isArray(extra)) {
      for (const t of extra) {
        const name = tokenName(t);
        const id = name === undefined ? undefined : this.hf.token_to_id(name);
        if (id !== undefined) this.special[id] = 1;
      }
    }

    const idOf = (name: string | undefined): number | undefined => (name === undefined ? undefined : this.hf.token_to_id(name));
    const eos = idOf(tokenName(config.eos_token)) ?? EOS_GUESSES.map((n) => idOf(n)).find((id) => id !== undefined);
    if (eos === undefined) throw new TokenizerFormatError('no EOS token: tokenizer_config.json has no eos_token and no usual name is in the vocabulary');
    this.eosId = eos;
    this.bosId = idOf(tokenName(config.bos_token)) ?? templateBos(json.post_processor) ?? BOS_GUESSES.map((n) => idOf(n)).find((id) => id !== undefined) ?? eos;

    if (opts.addBos !== undefined) {
      this.addsBos = opts.addBos;
    } else if (typeof config.add_bos_token === 'boolean') {
      this.addsBos = config.add_bos_token;
    } else {
      const withSpecial = this.hf.encode('a', { add_special_tokens: true }).ids;
      const without = this.hf.encode('a', { add_special_tokens: false }).ids;
      this.addsBos = withSpecial[0] === this.bosId && without[0] !== this.bosId;
    }

    this.plan = planDecoder(json.decoder);
    this.bytes = new Array<Uint8Array | undefined>(this.vocabSize);
    this.bytesAtStart = new Array<Uint8Array | undefined>(this.vocabSize);
  }

  static async fromFiles(tokenizerJsonPath: string, tokenizerConfigPath?: string, opts?: HfTokenizerOptions): Promise<HfTokenizer> {
    const parse = async (p: string): Promise<unknown> => {
      try {
        return JSON.parse(await readFile(p, 'utf8')) as unknown;
      } catch (e) {
        if (e instanceof SyntaxError) throw new TokenizerFormatError(`${p}: ${e.message}`);
        throw e;
      }
    };
    const json = await parse(tokenizerJsonPath);
    const config = tokenizerConfigPath === undefined ? {} : await parse(tokenizerConfigPath);
    return new HfTokenizer(json, config, opts);
  }

  encode(text: string, opts?: EncodeOptions): number[] {
    const ids = this.hf.encode(text, { add_special_tokens: false }).ids;
    if (opts?.bos && this.addsBos) ids.unshift(this.bosId);
    if (opts?.eos) ids.push(this.eosId);
    return ids;
  }

  decode(ids: ArrayLike<number>): string {
    if (this.plan.kind === 'generic') {
      if (ids.length === 0) return '';
      return this.hf.decode(Array.from(ids), { skip_special_tokens: true, clean_up_tokenization_spaces: false });
    }
    return decodeTokenBytes(ids, (id, prev) => this.tokenBytes(id, prev));
  }

  tokenBytes(id: number, prev: number): Uint8Array {
    if (!(id >= 0 && id < this.vocabSize) || this.special[id] === 1) return EMPTY;
    const atStart = this.plan.stripFirst > 0 && (prev < 0 || prev === this.bosId);
    const cache = atStart ? this.bytesAtStart : this.bytes;
    let b = cache[id];
    if (b === undefined) {
      b = this.computeBytes(id);
      if (atStart) {
        let cut = 0;
        while (cut < this.plan.stripFirst && cut < b.length && b[cut] === 0x20) cut++;
        b = b.subarray(cut);
      }
      cache[id] = b;
    }
    return b;
  }

  private computeBytes(id: number): Uint8Array {
    const token = this.hf.id_to_token(id);
    if (token === undefined) return EMPTY;
    const plan = this.plan;
    if (plan.kind === 'bytelevel') {
      this.byteLevel ??= byteLevelDecoderTable();
      const out: number[] = [];
      for (const ch of token) {
        const b = this.byteLevel.get(ch);
        if (b !== undefined) out.push(b);
        // Added tokens are plain text, not byte-level encoded.
        else for (const x of UTF8.encode(ch)) out.push(x);
      }
      return Uint8Array.from(out);
    }
    if (plan.kind === 'pieces') {
      if (plan.byteFallback) {
        const m = BYTE_PIECE.exec(token);
        if (m) return Uint8Array.of(parseInt(m[1]!, 16));
      }
      let s = token;
      for (const [from, to] of plan.replacements) s = s.replaceAll(from, to);
      return UTF8.encode(s);
    }
    return UTF8.encode(this.hf.decode([id], { skip_special_tokens: true, clean_up_tokenization_spaces: false }));
  }
}

/** The BOS a TemplateProcessing post-processor puts first, if any. */
function templateBos(postProcessor: unknown): number | undefined {
  const pp = asObject(postProcessor);
  if (!pp) return undefined;
  if (pp.type === 'Sequence' && Array.isArray(pp.processors)) {
    for (const p of pp.processors) {
      const id = templateBos(p);
      if (id !== undefined) return id;
    }
    return undefined;
  }
  if (pp.type !== 'TemplateProcessing' || !Array.isArray(pp.single)) return undefined;
  const first = asObject(asObject(pp.single[0])?.SpecialToken);
  const name = first?.id;
  if (typeof name !== 'string') return undefined;
  const ids = asObject(asObject(pp.special_tokens)?.[name])?.ids;
  return Array.isArray(ids) && typeof ids[0] === 'number' ? ids[0] : undefined;
}
