import { TokenizerFormatError, UnsupportedModelError } from '../../errors.js';
import type { HfTokenizerFiles } from '../modeldir.js';
import { sentencePieceTokenizerJson, type HfAddedToken } from '../tokenizer/llama2c.js';

/** GGUF metadata as @huggingface/gguf parses it (strict typing off). */
export type GgufMetadata = Record<string, unknown>;

/** llama_token_type in tokenizer.ggml.token_type. */
const NORMAL = 1;
const UNKNOWN = 2;
const CONTROL = 3;
const USER_DEFINED = 4;

/**
 * The pre-tokenizer split patterns of llama.cpp's BPE vocabularies (llama-vocab.cpp), keyed by
 * tokenizer.ggml.pre. Case-insensitive contractions are spelled out ('[sS]') because JavaScript
 * regular expressions on Node 20 have no inline (?i:) group.
 */
const BPE_SPLITS: Record<string, { pattern: string; ignoreMerges: boolean }> = {
  default: { pattern: "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", ignoreMerges: false },
  'llama-bpe': {
    pattern: "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ignoreMerges: true,
  },
  qwen2: {
    pattern: "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    ignoreMerges: false,
  },
};
BPE_SPLITS['gpt-2'] = BPE_SPLITS.default as (typeof BPE_SPLITS)[string];
BPE_SPLITS['gpt2'] = BPE_SPLITS.default as (typeof BPE_SPLITS)[string];
BPE_SPLITS['llama3'] = BPE_SPLITS['llama-bpe'] as (typeof BPE_SPLITS)[string];
BPE_SPLITS['smaug-bpe'] = BPE_SPLITS['llama-bpe'] as (typeof BPE_SPLITS)[string];

export const SUPPORTED_PRE_TOKENIZERS = Object.keys(BPE_SPLITS);

function list<T>(md: GgufMetadata, key: string, check: (x: unknown) => x is T): T[] {
  const v = md[key];
  if (!Array.isArray(v) || !v.every(check)) throw new TokenizerFormatError(`GGUF metadata ${key} is missing or not a list`);
  return v;
}
const isString = (x: unknown): x is string => typeof x === 'string';
const isNumber = (x: unknown): x is number => typeof x === 'number';

function id(md: GgufMetadata, key: string): number | undefined {
  const v = md[key];
  return typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : undefined;
}

/**
 * The tokenizer a GGUF embeds, as Hugging Face tokenizer files (what HfTokenizer loads):
 * - tokenizer.ggml.model = llama: SentencePiece BPE with scores and byte fallback, merges rebuilt
 *   from the scores as transformers' LlamaConverter does;
 * - tokenizer.ggml.model = gpt2: byte-level BPE with its merges and the split pattern named by
 *   tokenizer.ggml.pre.
 * Control and user-defined tokens become added tokens; the chat template comes along.
 */
