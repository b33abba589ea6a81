import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { TokenizerFormatError } from '../../errors.js';
import type { EncodeOptions, Tokenizer } from './types.js';
import { decodeTokenBytes } from './bytes.js';

/**
 * llama2.c's tokenizer (karpathy/llama2.c run.c `encode`/`decode`) over its .bin format:
 * int32 max_token_length, then per piece float32 score, int32 byte length, bytes (little
 * endian, as the exporter writes it on x86/ARM). Pieces use a plain ' ' where SentencePiece
 * has '▁'; BOS and EOS are stored as "\n<s>\n" and "\n</s>\n".
 */

const UNK_ID = 0;
const BOS_ID = 1;
const EOS_ID = 2;
/** llama2.c hardcodes byte fallback as id = byte + 3 (after <unk>, <s>, </s>). */
const BYTE_OFFSET = 3;
/** run.c starts its best-merge search at -1e10 with a strict `>`, so lower scores never merge. */
const MIN_MERGE_SCORE = -1e10;
const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;
const EMPTY = new Uint8Array(0);
const UTF8 = new TextEncoder();
// ignoreBOM: a U+FEFF the model produces is text, not a byte-order mark to swallow.
const UTF8_DECODER = new TextDecoder('utf-8', { ignoreBOM: true });
const UTF8_STRICT = new TextDecoder('utf-8', { ignoreBOM: true, fatal: true });

/** Byte-exact Map key for a piece: one UTF-16 unit per byte, so concatenation stays byte concatenation. */
function binaryKey(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]!);
  return s;
}

