import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TokenizerFormatError } from '../src/errors.js';
import {
  HfTokenizer,
  Llama2cTokenizer,
  StreamDetokenizer,
  writeHfTokenizerConfigJson,
  writeHfTokenizerJson,
  type Tokenizer,
} from '../src/models/tokenizer/index.js';
import { requireShared, sharedDir } from './helpers/shared.js';

const TOK512 = join(sharedDir, 'models/stories260K/tok512.bin');
const LLAMA2 = join(sharedDir, 'models/llama2-tokenizer/tokenizer.bin');

const SAMPLES = [
  'Zoo',
  'Once upon a time, there was a little girl named Lily.',
  'Hello world',
  'café naïve',
  'ÀÉÎÕÜ ñ ß',
  '你好，世界',
  '🦙🚀',
  'a🦙b 🚀 c',
  'Привет мир',
  'مرحبا',
  'line one\nline two\r\n\ttabbed\n\n',
  'multiple   spaces    here',
  '  two leading spaces',
  'trailing spaces  ',
  ' ',
  '\n',
  'x',
  '\u00a0non-breaking\u00a0space',
  '"quotes" and (parens) & symbols #1 100%',
];

// ---------------------------------------------------------------------------------------------
// helpers

const FORMAT_ERROR = (e: unknown): boolean =>
  e instanceof TokenizerFormatError && (e as { code?: string }).code === 'MARGINAL_TOKENIZER_FORMAT';

const utf8 = new TextEncoder();

/** A llama2.c .bin from piece texts and scores. */
function binFromPieces(texts: string[], scores: number[]): Uint8Array {
  const bytes = texts.map((t) => utf8.encode(t));
  const size = 4 + bytes.reduce((n, b) => n + 8 + b.length, 0);
  const buf = Buffer.alloc(size);
  let at = buf.writeInt32LE(Math.max(...bytes.map((b) => b.length)), 0);
  bytes.forEach((b, i) => {
    at = buf.writeFloatLE(scores[i]!, at);
    at = buf.writeInt32LE(b.length, at);
    buf.set(b, at);
    at += b.length;
  });
  return buf;
}

/** Specials, the 256 byte pieces, then `extra` pieces with the given scores. */
function tinyTokenizer(extra: [string, number][]): Llama2cTokenizer {
  const texts = ['<unk>', '\n<s>\n', '\n</s>\n'];
  for (let b = 0; b < 256; b++) texts.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const scores = texts.map(() => 0);
  for (const [t, s] of extra) {
    texts.push(t);
    scores.push(s);
  }
  return Llama2cTokenizer.fromBuffer(binFromPieces(texts, scores));
}

/**
 * run.c's encode, transliterated as plainly as possible (strings, rescanning every pair per
 * merge) to check the heap-based implementation against.
 */
function referenceEncoder(bin: Uint8Array, vocabSize: number): (text: string, bos: boolean) => number[] {
  const buf = Buffer.from(bin);
  const vocab: string[] = [];
  const scores: number[] = [];
  let off = 4;
  for (let i = 0; i < vocabSize; i++) {
    scores.push(buf.readFloatLE(off));
    const len = buf.readInt32LE(off + 4);
    vocab.push(buf.subarray(off + 8, off + 8 + len).toString('latin1'));
    off += 8 + len;
  }
  const lookup = (s: string): number => vocab.indexOf(s);
  const index = new Map<string, number>();
  const cachedLookup = (s: string): number => {
    let id = index.get(s);
    if (id === undefined) index.set(s, (id = lookup(s)));
    return id;
  };
  return (text, bos) => {
    const bytes = Buffer.from(text, 'utf8');
    const tokens: number[] = [];
    if (bos) tokens.push(1);
    if (bytes.length > 0) tokens.push(cachedLookup(' '));
    let str = '';
    for (let c = 0; c < bytes.length; c++) {
      if ((bytes[c]! & 0xc0) !== 0x80) str = '';
      str += String.fromCharCode(bytes[c]!);
      if (c + 1 < bytes.length && (bytes[c + 1]! & 0xc0) === 0x80 && str.length < 4) continue;
      const id = cachedLookup(str);
      if (id !== -1) tokens.push(id);
      else for (let i = 0; i < str.length; i++) tokens.push(str.charCodeAt(i) + 3);
      str = '';
    }
    for (;;) {
      let bestScore = -1e10;
      let bestId = -1;
      let bestIdx = -1;
      for (let i = 0; i < tokens.length - 1; i++) {
        const id = cachedLookup(vocab[tokens[i]!]! + vocab[tokens[i + 1]!]!);
        if (id !== -1 && scores[id]! > bestScore) {
          bestScore = scores[id]!;
          bestId = id;
          bestIdx = i;
        }
      }
      if (bestIdx === -1) break;
      tokens.splice(bestIdx, 2, bestId);
    }
    return tokens;
  };
}

