import type { Tokenizer } from './types.js';

// ignoreBOM: a U+FEFF the model produces is text, not a byte-order mark to swallow.
const DECODER = new TextDecoder('utf-8', { ignoreBOM: true });

/**
 * Length of the prefix of buf[0..n) that can be decoded now: everything except a trailing,
 * still-valid but incomplete UTF-8 sequence. Invalid bytes are not held back, so they turn into
 * U+FFFD exactly where a streaming WHATWG TextDecoder would emit them.
 */
function completePrefix(buf: Uint8Array, n: number): number {
  // Find the last non-continuation byte among the final 4.
  let p = n - 1;
  const stop = Math.max(0, n - 4);
  while (p >= stop && (buf[p]! & 0xc0) === 0x80) p--;
  if (p < stop) return n; // only continuation bytes: invalid, nothing to wait for
  const lead = buf[p]!;
  let need: number;
  if (lead >= 0xc2 && lead <= 0xdf) need = 2;
  else if (lead >= 0xe0 && lead <= 0xef) need = 3;
  else if (lead >= 0xf0 && lead <= 0xf4) need = 4;
  else return n; // ASCII or a byte that can never start a sequence
  const have = n - p;
  if (have >= need) return n;
  if (have >= 2) {
    // The second byte's range depends on the lead (no overlongs, surrogates or > U+10FFFF).
    const b1 = buf[p + 1]!;
    const lo = lead === 0xe0 ? 0xa0 : lead === 0xf0 ? 0x90 : 0x80;
    const hi = lead === 0xed ? 0x9f : lead === 0xf4 ? 0x8f : 0xbf;
    if (b1 < lo || b1 > hi) return n;
  }
  return p;
}

/**
 * Turns a stream of token ids into text without ever splitting a UTF-8 sequence: bytes of an
 * incomplete character (byte-fallback tokens) wait in a small reused buffer until the character
 * completes. Invalid sequences come out as U+FFFD, as TextDecoder would produce them.
 */
export class StreamDetokenizer {
  private readonly tok: Tokenizer;
  private prevId: number;
  private buf = new Uint8Array(64);
  private pending = 0;

  /**
   * @param prev the token before the first pushed one: the last prompt token, or BOS so that
   *   the first piece drops its leading space; -1 for none.
   */
  constructor(tok: Tokenizer, prev = -1) {
    this.tok = tok;
    this.prevId = prev;
  }

  /** The last token pushed (or the initial prev). */
  get prev(): number {
    return this.prevId;
  }

  /** Bytes held back waiting for the rest of a character. */
  get pendingBytes(): number {
    return this.pending;
  }

  /** Text completed by this token (possibly ""). */
  push(id: number): string {
    const bytes = this.tok.tokenBytes(id, this.prevId);
    this.prevId = id;
    if (bytes.length === 0) return '';
    if (this.pending === 0) {
      const cut = completePrefix(bytes, bytes.length);
      if (cut < bytes.length) this.hold(bytes, cut, bytes.length);
      return cut === 0 ? '' : DECODER.decode(cut === bytes.length ? bytes : bytes.subarray(0, cut));
    }
    const n = this.pending + bytes.length;
    if (n > this.buf.length) {
      const bigger = new Uint8Array(Math.max(n, this.buf.length * 2));
      bigger.set(this.buf.subarray(0, this.pending));
      this.buf = bigger;
    }
    this.buf.set(bytes, this.pending);
    const cut = completePrefix(this.buf, n);
    const text = cut === 0 ? '' : DECODER.decode(this.buf.subarray(0, cut));
    this.buf.copyWithin(0, cut, n);
    this.pending = n - cut;
    return text;
  }

  /** Whatever is still held back, as U+FFFD (the character never completed). */
  flush(): string {
    if (this.pending === 0) return '';
    const text = DECODER.decode(this.buf.subarray(0, this.pending));
    this.pending = 0;
    return text;
  }

  /** Forget held bytes and start over after `prev`. */
  reset(prev = -1): void {
    this.pending = 0;
    this.prevId = prev;
  }

  private hold(src: Uint8Array, from: number, to: number): void {
    // At most 3 bytes are ever held, so the initial buffer always fits.
    this.buf.set(src.subarray(from, to), 0);
    this.pending = to - from;
  }
}