export function ggufTokenizer(md: GgufMetadata, vocabSize: number): HfTokenizerFiles {
  const model = md['tokenizer.ggml.model'];
  if (model === undefined) throw new TokenizerFormatError('the GGUF embeds no tokenizer (tokenizer.ggml.model is missing)');
  const tokens = list(md, 'tokenizer.ggml.tokens', isString);
  if (tokens.length > vocabSize) throw new TokenizerFormatError(`the GGUF tokenizer has ${tokens.length} tokens, the model's vocabulary ${vocabSize}`);
  const types = md['tokenizer.ggml.token_type'] === undefined ? tokens.map(() => NORMAL) : list(md, 'tokenizer.ggml.token_type', isNumber);
  const bos = id(md, 'tokenizer.ggml.bos_token_id');
  const eos = id(md, 'tokenizer.ggml.eos_token_id');
  if (eos === undefined) throw new TokenizerFormatError('GGUF metadata tokenizer.ggml.eos_token_id is missing');
  const stop = [eos, id(md, 'tokenizer.ggml.eot_token_id'), id(md, 'tokenizer.ggml.eom_token_id')].filter((x): x is number => x !== undefined && x < tokens.length);
  const added = tokens.flatMap((_, i) => (types[i] === CONTROL || types[i] === UNKNOWN || types[i] === USER_DEFINED ? [{ id: i, special: types[i] !== USER_DEFINED }] : []));

  let json: unknown;
  let addBos: boolean;
  if (model === 'llama') {
    const scores = list(md, 'tokenizer.ggml.scores', isNumber);
    const unk = id(md, 'tokenizer.ggml.unknown_token_id') ?? tokens.findIndex((_, i) => types[i] === UNKNOWN);
    addBos = md['tokenizer.ggml.add_bos_token'] !== false;
    json = sentencePieceTokenizerJson({
      pieces: tokens,
      scores,
      added,
      mergeable: (i) => types[i] === NORMAL,
      unk: tokens[unk] ?? '<unk>',
      bos: bos === undefined ? undefined : { id: bos, piece: tokens[bos] as string },
      addSpacePrefix: md['tokenizer.ggml.add_space_prefix'] !== false,
    });
  } else if (model === 'gpt2') {
    const pre = typeof md['tokenizer.ggml.pre'] === 'string' ? (md['tokenizer.ggml.pre'] as string) : 'default';
    const split = BPE_SPLITS[pre];
    if (split === undefined) throw new UnsupportedModelError(`GGUF pre-tokenizer "${pre}" is not supported (supported: ${SUPPORTED_PRE_TOKENIZERS.join(', ')})`);
    const merges = list(md, 'tokenizer.ggml.merges', isString).map((m) => {
      const at = m.indexOf(' ', 1);
      return [m.slice(0, at), m.slice(at + 1)] as [string, string];
    });
    // llama.cpp's default for byte-level vocabularies is no BOS, Llama 3's is BOS; the file's own flag wins.
    addBos = typeof md['tokenizer.ggml.add_bos_token'] === 'boolean' ? (md['tokenizer.ggml.add_bos_token'] as boolean) : pre === 'llama-bpe' || pre === 'llama3';
    json = byteLevelTokenizerJson(tokens, merges, added, split.pattern, split.ignoreMerges, addBos && bos !== undefined ? { id: bos, piece: tokens[bos] as string } : undefined);
  } else {
    throw new UnsupportedModelError(`GGUF tokenizer model "${String(model)}" is not supported (supported: llama, gpt2)`);
  }
  const config: Record<string, unknown> = {
    add_bos_token: addBos,
    add_eos_token: md['tokenizer.ggml.add_eos_token'] === true,
    bos_token: bos === undefined ? null : tokens[bos],
    eos_token: tokens[eos],
    clean_up_tokenization_spaces: false,
    model_max_length: 1e30,
    tokenizer_class: model === 'llama' ? 'LlamaTokenizer' : 'PreTrainedTokenizerFast',
  };
  if (typeof md['tokenizer.chat_template'] === 'string') config.chat_template = md['tokenizer.chat_template'];
  return { json, config, stopIds: [...new Set(stop)] };
}

function byteLevelTokenizerJson(
  tokens: string[],
  merges: [string, string][],
  added: { id: number; special: boolean }[],
  pattern: string,
  ignoreMerges: boolean,
  bos: { id: number; piece: string } | undefined,
): unknown {
  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => {
    if (!(t in vocab)) vocab[t] = i;
  });
  const added_tokens: HfAddedToken[] = added.map(({ id, special }) => ({
    id,
    content: tokens[id] as string,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special,
  }));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens,
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor:
      bos === undefined
        ? { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true }
        : {
            type: 'TemplateProcessing',
            single: [{ SpecialToken: { id: bos.piece, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
            pair: [{ SpecialToken: { id: bos.piece, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: bos.piece, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
            special_tokens: { [bos.piece]: { id: bos.piece, ids: [bos.id], tokens: [bos.piece] } },
          },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: ignoreMerges,
      vocab,
      merges,
    },
  };
}