/** Deterministic random strings rich in the cases that matter: spaces, newlines, multi-byte. */
function fuzzStrings(count: number, seed: number): string[] {
  const parts = ['a', 'b', 'e', 't', 'h', 'Z', 'o', ' ', ' ', '  ', '\n', '\t', '\r', '.', ',', '!', '1', '2', 'é', 'ï', 'ß', 'ü',
    '你', '好', '🦙', '🚀', 'the', ' the', 'ing', ' and', '\u00a0', 'Лиса', 'ا'];
  let s = seed;
  const rnd = (): number => {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    return s / 0x80000000;
  };
  const out: string[] = [];
  for (let k = 0; k < count; k++) {
    const n = Math.floor(rnd() * 24);
    let str = '';
    for (let i = 0; i < n; i++) str += parts[Math.floor(rnd() * parts.length)]!;
    out.push(str);
  }
  return out;
}

/** Streams ids through a detokenizer and checks it against decode() and against U+FFFD. */
function streamAll(tok: Tokenizer, ids: number[], prev = -1): { text: string; pieces: string[] } {
  const s = new StreamDetokenizer(tok, prev);
  const pieces = ids.map((id) => s.push(id));
  pieces.push(s.flush());
  return { text: pieces.join(''), pieces };
}

const loaded = new Map<string, Llama2cTokenizer>();
function load(path: string, vocab: number): Llama2cTokenizer {
  let t = loaded.get(path);
  if (!t) loaded.set(path, (t = Llama2cTokenizer.fromFileSync(path, vocab)));
  return t;
}

// ---------------------------------------------------------------------------------------------
// llama2.c tokenizer: format

test('llama2.c: corrupt tokenizer files throw TokenizerFormatError', () => {
  const good = binFromPieces(['<unk>', '\n<s>\n', '\n</s>\n', ' ', 'a'], [0, 0, 0, -1, -2]);
  assert.equal(Llama2cTokenizer.fromBuffer(good).vocabSize, 5);
  assert.equal(Llama2cTokenizer.fromBuffer(good, 5).vocabSize, 5);
  assert.throws(() => Llama2cTokenizer.fromBuffer(good.subarray(0, 2)), FORMAT_ERROR, 'header cut');
  assert.throws(() => Llama2cTokenizer.fromBuffer(good.subarray(0, good.length - 1)), FORMAT_ERROR, 'last piece cut');
  assert.throws(() => Llama2cTokenizer.fromBuffer(good.subarray(0, 10), 5), FORMAT_ERROR, 'score/length cut');
  assert.throws(() => Llama2cTokenizer.fromBuffer(good, 6), FORMAT_ERROR, 'fewer pieces than the vocab size');
  assert.throws(() => Llama2cTokenizer.fromBuffer(good, 2), FORMAT_ERROR, 'vocab without BOS/EOS');

  const negLen = Buffer.from(good);
  negLen.writeInt32LE(-7, 4 + 4); // length field of piece 0
  assert.throws(() => Llama2cTokenizer.fromBuffer(negLen), FORMAT_ERROR, 'negative piece length');
  const hugeLen = Buffer.from(good);
  hugeLen.writeInt32LE(0x7fffffff, 4 + 4);
  assert.throws(() => Llama2cTokenizer.fromBuffer(hugeLen), FORMAT_ERROR, 'piece length past the end');
  const negMax = Buffer.from(good);
  negMax.writeInt32LE(-1, 0);
  assert.throws(() => Llama2cTokenizer.fromBuffer(negMax), FORMAT_ERROR, 'negative max_token_length');
});

