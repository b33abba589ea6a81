import type { Tokenizer } from '../models/tokenizer/types.js';
import type { TokenLogprobs } from '../sampling/logprobs.js';

const STRICT = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A token's text as logprobs report it: its bytes after `prev`, or, where they are not whole
 * UTF-8 (a byte-fallback piece of a longer character), vLLM's "bytes:\xNN…" spelling.
 */
export function tokenText(tok: Tokenizer, id: number, prev: number): { text: string; bytes: number[] } {
  const b = tok.tokenBytes(id, prev);
  const bytes = Array.from(b);
  try {
    return { text: STRICT.decode(b), bytes };
  } catch {
    return { text: 'bytes:' + bytes.map((x) => '\\x' + x.toString(16).padStart(2, '0')).join(''), bytes };
  }
}

/** One position: the token there, what came before it, and its log probabilities (null where there are none: a prompt's first token). */
export interface LogprobPosition {
  token: number;
  prev: number;
  lp: TokenLogprobs | null;
}

/** The completions API's `logprobs` object over these positions; text_offset counts from `offset`. */
export function completionLogprobs(tok: Tokenizer, positions: readonly LogprobPosition[], offset: number) {
  const tokens: string[] = [];
  const tokenLogprobs: (number | null)[] = [];
  const topLogprobs: (Record<string, number> | null)[] = [];
  const textOffset: number[] = [];
  let at = offset;
  for (const p of positions) {
    const text = tokenText(tok, p.token, p.prev).text;
    tokens.push(text);
    textOffset.push(at);
    at += text.length;
    tokenLogprobs.push(p.lp === null ? null : p.lp.logprob);
    if (p.lp === null) {
      topLogprobs.push(null);
      continue;
    }
    const top: Record<string, number> = {};
    for (let j = 0; j < p.lp.topIds.length; j++) {
      const t = tokenText(tok, p.lp.topIds[j]!, p.prev).text;
      if (!(t in top)) top[t] = p.lp.topLogprobs[j]!;
    }
    topLogprobs.push(top);
  }
  return { tokens, token_logprobs: tokenLogprobs, top_logprobs: topLogprobs, text_offset: textOffset };
}

/** The chat API's `logprobs` object (content entries with bytes and top_logprobs). */
export function chatLogprobs(tok: Tokenizer, positions: readonly LogprobPosition[]) {
  return {
    content: positions.map((p) => {
      const { text, bytes } = tokenText(tok, p.token, p.prev);
      const lp = p.lp as TokenLogprobs;
      return {
        token: text,
        logprob: lp.logprob,
        bytes,
        top_logprobs: lp.topIds.map((id, j) => {
          const t = tokenText(tok, id, p.prev);
          return { token: t.text, logprob: lp.topLogprobs[j]!, bytes: t.bytes };
        }),
      };
    }),
    refusal: null,
  };
}

/** Positions of generated tokens, each after the one before it (the first after the prompt's last token). */
export function generatedPositions(lps: readonly TokenLogprobs[], lastPromptToken: number): LogprobPosition[] {
  const out: LogprobPosition[] = [];
  let prev = lastPromptToken;
  for (const lp of lps) {
    out.push({ token: lp.token, prev, lp });
    prev = lp.token;
  }
  return out;
}

/** Positions of an echoed prompt: the first has no log probability, position p + 1 has promptLogprobs[p]. */
export function promptPositions(prompt: readonly number[], promptLogprobs: readonly TokenLogprobs[] | undefined): LogprobPosition[] {
  return prompt.map((token, i) => ({ token, prev: i > 0 ? prompt[i - 1]! : -1, lp: i > 0 ? (promptLogprobs?.[i - 1] ?? null) : null }));
}