export class Llama2cTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId = BOS_ID;
  readonly eosId = EOS_ID;
  readonly unkId = UNK_ID;
  readonly maxTokenLength: number;

  private readonly pieces: Uint8Array[];
  private readonly scores: Float32Array;
  private readonly ids = new Map<string, number>();
  /** Id of each single byte looked up as a one-byte piece, or -1: the ASCII fast path of encode. */
  private readonly singleByte = new Int32Array(256).fill(-1);
  private readonly out: Uint8Array[];
  private readonly outAfterBos: Uint8Array[];
  private readonly dummyPrefixId: number;
  /** (left id * vocabSize + right id) → id of the concatenated piece; built on first encode. */
  private merges: Map<number, number> | undefined;

  /**
   * @param pieces raw piece bytes, index = token id (kept by reference: do not mutate)
   * @param scores merge scores (float32 in the file)
   * @param maxTokenLength the header field; recomputed from the pieces when omitted
   */
  constructor(pieces: readonly Uint8Array[], scores: ArrayLike<number>, maxTokenLength?: number) {
    if (pieces.length < BYTE_OFFSET) {
      throw new TokenizerFormatError(`llama2.c tokenizer needs at least ${BYTE_OFFSET} pieces (<unk>, <s>, </s>), got ${pieces.length}`);
    }
    if (scores.length !== pieces.length) {
      throw new TokenizerFormatError(`${pieces.length} pieces but ${scores.length} scores`);
    }
    this.vocabSize = pieces.length;
    this.pieces = pieces.slice();
    this.scores = Float32Array.from(scores);
    let longest = 0;
    for (const p of this.pieces) longest = Math.max(longest, p.length);
    this.maxTokenLength = maxTokenLength ?? longest;

    const V = this.vocabSize;
    this.out = new Array<Uint8Array>(V);
    this.outAfterBos = new Array<Uint8Array>(V);
    for (let id = 0; id < V; id++) {
      const bytes = this.pieces[id]!;
      const key = binaryKey(bytes);
      // With duplicate pieces run.c's bsearch may return either; the lowest id is our choice.
      if (!this.ids.has(key)) this.ids.set(key, id);
      if (bytes.length === 1 && this.singleByte[bytes[0]!] === -1) this.singleByte[bytes[0]!] = id;

      if (id === UNK_ID || id === BOS_ID || id === EOS_ID) {
        // Control tokens carry no text (llama2.c would print "\n</s>\n"; servers skip them).
        this.out[id] = EMPTY;
        this.outAfterBos[id] = EMPTY;
        continue;
      }
      const m = BYTE_PIECE.exec(key);
      if (m) {
        const b = Uint8Array.of(parseInt(m[1]!, 16));
        this.out[id] = b;
        this.outAfterBos[id] = b;
      } else {
        this.out[id] = bytes;
        this.outAfterBos[id] = bytes[0] === 0x20 ? bytes.subarray(1) : bytes;
      }
    }
    // run.c looks " " up and would push -1 if it were missing; fall back to the space byte instead.
    this.dummyPrefixId = this.ids.get(' ') ?? this.byteId(0x20);
  }

  static fromBuffer(buf: Uint8Array, vocabSize?: number): Llama2cTokenizer {
    if (vocabSize !== undefined && (!Number.isInteger(vocabSize) || vocabSize < BYTE_OFFSET)) {
      throw new TokenizerFormatError(`vocab size must be an integer >= ${BYTE_OFFSET}, got ${vocabSize}`);
    }
    if (buf.length < 4) throw new TokenizerFormatError(`file too short for its header (${buf.length} bytes)`);
    // One private copy: the views below must not alias a caller's (possibly reused) buffer.
    const data = new Uint8Array(buf);
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const maxTokenLength = dv.getInt32(0, true);
    if (maxTokenLength < 0) throw new TokenizerFormatError(`negative max_token_length ${maxTokenLength}`);
    const pieces: Uint8Array[] = [];
    const scores: number[] = [];
    let off = 4;
    while (vocabSize === undefined ? off < data.length : pieces.length < vocabSize) {
      const i = pieces.length;
      if (off + 8 > data.length) {
        throw new TokenizerFormatError(`truncated at piece ${i}${vocabSize !== undefined ? ` of ${vocabSize}` : ''} (offset ${off} of ${data.length})`);
      }
      const score = dv.getFloat32(off, true);
      const len = dv.getInt32(off + 4, true);
      if (len < 0) throw new TokenizerFormatError(`piece ${i} has negative length ${len}`);
      off += 8;
      if (off + len > data.length) {
        throw new TokenizerFormatError(`piece ${i} (length ${len}) runs past the end of the file (offset ${off} of ${data.length})`);
      }
      pieces.push(data.subarray(off, off + len));
      scores.push(score);
      off += len;
    }
    return new Llama2cTokenizer(pieces, scores, maxTokenLength);
  }

  static async fromFile(path: string, vocabSize?: number): Promise<Llama2cTokenizer> {
    return Llama2cTokenizer.fromBuffer(await readFile(path), vocabSize);
  }

  static fromFileSync(path: string, vocabSize?: number): Llama2cTokenizer {
    return Llama2cTokenizer.fromBuffer(readFileSync(path), vocabSize);
  }

  /** The .bin format again, byte for byte what fromBuffer read (for the importer). */
  toBuffer(): Uint8Array {
    let size = 4;
    for (const p of this.pieces) size += 8 + p.length;
    const buf = new Uint8Array(size);
    const dv = new DataView(buf.buffer);
    dv.setInt32(0, this.maxTokenLength, true);
    let off = 4;
    for (let i = 0; i < this.vocabSize; i++) {
      const p = this.pieces[i]!;
      dv.setFloat32(off, this.scores[i]!, true);
      dv.setInt32(off + 4, p.length, true);
      buf.set(p, off + 8);
      off += 8 + p.length;
    }
    return buf;
  }

  /** Raw stored bytes of a piece (' ' for '▁', "\n<s>\n" for BOS). Shared: do not mutate. */
  pieceBytes(id: number): Uint8Array {
    const p = this.pieces[id];
    if (p === undefined) throw new RangeError(`token id ${id} outside vocabulary of ${this.vocabSize}`);
    return p;
  }

  /** The piece as text (lossy where a piece is not valid UTF-8). */
  piece(id: number): string {
    return UTF8_DECODER.decode(this.pieceBytes(id));
  }

  score(id: number): number {
    const s = this.scores[id];
    if (s === undefined) throw new RangeError(`token id ${id} outside vocabulary of ${this.vocabSize}`);
    return s;
  }

  /** Id of a piece given as text, or undefined. */
  pieceId(piece: string): number | undefined {
    return this.ids.get(binaryKey(UTF8.encode(piece)));
  }

  encode(text: string, opts?: EncodeOptions): number[] {
    // Work on UTF-8 bytes like run.c, so grouping and byte fallback match it byte for byte.
    // run.c stops at a NUL byte (C string); here NUL is ordinary text and falls back to <0x00>.
    const bytes = UTF8.encode(text);
    const len = bytes.length;
    const toks = new Int32Array(len + 3);
    let n = 0;
    if (opts?.bos) toks[n++] = BOS_ID;
    if (len > 0) toks[n++] = this.dummyPrefixId;

    for (let i = 0; i < len; ) {
      // A group is one byte plus the continuation bytes after it, at most 4 bytes (run.c's str_len < 4).
      let j = i + 1;
      while (j < len && j - i < 4 && (bytes[j]! & 0xc0) === 0x80) j++;
      let id: number;
      if (j - i === 1) {
        id = this.singleByte[bytes[i]!]!;
      } else {
        let key = '';
        for (let k = i; k < j; k++) key += String.fromCharCode(bytes[k]!);
        id = this.ids.get(key) ?? -1;
      }
      if (id !== -1) {
        toks[n++] = id;
      } else {
        for (let k = i; k < j; k++) toks[n++] = this.byteId(bytes[k]!);
      }
      i = j;
    }

    n = this.mergePairs(toks, n);
    if (opts?.eos) toks[n++] = EOS_ID;
    return Array.from(toks.subarray(0, n));
  }

  decode(ids: ArrayLike<number>): string {
    return decodeTokenBytes(ids, (id, prev) => this.tokenBytes(id, prev));
  }

  tokenBytes(id: number, prev: number): Uint8Array {
    // Ids past the vocabulary (padded embedding rows) decode to nothing rather than throwing mid-stream.
    const b = prev === BOS_ID ? this.outAfterBos[id] : this.out[id];
    return b ?? EMPTY;
  }

  private byteId(b: number): number {
    const id = b + BYTE_OFFSET;
    // A vocabulary too small for byte fallback gets <unk> where run.c would index out of range.
    return id < this.vocabSize ? id : UNK_ID;
  }

  private mergeTable(): Map<number, number> {
    if (this.merges) return this.merges;
    // Every pair whose concatenation is a piece is a split of that piece into two pieces, so
    // enumerating splits once replaces run.c's sprintf + lookup of every adjacent pair.
    const V = this.vocabSize;
    const table = new Map<number, number>();
    for (let m = 0; m < V; m++) {
      const p = this.pieces[m]!;
      if (p.length < 2) continue;
      const key = binaryKey(p);
      const target = this.ids.get(key)!;
      for (let k = 1; k < key.length; k++) {
        const a = this.ids.get(key.slice(0, k));
        if (a === undefined) continue;
        const b = this.ids.get(key.slice(k));
        if (b === undefined) continue;
        table.set(a * V + b, target);
      }
    }
    this.merges = table;
    return table;
  }

  /**
   * run.c merges, until none is left, the adjacent pair whose concatenation is the piece with
   * the highest score (strictly above -1e10), the leftmost such pair on ties; it rescans all
   * pairs per merge, O(n²). This does the same with a heap ordered by (score desc, position
   * asc): merging never reorders nodes, so a node's original index orders pairs the way their
   * current positions do, and stale entries are recognised by per-node version counters.
   * Compacts the result into toks[0..returned length).
   */
  private mergePairs(toks: Int32Array, n: number): number {
    if (n < 2) return n;
    const table = this.mergeTable();
    const scores = this.scores;
    const V = this.vocabSize;
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const ver = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1;
      prev[i] = i - 1;
    }
    next[n - 1] = -1;

    // At most n-1 initial pairs plus two per merge.
    const cap = 3 * n;
    const eScore = new Float64Array(cap);
    const eL = new Int32Array(cap);
    const eR = new Int32Array(cap);
    const eVL = new Int32Array(cap);
    const eVR = new Int32Array(cap);
    const eM = new Int32Array(cap);
    const heap = new Int32Array(cap);
    let entries = 0;
    let size = 0;

    const before = (a: number, b: number): boolean => {
      const sa = eScore[a]!;
      const sb = eScore[b]!;
      return sa > sb || (sa === sb && eL[a]! < eL[b]!);
    };
    const offer = (l: number, r: number): void => {
      const m = table.get(toks[l]! * V + toks[r]!);
      if (m === undefined) return;
      const s = scores[m]!;
      if (!(s > MIN_MERGE_SCORE)) return;
      const e = entries++;
      eScore[e] = s;
      eL[e] = l;
      eR[e] = r;
      eVL[e] = ver[l]!;
      eVR[e] = ver[r]!;
      eM[e] = m;
      let i = size++;
      while (i > 0) {
        const parent = (i - 1) >> 1;
        const pe = heap[parent]!;
        if (!before(e, pe)) break;
        heap[i] = pe;
        i = parent;
      }
      heap[i] = e;
    };
    const pop = (): number => {
      const top = heap[0]!;
      const last = heap[--size]!;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= size) break;
        const r = l + 1;
        const c = r < size && before(heap[r]!, heap[l]!) ? r : l;
        if (!before(heap[c]!, last)) break;
        heap[i] = heap[c]!;
        i = c;
      }
      heap[i] = last;
      return top;
    };

    for (let i = 0; i + 1 < n; i++) offer(i, i + 1);
    while (size > 0) {
      const e = pop();
      const l = eL[e]!;
      const r = eR[e]!;
      // A merge bumps the version of both nodes it touches; unchanged versions mean l, r still adjacent.
      if (ver[l] !== eVL[e] || ver[r] !== eVR[e]) continue;
      toks[l] = eM[e]!;
      ver[l]!++;
      ver[r]!++;
      const rn = next[r]!;
      next[l] = rn;
      if (rn >= 0) prev[rn] = l;
      const lp = prev[l]!;
      if (lp >= 0) offer(lp, l);
      if (rn >= 0) offer(l, rn);
    }

    // Node 0 never dies (only right-hand nodes are absorbed), so it heads the list.
    let k = 0;
    for (let i = 0; i >= 0; i = next[i]!) toks[k++] = toks[i]!;
    return k;
  }
}