test('llama2.c: toBuffer writes the file back byte for byte', (t) => {
  const bin = binFromPieces(['<unk>', '\n<s>\n', '\n</s>\n', ' ', 'é'], [0, 0, 0, -1.5, -2]);
  assert.deepEqual(Llama2cTokenizer.fromBuffer(bin).toBuffer(), new Uint8Array(bin));
  if (!requireShared(t)) return;
  for (const [path, vocab] of [[TOK512, 512], [LLAMA2, 32000]] as const) {
    const file = readFileSync(path);
    const tok = load(path, vocab);
    assert.deepEqual(Buffer.from(tok.toBuffer()), file, path);
    // The format does not store the vocabulary size, but these files hold exactly that many pieces.
    assert.equal(Llama2cTokenizer.fromBuffer(file).vocabSize, vocab);
  }
});

// ---------------------------------------------------------------------------------------------
// llama2.c tokenizer: encode

test('llama2.c: merge order is by score, leftmost on ties, and never at or below -1e10', () => {
  const tok = tinyTokenizer([[' ', -1], ['a', -2], ['b', -3], ['c', -4], ['aa', -5], ['ab', -6], ['bc', -7], ['bb', -1e10], ['cc', -20], ['ccc', -21]]);
  const id = (p: string): number => tok.pieceId(p)!;
  // Two equal candidates "aa": the leftmost wins, leaving a trailing "a".
  assert.deepEqual(tok.encode('aaa'), [id(' '), id('aa'), id('a')]);
  // "ab" (-6) beats "bc" (-7).
  assert.deepEqual(tok.encode('abc'), [id(' '), id('ab'), id('c')]);
  // -1e10 is run.c's starting best score and the comparison is strict.
  assert.deepEqual(tok.encode('bb'), [id(' '), id('b'), id('b')]);
  // Merges chain: "cc" (leftmost), then "ccc".
  assert.deepEqual(tok.encode('ccc'), [id(' '), id('ccc')]);
  // ...unless a better merge competes: the second "cc" (-20) beats "ccc" (-21).
  assert.deepEqual(tok.encode('cccc'), [id(' '), id('cc'), id('cc')]);
  // BOS, dummy prefix only for non-empty text, EOS after merging.
  assert.deepEqual(tok.encode(''), []);
  assert.deepEqual(tok.encode('', { bos: true, eos: true }), [1, 2]);
  assert.deepEqual(tok.encode('ab', { bos: true, eos: true }), [1, id(' '), id('ab'), 2]);
  // Byte fallback: id = byte + 3 for each UTF-8 byte of a missing code point.
  assert.deepEqual(tok.encode('é'), [id(' '), 0xc3 + 3, 0xa9 + 3]);
  assert.deepEqual(tok.encode('\0'), [id(' '), 3]);
});

test('llama2.c: tok512 known encodings and byte fallback', (t) => {
  if (!requireShared(t)) return;
  const tok = load(TOK512, 512);
  const space = tok.pieceId(' ')!;
  const zoo = tok.encode('Zoo', { bos: true });
  assert.equal(zoo[0], 1);
  assert.equal(tok.decode(zoo), 'Zoo');
  // tok512 has no CJK or emoji pieces: each UTF-8 byte becomes <0xXX> = byte + 3.
  for (const ch of ['你', '🦙']) {
    assert.equal(tok.pieceId(ch), undefined);
    const expected = [space, ...Array.from(utf8.encode(ch), (b) => b + 3)];
    assert.deepEqual(tok.encode(ch), expected, ch);
    for (const id of expected.slice(1)) assert.match(tok.piece(id), /^<0x[0-9A-F]{2}>$/);
  }
  assert.deepEqual(Array.from(tok.tokenBytes(0xe4 + 3, -1)), [0xe4]);
});

test('llama2.c: Llama 2 known encodings', (t) => {
  if (!requireShared(t)) return;
  const tok = load(LLAMA2, 32000);
  // As Meta's Llama 2 tokenizer (sentencepiece and transformers) encodes it.
  assert.deepEqual(tok.encode('Hello world', { bos: true }), [1, 15043, 3186]);
  assert.equal(tok.piece(15043), ' Hello');
});

test('llama2.c: decode(encode(x)) === x for both tokenizers', (t) => {
  if (!requireShared(t)) return;
  for (const [path, vocab] of [[TOK512, 512], [LLAMA2, 32000]] as const) {
    const tok = load(path, vocab);
    for (const s of [...SAMPLES, ...fuzzStrings(200, 7)]) {
      assert.equal(tok.decode(tok.encode(s, { bos: true })), s, `${path}: ${JSON.stringify(s)}`);
      // Without BOS nothing strips the dummy prefix.
      assert.equal(tok.decode(tok.encode(s)), s.length > 0 ? ` ${s}` : '', `${path} no BOS: ${JSON.stringify(s)}`);
    }
  }
});

