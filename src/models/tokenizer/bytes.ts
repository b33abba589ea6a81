const UTF8_DECODER = new TextDecoder('utf-8', { ignoreBOM: true });

/**
 * A full decode from per-token bytes: each token's bytes given the token before it, joined and
 * decoded once, so characters split across byte-fallback tokens come out whole.
 */
export function decodeTokenBytes(ids: ArrayLike<number>, tokenBytes: (id: number, prev: number) => Uint8Array): string {
  let total = 0;
  for (let i = 0; i < ids.length; i++) total += tokenBytes(ids[i]!, i > 0 ? ids[i - 1]! : -1).length;
  const buf = new Uint8Array(total);
  let off = 0;
  for (let i = 0; i < ids.length; i++) {
    // tokenBytes may hand back a shared buffer: copy it out before the next call.
    const b = tokenBytes(ids[i]!, i > 0 ? ids[i - 1]! : -1);
    buf.set(b, off);
    off += b.length;
  }
  return UTF8_DECODER.decode(buf);
}
