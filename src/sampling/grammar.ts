import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import type { Tokenizer } from '../models/tokenizer/types.js';

/**
 * Grammar-constrained decoding on xgrammar (`@mlc-ai/web-xgrammar`: the C++ engine vLLM and
 * SGLang use, compiled to WebAssembly and shipped on npm). Chosen over the alternatives that
 * install from npm and run in Node (BENCHMARKS.md, "Structured output"): node-llama-cpp's
 * grammars run only inside llama.cpp's own sampler over a GGUF vocabulary, and checking each
 * vocabulary token against a parser every step costs O(vocab) per token, which xgrammar avoids
 * by precomputing, per grammar position, which tokens are always or never allowed (its adaptive
 * token mask cache) so a step only checks the few context-dependent tokens.
 *
 * The package is UMD code published as an ES module that reads `require` and `__filename`, which
 * Node's ES loader does not provide; it is loaded here as the CommonJS it really is.
 */

interface XgMatcher {
  acceptToken(id: number): boolean;
  getNextTokenBitmask(): Promise<Int32Array>;
  isTerminated(): boolean;
  dispose(): void;
}
interface XgCompiled {
  dispose(): void;
}
interface XgCompiler {
  compileJSONSchema(schema: string, anyWhitespace?: boolean, indent?: number, separators?: [string, string], strictMode?: boolean): Promise<XgCompiled>;
  compileGrammar(ebnf: string, root?: string): Promise<XgCompiled>;
  compileStructuralTag(tag: unknown): Promise<XgCompiled>;
}
interface Xgrammar {
  TokenizerInfo: { createTokenizerInfo(vocab: string[], type: string, prependSpace: boolean, vocabSize: number, stopIds: number[]): Promise<unknown> };
  GrammarCompiler: { createGrammarCompiler(info: unknown, cache?: boolean): Promise<XgCompiler> };
  GrammarMatcher: { createGrammarMatcher(compiled: XgCompiled, stop?: number[]): Promise<XgMatcher> };
}

let loaded: Xgrammar | undefined;
function xgrammar(): Xgrammar {
  if (loaded !== undefined) return loaded;
  const require = createRequire(import.meta.url);
  const path = require.resolve('@mlc-ai/web-xgrammar');
  const mod = { exports: {} as Record<string, unknown> };
  // eslint-disable-next-line @typescript-eslint/no-implied-eval
  new Function('exports', 'module', 'require', '__filename', '__dirname', readFileSync(path, 'utf8'))(mod.exports, mod, createRequire(path), path, dirname(path));
  loaded = mod.exports as unknown as Xgrammar;
  return loaded;
}

/** What a request constrains its output to. */
export type GrammarSpec =
  | { kind: 'json_object' }
  | { kind: 'json_schema'; schema: unknown }
  | { kind: 'regex'; pattern: string }
  | { kind: 'choice'; choices: string[] }
  | { kind: 'ebnf'; grammar: string };

/** A request's grammar state: which tokens may come next, advanced token by token. */
export interface TokenMasker {
  /** The allowed tokens for the next draw: bit i of word i >> 5. */
  mask(): Promise<Int32Array>;
  /** Advances past a drawn token; false if the grammar refuses it (it never should, under its own mask). */
  accept(token: number): boolean;
  /** The grammar is complete and has accepted a stop token. */
  readonly done: boolean;
  dispose(): void;
}

/** GPT-2's byte ↔ printable-character table: every byte string becomes a string xgrammar's byte_level decoding maps back exactly. */
function byteLevelTable(): string[] {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
  return table;
}

/**
 * Compiles request grammars for one model's vocabulary and hands out matchers. Compiled
 * grammars are cached by their spec, so a schema every request sends is compiled once.
 */
export class GrammarEngine {
  private compiler: Promise<XgCompiler> | undefined;
  private readonly cache = new Map<string, Promise<XgCompiled>>();
  private static readonly cacheLimit = 256;

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly vocabSize: number,
    private readonly stopIds: readonly number[],
  ) {}

  /**
   * The vocabulary as xgrammar sees it: each token's bytes as they follow an ordinary token
   * (not BOS), byte_level-encoded so pieces of a UTF-8 character stay exact; special tokens are
   * empty, which xgrammar never allows except as the stop tokens given.
   */
  private compilerFor(): Promise<XgCompiler> {
    this.compiler ??= (async () => {
      const xg = xgrammar();
      const table = byteLevelTable();
      const tok = this.tokenizer;
      const prev = tok.bosId === 3 ? 4 : 3;
      const vocab: string[] = new Array(this.vocabSize);
      for (let id = 0; id < this.vocabSize; id++) {
        const b = tok.tokenBytes(id, prev);
        let s = '';
        for (let i = 0; i < b.length; i++) s += table[b[i]!];
        vocab[id] = s;
      }
      const info = await xg.TokenizerInfo.createTokenizerInfo(vocab, 'byte_level', false, this.vocabSize, [...this.stopIds]);
      return xg.GrammarCompiler.createGrammarCompiler(info, true);
    })();
    return this.compiler;
  }

  private compile(spec: GrammarSpec): Promise<XgCompiled> {
    const key = JSON.stringify(spec);
    let c = this.cache.get(key);
    if (c === undefined) {
      c = this.compilerFor().then((compiler) => {
        switch (spec.kind) {
          // Objects of any properties, on one line: a small model left free to add whitespace may never stop.
          case 'json_object':
            return compiler.compileJSONSchema(JSON.stringify({ type: 'object' }), false, -1, [', ', ': '], false);
          case 'json_schema':
            return compiler.compileJSONSchema(JSON.stringify(spec.schema), false, -1, [', ', ': '], true);
          case 'regex':
            return compiler.compileStructuralTag({ type: 'structural_tag', format: { type: 'regex', pattern: spec.pattern } });
          case 'choice':
            return compiler.compileGrammar(`root ::= ${spec.choices.map((s) => ebnfString(s)).join(' | ')}`);
          case 'ebnf':
            return compiler.compileGrammar(spec.grammar);
        }
      });
      // A failed compile is not cached: the next request gets the error again, not a stale promise.
      c.catch(() => this.cache.delete(key));
      if (this.cache.size >= GrammarEngine.cacheLimit) this.cache.delete(this.cache.keys().next().value as string);
      this.cache.set(key, c);
    }
    return c;
  }

  /** A fresh matcher for `spec`; rejects with a 400 naming `param` when the grammar does not compile. */
  async matcher(spec: GrammarSpec, param: string): Promise<TokenMasker> {
    let compiled: XgCompiled;
    try {
      compiled = await this.compile(spec);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      throw Object.assign(new InvalidArgumentError(`${param}: the grammar engine rejected it: ${why.split('\n')[0]}`), { param });
    }
    const m = await xgrammar().GrammarMatcher.createGrammarMatcher(compiled, [...this.stopIds]);
    return {
      mask: () => m.getNextTokenBitmask(),
      accept: (token) => m.acceptToken(token),
      get done() {
        return m.isTerminated();
      },
      dispose: () => m.dispose(),
    };
  }
}

/** An EBNF string literal for `s` (xgrammar takes C-style escapes, which JSON's are). */
function ebnfString(s: string): string {
  return JSON.stringify(s);
}
