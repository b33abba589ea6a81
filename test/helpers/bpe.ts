/**
 * A small byte-level BPE vocabulary (GPT-2 style, as Llama 3 and Qwen2 use), trained here on a
 * few hundred words of text: no such tokenizer is among the shared test data, and the GGUF
 * tests need one that llama.cpp and marginal both read from the file.
 */

/** GPT-2's bytes_to_unicode: each byte as a printable character. */
export function byteChars(): string[] {
  const chars: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars.push(String.fromCharCode(printable ? b : 256 + extra++));
  }
  return chars;
}

export interface BpeVocabulary {
  /** Byte characters first (ids 0–255), then one token per merge, then the special tokens. */
  tokens: string[];
  /** "left right", in merge order. */
  merges: string[];
  special: Record<string, number>;
}

/** Greedy BPE training: `merges` times, the most frequent adjacent pair (ties: first in sort order) becomes a token. */
export function trainBpe(text: string, split: RegExp, merges: number, special: string[]): BpeVocabulary {
  const chars = byteChars();
  const utf8 = new TextEncoder();
  const words = new Map<string, number>();
  for (const m of text.matchAll(split)) {
    const w = Array.from(utf8.encode(m[0]), (b) => chars[b] as string).join('\u0000');
    words.set(w, (words.get(w) ?? 0) + 1);
  }
  let pieces = [...words.entries()].map(([w, n]) => ({ parts: w.split('\u0000'), n }));
  const tokens = [...chars];
  const known = new Set(tokens);
  const out: string[] = [];
  for (let k = 0; k < merges; k++) {
    const counts = new Map<string, number>();
    for (const { parts, n } of pieces) {
      for (let i = 0; i + 1 < parts.length; i++) {
        const key = `${parts[i]} ${parts[i + 1]}`;
        counts.set(key, (counts.get(key) ?? 0) + n);
      }
    }
    let best: string | undefined;
    let bestN = 1;
    for (const [key, n] of [...counts.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
      if (n > bestN) {
        best = key;
        bestN = n;
      }
    }
    if (best === undefined) break;
    const [l, r] = best.split(' ') as [string, string];
    out.push(best);
    // Two merges can spell the same string ('a'+'bc', 'ab'+'c'): one token, two merges.
    if (!known.has(l + r)) {
      known.add(l + r);
      tokens.push(l + r);
    }
    pieces = pieces.map(({ parts, n }) => {
      const next: string[] = [];
      for (let i = 0; i < parts.length; i++) {
        if (i + 1 < parts.length && parts[i] === l && parts[i + 1] === r) {
          next.push(l + r);
          i++;
        } else {
          next.push(parts[i] as string);
        }
      }
      return { parts: next, n };
    });
  }
  const ids: Record<string, number> = {};
  for (const s of special) {
    ids[s] = tokens.length;
    tokens.push(s);
  }
  return { tokens, merges: out, special: ids };
}

/** llama.cpp's Llama 3 split pattern (the importer's, with the u flag JavaScript needs). */
export const LLAMA3_SPLIT = /(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;
export const QWEN2_SPLIT = /(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;