test('llama2.c: encode matches a literal transliteration of run.c', (t) => {
  if (!requireShared(t)) return;
  for (const [path, vocab] of [[TOK512, 512], [LLAMA2, 32000]] as const) {
    const tok = load(path, vocab);
    const reference = referenceEncoder(readFileSync(path), vocab);
    const strings = [...SAMPLES, ...fuzzStrings(300, 42), fuzzStrings(60, 3).join(' ')];
    for (const [i, s] of strings.entries()) {
      const bos = i % 2 === 0;
      assert.deepEqual(tok.encode(s, { bos }), reference(s, bos), `${path}: ${JSON.stringify(s)}`);
    }
  }
});

test('llama2.c: long prompts encode quickly', (t) => {
  if (!requireShared(t)) return;
  const tok = load(LLAMA2, 32000);
  const text = fuzzStrings(4000, 11).join(' '); // ~50k characters
  tok.encode('warm up the merge table');
  const t0 = performance.now();
  const ids = tok.encode(text, { bos: true });
  const ms = performance.now() - t0;
  assert.ok(ids.length > 10_000);
  assert.equal(tok.decode(ids), text);
  // run.c's rescanning loop takes seconds here; the heap version a few milliseconds.
  assert.ok(ms < 1000, `encoding ${text.length} chars took ${ms.toFixed(0)} ms`);
});

// ---------------------------------------------------------------------------------------------
// llama2.c tokenizer: decode

test('llama2.c: decode drops the leading space only after BOS; specials decode to nothing', () => {
  const tok = tinyTokenizer([[' ', -1], ['a', -2], [' a', -3]]);
  const sa = tok.pieceId(' a')!;
  assert.equal(tok.decode([1, sa, sa]), 'a a');
  assert.equal(tok.decode([sa, sa]), ' a a');
  assert.equal(tok.decode([1, sa, 2]), 'a');
  assert.equal(tok.decode([0]), '');
  // A byte piece after BOS is a byte, not a space to strip.
  assert.equal(tok.decode([1, 0x20 + 3, sa]), '  a');
  assert.equal(tok.tokenBytes(99999, -1).length, 0);
  assert.equal(tok.tokenBytes(-1, -1).length, 0);
});

// ---------------------------------------------------------------------------------------------
// streaming detokenizer

test('stream: byte-fallback characters are held back until complete', () => {
  const tok = tinyTokenizer([[' ', -1], ['a', -2], [' a', -3]]);
  const ids = tok.encode('a🦙é你', { bos: true });
  const { text, pieces } = streamAll(tok, ids);
  assert.equal(text, 'a🦙é你');
  assert.equal(text, tok.decode(ids));
  for (const p of pieces) assert.ok(!p.includes('\uFFFD'), JSON.stringify(pieces));
  // The four bytes of the emoji arrive as four tokens: three pushes return nothing.
  assert.deepEqual(pieces, ['', 'a', '', '', '', '🦙', '', 'é', '', '', '你', '']);
});

test('stream: invalid sequences become U+FFFD exactly where a streaming TextDecoder puts them', () => {
  const tok = tinyTokenizer([[' ', -1], ['a', -2], ['é', -3], [' a', -4]]);
  let seed = 99;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return Math.floor((seed / 0x80000000) * n);
  };
  // Bytes biased towards UTF-8 structure so that valid, truncated and invalid sequences all occur.
  const interesting = [0x41, 0x20, 0x80, 0x9f, 0xa0, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0, 0xe2, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff];
  for (let round = 0; round < 500; round++) {
    const ids: number[] = [];
    const n = 1 + rnd(12);
    for (let i = 0; i < n; i++) {
      const r = rnd(10);
      if (r < 7) ids.push(interesting[rnd(interesting.length)]! + 3);
      else if (r < 8) ids.push(rnd(256) + 3);
      else ids.push(259 + rnd(4)); // a text piece
    }
    const stream = new StreamDetokenizer(tok);
    const reference = new TextDecoder('utf-8', { ignoreBOM: true });
    let prev = -1;
    for (const id of ids) {
      const expected = reference.decode(tok.tokenBytes(id, prev), { stream: true });
      prev = id;
      assert.equal(stream.push(id), expected, JSON.stringify(ids));
    }
    assert.equal(stream.flush(), reference.decode(), JSON.stringify(ids));
    assert.equal(stream.pendingBytes, 0);
  }
});

