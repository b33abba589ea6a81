/**
 * A deterministic llama2.c-format tokenizer for synthetic models on machines without a real
 * one: the three specials, the 256 byte-fallback pieces, printable ASCII with and without a
 * leading space, then frequent English fragments until the vocabulary is full. Scores rise
 * with length so longer merges win, as in a trained SentencePiece model.
 */
const FRAGMENTS = [
  'th', 'he', 'in', 'er', 'an', 're', 'on', 'at', 'en', 'nd', 'ti', 'es', 'or', 'te', 'of', 'ed', 'is', 'it', 'al', 'ar',
  'st', 'to', 'nt', 'ng', 'se', 'ha', 'as', 'ou', 'io', 'le', 've', 'co', 'me', 'de', 'hi', 'ri', 'ro', 'ic', 'ne', 'ea',
  'the', 'and', 'ing', 'ion', 'ent', 'her', 'for', 'tha', 'nth', 'int', 'ere', 'tio', 'ter', 'est', 'ers', 'ati', 'hat',
];

export function syntheticTokenizerBuffer(vocabSize: number): Buffer {
  const pieces: { text: string; score: number }[] = [
    { text: '<unk>', score: 0 },
    { text: '\n<s>\n', score: 0 },
    { text: '\n</s>\n', score: 0 },
  ];
  for (let b = 0; b < 256; b++) pieces.push({ text: `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, score: 0 });
  const seen = new Set(pieces.map((p) => p.text));
  const add = (text: string) => {
    if (pieces.length >= vocabSize || seen.has(text)) return;
    seen.add(text);
    pieces.push({ text, score: -1000 + text.length * 10 - pieces.length * 1e-3 });
  };
  for (let c = 32; c < 127; c++) add(String.fromCharCode(c));
  for (const f of FRAGMENTS) add(f);
  for (const f of FRAGMENTS) add(` ${f}`);
  for (let c = 97; c < 123; c++) add(` ${String.fromCharCode(c)}`);
  // Fill the rest with two-fragment words so that merges of every length exist.
  outer: for (const a of FRAGMENTS) {
    for (const b of FRAGMENTS) {
      if (pieces.length >= vocabSize) break outer;
      add(` ${a}${b}`);
      add(`${a}${b}`);
    }
  }
  for (let i = 0; pieces.length < vocabSize; i++) add(`<unused${i}>`);
  const enc = new TextEncoder();
  const encoded = pieces.map((p) => ({ bytes: enc.encode(p.text), score: p.score }));
  const maxLen = Math.max(...encoded.map((p) => p.bytes.length));
  const size = 4 + encoded.reduce((n, p) => n + 8 + p.bytes.length, 0);
  const out = Buffer.alloc(size);
  let at = out.writeInt32LE(maxLen, 0);
  for (const p of encoded) {
    at = out.writeFloatLE(p.score, at);
    at = out.writeInt32LE(p.bytes.length, at);
    out.set(p.bytes, at);
    at += p.bytes.length;
  }
  return out;
}