// ---------------------------------------------------------------------------------------------
// Hugging Face export

/** The subset of a Hugging Face tokenizer.json this module writes. */
export interface HfTokenizerJson {
  version: string;
  truncation: null;
  padding: null;
  added_tokens: HfAddedToken[];
  normalizer: unknown;
  pre_tokenizer: null;
  post_processor: unknown;
  decoder: unknown;
  model: {
    type: 'BPE';
    dropout: null;
    unk_token: string | null;
    continuing_subword_prefix: null;
    end_of_word_suffix: null;
    fuse_unk: boolean;
    byte_fallback: boolean;
    ignore_merges: boolean;
    vocab: Record<string, number>;
    merges: [string, string][];
  };
}

export interface HfAddedToken {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

const SPECIAL_NAMES: readonly string[] = ['<unk>', '<s>', '</s>'];

/** SentencePiece spelling of each piece: '▁' for ' ', the special names for ids 0-2. */
function hfPieces(tok: Llama2cTokenizer): string[] {
  const out: string[] = [];
  for (let id = 0; id < tok.vocabSize; id++) {
    const special = SPECIAL_NAMES[id];
    if (special !== undefined) {
      out.push(special);
      continue;
    }
    let text: string;
    try {
      text = UTF8_STRICT.decode(tok.pieceBytes(id));
    } catch {
      throw new TokenizerFormatError(`piece ${id} is not valid UTF-8; it cannot be written to tokenizer.json`);
    }
    out.push(text.replaceAll(' ', '\u2581'));
  }
  return out;
}

/**
 * A Llama-2-style tokenizer.json for a llama2.c tokenizer, so that Hugging Face tooling
 * (transformers, tokenizers, tokenizers.js) reads an imported model directory.
 *
 * Merges follow transformers' SentencePieceExtractor as LlamaConverter uses it: every split of
 * each piece into two pieces (code-point splits), ordered by the merged piece's score
 * descending, ties by merged id then the ids of the parts (Python's stable sort over id order).
 *
 * Known differences from Llama2cTokenizer.encode (test/tokenizer.test.ts checks both sides):
 * - Added tokens: the literal text "<unk>", "<s>", "</s>" becomes the special token in HF;
 *   llama2.c spells it out as ordinary text.
 * - A literal '▁' (U+2581) in the text is a space to the HF normalizer; llama2.c has no '▁'
 *   piece (its pieces say ' ') and byte-falls it back to <0xE2><0x96><0x81>.
 * - In principle, BPE ranks break ties between *different* merges of equal score by merged id
 *   where llama2.c takes the leftmost pair; only overlapping candidates of equal score could
 *   tell. Llama 2's whitespace pieces all score -1e9, but runs of spaces, tabs and newlines up
 *   to 40 long tokenize identically, as do fuzzed mixed strings.
 */
export function writeHfTokenizerJson(tok: Llama2cTokenizer): HfTokenizerJson {
  const pieces = hfPieces(tok);
  return sentencePieceTokenizerJson({
    pieces,
    scores: Array.from({ length: tok.vocabSize }, (_, id) => tok.score(id)),
    added: SPECIAL_NAMES.map((_, id) => ({ id, special: true })),
    mergeable: (id) => id >= SPECIAL_NAMES.length,
    unk: '<unk>',
    bos: { id: BOS_ID, piece: '<s>' },
    addSpacePrefix: true,
  });
}

export interface SentencePieceVocabulary {
  /** Pieces as SentencePiece spells them ('▁' for a space), index = id. */
  pieces: string[];
  scores: ArrayLike<number>;
  /** Tokens matched as whole strings, never built by merges (control and user-defined tokens). */
  added: { id: number; special: boolean }[];
  /** Whether merges may produce this id (normal pieces; not control, byte or unused ones). */
  mergeable: (id: number) => boolean;
  unk: string;
  bos: { id: number; piece: string } | undefined;
  /** SentencePiece's add_dummy_prefix: a '▁' before the text, dropped again when decoding. */
  addSpacePrefix: boolean;
}

/**
 * A Llama-2-style tokenizer.json for a SentencePiece BPE vocabulary with scores (llama2.c's
 * tokenizer.bin, a GGUF's tokenizer.ggml.model = llama).
 */
export function sentencePieceTokenizerJson(v: SentencePieceVocabulary): HfTokenizerJson {
  const { pieces } = v;
  const vocab = new Map<string, number>();
  for (let id = 0; id < pieces.length; id++) {
    const p = pieces[id]!;
    if (vocab.has(p)) {
      throw new TokenizerFormatError(`pieces ${vocab.get(p)} and ${id} are both ${JSON.stringify(p)}; tokenizer.json cannot hold duplicates`);
    }
    vocab.set(p, id);
  }

  const merges: { l: string; r: string; score: number }[] = [];
  for (let m = 0; m < pieces.length; m++) {
    if (!v.mergeable(m)) continue;
    const chars = Array.from(pieces[m]!);
    if (chars.length < 2) continue;
    const score = v.scores[m] as number;
    const local: { l: string; r: string; li: number; ri: number }[] = [];
    for (let k = 1; k < chars.length; k++) {
      const l = chars.slice(0, k).join('');
      const r = chars.slice(k).join('');
      const li = vocab.get(l);
      const ri = vocab.get(r);
      if (li !== undefined && ri !== undefined) local.push({ l, r, li, ri });
    }
    local.sort((a, b) => a.li - b.li || a.ri - b.ri);
    for (const x of local) merges.push({ l: x.l, r: x.r, score });
  }
  // Array.prototype.sort is stable, like Python's sorted(reverse=True).
  merges.sort((a, b) => (a.score === b.score ? 0 : a.score > b.score ? -1 : 1));

  const added_tokens: HfAddedToken[] = v.added.map(({ id, special }) => ({
    id,
    content: pieces[id]!,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special,
  }));
  const vocabObj: Record<string, number> = {};
  for (const [p, id] of vocab) vocabObj[p] = id;
  const bos = v.bos;

  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens,
    normalizer: {
      type: 'Sequence',
      normalizers: [
        ...(v.addSpacePrefix ? [{ type: 'Prepend', prepend: '\u2581' }] : []),
        { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' },
      ],
    },
    pre_tokenizer: null,
    post_processor:
      bos === undefined
        ? null
        : {
            type: 'TemplateProcessing',
            single: [{ SpecialToken: { id: bos.piece, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
            pair: [
              { SpecialToken: { id: bos.piece, type_id: 0 } },
              { Sequence: { id: 'A', type_id: 0 } },
              { SpecialToken: { id: bos.piece, type_id: 1 } },
              { Sequence: { id: 'B', type_id: 1 } },
            ],
            special_tokens: { [bos.piece]: { id: bos.piece, ids: [bos.id], tokens: [bos.piece] } },
          },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        ...(v.addSpacePrefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: v.unk,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: vocabObj,
      merges: merges.map((m) => [m.l, m.r] as [string, string]),
    },
  };
}

/** tokenizer_config.json to go with writeHfTokenizerJson (Llama 2's, minus the chat template). */
export function writeHfTokenizerConfigJson(opts?: { modelMaxLength?: number }): Record<string, unknown> {
  const added: Record<string, unknown> = {};
  SPECIAL_NAMES.forEach((content, id) => {
    added[String(id)] = { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
  });
  return {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: added,
    bos_token: '<s>',
    eos_token: '</s>',
    unk_token: '<unk>',
    pad_token: null,
    // Clean-up would rewrite " ." to "." and break decode(encode(x)) === x.
    clean_up_tokenization_spaces: false,
    legacy: false,
    model_max_length: opts?.modelMaxLength ?? 1e30,
    padding_side: 'right',
    sp_model_kwargs: {},
    tokenizer_class: 'LlamaTokenizer',
  };
}
