export type { EncodeOptions, Tokenizer } from './types.js';
export { Llama2cTokenizer, writeHfTokenizerJson, writeHfTokenizerConfigJson } from './llama2c.js';
export type { HfTokenizerJson } from './llama2c.js';
export { HfTokenizer } from './hf.js';
export type { HfLibraryTokenizer, HfTokenizerOptions } from './hf.js';
export { StreamDetokenizer } from './stream.js';