test('stream: pushes + flush equal decode, never U+FFFD, for both llama2.c tokenizers', (t) => {
  if (!requireShared(t)) return;
  for (const [path, vocab] of [[TOK512, 512], [LLAMA2, 32000]] as const) {
    const tok = load(path, vocab);
    for (const s of [...SAMPLES, ...fuzzStrings(100, 5)]) {
      const ids = tok.encode(s, { bos: true });
      const { text, pieces } = streamAll(tok, ids);
      assert.equal(text, tok.decode(ids), `${path}: ${JSON.stringify(s)}`);
      assert.equal(text, s);
      for (const p of pieces) assert.ok(!p.includes('\uFFFD'), `${path}: ${JSON.stringify(s)} → ${JSON.stringify(pieces)}`);
      // Starting after the prompt's BOS, as the server streams a completion.
      assert.equal(streamAll(tok, ids.slice(1), 1).text, s);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Hugging Face export and HfTokenizer

test('HF export: tokenizer.json encodes like Llama2cTokenizer for both tokenizers', (t) => {
  if (!requireShared(t)) return;
  for (const [path, vocab] of [[TOK512, 512], [LLAMA2, 32000]] as const) {
    const tok = load(path, vocab);
    const json = JSON.parse(JSON.stringify(writeHfTokenizerJson(tok))) as ReturnType<typeof writeHfTokenizerJson>;
    const config = writeHfTokenizerConfigJson({ modelMaxLength: 512 });
    const hf = new HfTokenizer(json, config);
    assert.equal(hf.vocabSize, vocab);
    assert.equal(hf.bosId, 1);
    assert.equal(hf.eosId, 2);
    assert.equal(hf.addsBos, true);
    assert.equal(json.model.vocab['\u2581t'], tok.pieceId(' t'));
    assert.equal(json.model.vocab['<0x0A>'], 0x0a + 3);
    // The best-scoring merge comes first (' t' is the first merged piece in both vocabularies).
    assert.deepEqual(json.model.merges[0], ['\u2581', 't']);

    const whitespaceRuns: string[] = [];
    for (const ws of [' ', '\n', '\t', ' \n']) {
      for (let k = 1; k <= 24; k++) whitespaceRuns.push(`a${ws.repeat(k)}b`, ws.repeat(k), `${ws.repeat(k)}x`);
    }
    for (const s of [...SAMPLES, ...whitespaceRuns, ...fuzzStrings(300, 1234)]) {
      const ids = tok.encode(s, { bos: true });
      assert.deepEqual(hf.encode(s, { bos: true }), ids, `${path}: ${JSON.stringify(s)}`);
      assert.deepEqual(hf.hf.encode(s).ids, ids, `${path} (library, add_special_tokens): ${JSON.stringify(s)}`);
      const native = ids.length > 0 ? hf.hf.decode(ids, { skip_special_tokens: true }) : '';
      assert.equal(native, s, `${path} library decode: ${JSON.stringify(s)}`);
      assert.equal(hf.decode(ids), s);
    }
    assert.deepEqual(hf.encode(''), tok.encode(''));
    assert.deepEqual(hf.encode('', { bos: true, eos: true }), [1, 2]);

    // Documented differences (see writeHfTokenizerJson): HF treats a literal "<s>" as the
    // special token and '▁' as a space; llama2.c spells both out.
    assert.deepEqual(hf.encode('<s>'), [1]);
    assert.notDeepEqual(tok.encode('<s>'), [1]);
    assert.equal(tok.decode(tok.encode('<s>', { bos: true })), '<s>');
    assert.deepEqual(hf.encode('a\u2581b'), hf.encode('a b'));
    assert.deepEqual(tok.encode('\u2581').slice(1), Array.from(utf8.encode('\u2581'), (b) => b + 3));
  }
});

test('HfTokenizer: SentencePiece-style decoding and streaming', (t) => {
  if (!requireShared(t)) return;
  const tok = load(LLAMA2, 32000);
  const hf = new HfTokenizer(writeHfTokenizerJson(tok), writeHfTokenizerConfigJson());
  const hello = tok.pieceId(' Hello')!;
  // HF's Strip decoder drops the first space of a sequence whether or not BOS precedes it;
  // llama2.c only after BOS.
  assert.equal(hf.decode([hello, hello]), 'Hello Hello');
  assert.equal(hf.decode([1, hello]), 'Hello');
  assert.equal(tok.decode([hello]), ' Hello');
  assert.equal(new TextDecoder().decode(hf.tokenBytes(hello, 3186)), ' Hello');
  assert.deepEqual(Array.from(hf.tokenBytes(0xe4 + 3, 3186)), [0xe4]);
  assert.equal(hf.tokenBytes(1, -1).length, 0);
  assert.equal(hf.tokenBytes(40000, -1).length, 0);
  for (const s of [...SAMPLES, ...fuzzStrings(100, 77)]) {
    const ids = hf.encode(s, { bos: true });
    const { text, pieces } = streamAll(hf, ids);
    assert.equal(text, s, JSON.stringify(s));
    for (const p of pieces) assert.ok(!p.includes('\uFFFD'), JSON.stringify(pieces));
    assert.equal(streamAll(hf, ids.slice(1), hf.bosId).text, s);
  }
});

/** GPT-2's bytes_to_unicode. */
function gpt2ByteChars(): string[] {
  const chars: string[] = new Array<string>(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    chars[b] = String.fromCharCode(printable ? b : 256 + n++);
  }
  return chars;
}

/** A small GPT-2-style byte-level BPE tokenizer.json (no network needed). */
function byteLevelTokenizer(config: object): HfTokenizer {
  const chars = gpt2ByteChars();
  const vocab: Record<string, number> = {};
  chars.forEach((c, b) => (vocab[c] = b));
  const merges: [string, string][] = [['Ġ', 't'], ['h', 'e'], ['Ġt', 'he'], ['l', 'l'], ['he', 'll'], ['hell', 'o'], ['Ġ', 'w']];
  for (const [a, b] of merges) vocab[a + b] = Object.keys(vocab).length;
  const eot = Object.keys(vocab).length;
  const json = {
    version: '1.0',
    added_tokens: [{ id: eot, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab, merges },
  };
  return new HfTokenizer(json, config);
}

test('HfTokenizer: GPT-2-style byte-level BPE', () => {
  // GPT-2's own tokenizer_config.json names no special tokens at all.
  for (const config of [{}, { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', add_bos_token: false }]) {
    const hf = byteLevelTokenizer(config);
    const eot = hf.vocabSize - 1;
    assert.equal(hf.eosId, eot);
    assert.equal(hf.bosId, eot);
    assert.equal(hf.addsBos, false);
    const hello = hf.hf.token_to_id('hello')!;
    const the = hf.hf.token_to_id('Ġthe')!;
    assert.deepEqual(hf.encode('hello the'), [hello, the]);
    assert.deepEqual(hf.encode('hello the', { bos: true, eos: true }), [hello, the, eot]);
    assert.equal(new TextDecoder().decode(hf.tokenBytes(the, hello)), ' the');
    for (const s of [...SAMPLES, ...fuzzStrings(100, 9)]) {
      const ids = hf.encode(s);
      assert.equal(hf.decode(ids), s, JSON.stringify(s));
      if (ids.length > 0) assert.equal(hf.hf.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false }), s);
      const { text, pieces } = streamAll(hf, [...ids, eot]);
      assert.equal(text, s);
      for (const p of pieces) assert.ok(!p.includes('\uFFFD'), JSON.stringify(pieces));
    }
    // The emoji is four single-byte tokens here: the stream waits for the fourth.
    const { pieces } = streamAll(hf, hf.encode('🦙'));
    assert.deepEqual(pieces, ['', '', '', '🦙', '']);
    assert.equal(hf.encode('<|endoftext|>')[0], eot);
  }
});

test('HfTokenizer: malformed tokenizer.json throws TokenizerFormatError', () => {
  assert.throws(() => new HfTokenizer({}), FORMAT_ERROR);
  assert.throws(() => new HfTokenizer(null), FORMAT_ERROR);
  // A vocabulary with no recognisable EOS.
  assert.throws(
    () => new HfTokenizer({ model: { type: 'BPE', vocab: { a: 0, b: 1 }, merges: [], unk_token: null }, decoder: null }),
    FORMAT_ERROR,
  );
});
