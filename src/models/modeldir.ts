import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ModelFormatError, ModelNotFoundError } from '../errors.js';
import { ExternalDataWriter } from './onnx/builder.js';
import { buildFastGraph, buildHfGraph } from './llama/graph.js';
import { checkShape, headDim, parameterCount, type LlamaShape } from './llama/shape.js';
import { storeWeights } from './llama/weight-store.js';
import type { WeightSource } from './llama/weights.js';
import type { QuantizationRecord, QuantizeOptions } from './quant/formats.js';
import { Llama2cTokenizer, writeHfTokenizerJson, writeHfTokenizerConfigJson } from './tokenizer/llama2c.js';
import { HfTokenizer } from './tokenizer/hf.js';
import type { Tokenizer } from './tokenizer/types.js';

export type Flavour = 'fast' | 'hf';
/** The families the graph writer covers: one decoder with per-family options (rope layout, biases). */
export type Architecture = 'llama' | 'qwen2' | 'mistral';

export const CONFIG_FILE = 'marginal.json';
/** Bumped when the graphs' interfaces change; model directories of another version must be re-imported. */
export const GRAPH_VERSION = 3;

/**
 * `marginal.json`: what the engine needs to run a model directory. The same directory is
 * also a Hugging Face-style folder (config.json, tokenizer.json, onnx/model.onnx) so that
 * transformers.js and other ONNX tooling can load the `hf` flavour.
 */
export interface ModelConfig {
  format: 'marginal-model';
  version: 1;
  name: string;
  architecture: Architecture;
  /** Random weights: the text is meaningless, and everything that shows the model says so. */
  synthetic: boolean;
  description: string;
  shape: LlamaShape;
  /** Positions the graphs' rotary tables cover: the model's context. */
  ropePositions: number;
  /**
   * llama2.c's tokenizer.bin, or a Hugging Face tokenizer.json with its tokenizer_config.json
   * (GGUF and safetensors imports; the config carries the chat template).
   */
  tokenizer:
    | { type: 'llama2c'; file: string; bosId: number; eosId: number; stopIds: number[]; addBos: boolean }
    | { type: 'hf'; file: string; config: string; bosId: number; eosId: number; stopIds: number[]; addBos: boolean };
  graphs: Partial<Record<Flavour, string>>;
  graphVersion?: number;
  /** How the weights are stored; absent in directories written before quantization existed (float32). */
  quantization?: QuantizationRecord;
  /** Where the weights came from (an imported file), for /v1/models. */
  source?: string;
}

export interface LoadedModel {
  dir: string;
  name: string;
  synthetic: boolean;
  description: string;
  /** Undefined for foreign folders whose graph sizes come from config.json instead. */
  shape: LlamaShape | undefined;
  kv: { layers: number; kvHeads: number; headDim: number; maxContext: number };
  vocabSize: number;
  tokenizer: Tokenizer;
  bosId: number;
  stopIds: number[];
  addBos: boolean;
  graphPath(flavour: Flavour): string;
  flavours: Flavour[];
  /** The model's own Jinja chat template (Hugging Face tokenizer_config.json), if it has one. */
  chatTemplate: string | undefined;
  /** Special token strings the chat template may refer to. */
  specialTokens: { bos: string; eos: string };
  /** 'llama', 'qwen2', 'mistral'; a foreign export's model_type. */
  architecture: string;
  /** Weight format label ('fp32', 'q8', 'q4 (classifier q8)'…); undefined where unknown (foreign exports). */
  quantization: string | undefined;
}

/**
 * The context an import keeps unless told otherwise. Files state what the model was trained
 * for (128k for Llama 3.2); the engine's KV memory grows with sequences × context.
 */
export const DEFAULT_IMPORT_CONTEXT = 4096;

export function capContext(shape: LlamaShape, max: number | undefined, log?: (line: string) => void): void {
  const cap = max ?? DEFAULT_IMPORT_CONTEXT;
  if (shape.maxSeqLen > cap) {
    log?.(`marginal: context capped at ${cap} tokens (the model was trained for ${shape.maxSeqLen}; --max-context to change)`);
    shape.maxSeqLen = cap;
  }
}

/** A Hugging Face tokenizer as files: tokenizer.json and tokenizer_config.json contents, and the ids that end a completion. */
export interface HfTokenizerFiles {
  json: unknown;
  config: Record<string, unknown>;
  stopIds: number[];
}

export interface WriteModelOptions {
  dir: string;
  name: string;
  shape: LlamaShape;
  weights: WeightSource;
  /** A llama2.c tokenizer.bin, or Hugging Face tokenizer files. */
  tokenizer: Buffer | HfTokenizerFiles;
  synthetic: boolean;
  description: string;
  flavours?: Flavour[];
  architecture?: Architecture;
  quantize?: QuantizeOptions;
  source?: string;
  log?: (line: string) => void;
  /** Called after each weight tensor is written (the CLI's progress bar). */
  onProgress?: (done: number, total: number) => void;
}

export function writeModelDir(o: WriteModelOptions): ModelConfig {
  const problem = checkShape(o.shape);
  if (problem !== undefined) throw new ModelFormatError(problem);
  const flavours = o.flavours ?? ['fast', 'hf'];
  // Parse the tokenizer before writing anything, so a bad one leaves no half-written model.
  let tokenizerConfig: ModelConfig['tokenizer'];
  let hfTokenizer: HfTokenizerFiles;
  if (Buffer.isBuffer(o.tokenizer)) {
    const tok = Llama2cTokenizer.fromBuffer(o.tokenizer, o.shape.vocabSize);
    hfTokenizer = { json: writeHfTokenizerJson(tok), config: writeHfTokenizerConfigJson({ modelMaxLength: o.shape.maxSeqLen }), stopIds: [1, 2] };
    tokenizerConfig = { type: 'llama2c', file: 'tokenizer.bin', bosId: 1, eosId: 2, stopIds: [1, 2], addBos: true };
  } else {
    hfTokenizer = o.tokenizer;
    const tok = new HfTokenizer(o.tokenizer.json, o.tokenizer.config);
    if (tok.vocabSize > o.shape.vocabSize) throw new ModelFormatError(`the tokenizer has ${tok.vocabSize} tokens, the model's vocabulary ${o.shape.vocabSize}`);
    tokenizerConfig = { type: 'hf', file: 'tokenizer.json', config: 'tokenizer_config.json', bosId: tok.bosId, eosId: tok.eosId, stopIds: o.tokenizer.stopIds, addBos: tok.addsBos };
  }
  mkdirSync(join(o.dir, 'onnx'), { recursive: true });
  if (Buffer.isBuffer(o.tokenizer)) writeFileSync(join(o.dir, 'tokenizer.bin'), o.tokenizer);

  const data = new ExternalDataWriter(join(o.dir, 'onnx', 'model.onnx_data'), 'model.onnx_data');
  let stored: ReturnType<typeof storeWeights>;
  try {
    stored = storeWeights(data, o.shape, o.weights, o.quantize, o.log, o.onProgress);
  } finally {
    data.close();
  }
  const ropePositions = o.shape.maxSeqLen;
  const graphs: Partial<Record<Flavour, string>> = {};
  if (flavours.includes('hf')) {
    writeFileSync(join(o.dir, 'onnx', 'model.onnx'), buildHfGraph(o.shape, stored.weights, { ropePositions }));
    graphs.hf = 'onnx/model.onnx';
  }
  if (flavours.includes('fast')) {
    writeFileSync(join(o.dir, 'onnx', 'model_fast.onnx'), buildFastGraph(o.shape, stored.weights, { ropePositions }));
    graphs.fast = 'onnx/model_fast.onnx';
  }

  const config: ModelConfig = {
    format: 'marginal-model',
    version: 1,
    name: o.name,
    architecture: o.architecture ?? 'llama',
    synthetic: o.synthetic,
    description: o.description,
    shape: o.shape,
    ropePositions,
    tokenizer: tokenizerConfig,
    graphs,
    graphVersion: GRAPH_VERSION,
    quantization: stored.record,
  };
  if (o.source !== undefined) config.source = o.source;
  writeHfFiles(o.dir, config, hfTokenizer);
  // Last: a directory without marginal.json is never mistaken for a finished model.
  writeFileSync(join(o.dir, CONFIG_FILE), JSON.stringify(config, null, 2) + '\n');
  return config;
}

const HF_ARCHITECTURES: Record<Architecture, string> = { llama: 'LlamaForCausalLM', qwen2: 'Qwen2ForCausalLM', mistral: 'MistralForCausalLM' };

function writeHfFiles(dir: string, c: ModelConfig, tokenizer: HfTokenizerFiles): void {
  const s = c.shape;
  const hf = {
    architectures: [HF_ARCHITECTURES[c.architecture]],
    model_type: c.architecture,
    hidden_size: s.dim,
    intermediate_size: s.hiddenDim,
    num_hidden_layers: s.nLayers,
    num_attention_heads: s.nHeads,
    num_key_value_heads: s.nKvHeads,
    head_dim: headDim(s),
    vocab_size: s.vocabSize,
    max_position_embeddings: s.maxSeqLen,
    rms_norm_eps: s.normEps,
    rope_theta: s.ropeTheta,
    tie_word_embeddings: s.sharedClassifier,
    bos_token_id: c.tokenizer.bosId,
    eos_token_id: c.tokenizer.eosId,
    torch_dtype: 'float32',
    'transformers.js_config': { use_external_data_format: true },
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(hf, null, 2) + '\n');
  writeFileSync(
    join(dir, 'generation_config.json'),
    JSON.stringify({ bos_token_id: c.tokenizer.bosId, eos_token_id: c.tokenizer.stopIds }, null, 2) + '\n',
  );
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer.json) + '\n');
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tokenizer.config, null, 2) + '\n');
}

export async function loadModelDir(dirArg: string): Promise<LoadedModel> {
  const dir = resolve(dirArg);
  if (!existsSync(dir)) throw new ModelNotFoundError(`${dirArg} does not exist`);
  if (existsSync(join(dir, CONFIG_FILE))) return await loadMarginalDir(dir);
  if (existsSync(join(dir, 'config.json'))) return loadHfFolder(dir);
  throw new ModelNotFoundError(`${dirArg} has neither ${CONFIG_FILE} nor a Hugging Face config.json`);
}

function readJson(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ModelFormatError(`cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ModelFormatError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
}

async function loadMarginalDir(dir: string): Promise<LoadedModel> {
  const c = readJson(join(dir, CONFIG_FILE)) as ModelConfig;
  if (c === null || typeof c !== 'object' || c.format !== 'marginal-model' || c.version !== 1) {
    throw new ModelFormatError(`${join(dir, CONFIG_FILE)} is not a marginal model config (format/version)`);
  }
  const problem = c.shape ? checkShape(c.shape) : 'missing shape';
  if (problem !== undefined) throw new ModelFormatError(`${join(dir, CONFIG_FILE)}: ${problem}`);
  if ((c.graphVersion ?? 1) !== GRAPH_VERSION) {
    throw new ModelFormatError(`${dir} was written by an older marginal (graph version ${c.graphVersion ?? 1}, now ${GRAPH_VERSION}); import or synthesize it again`);
  }
  const flavours = (Object.keys(c.graphs ?? {}) as Flavour[]).filter((f) => f === 'fast' || f === 'hf');
  if (flavours.length === 0) throw new ModelFormatError(`${join(dir, CONFIG_FILE)} lists no graphs`);
  for (const f of flavours) {
    const p = join(dir, c.graphs[f] as string);
    if (!existsSync(p)) throw new ModelFormatError(`graph file ${p} (${f} flavour) is missing`);
  }
  const tokPath = join(dir, c.tokenizer.file);
  if (!existsSync(tokPath)) throw new ModelFormatError(`tokenizer file ${tokPath} is missing`);
  let tokenizer: Tokenizer;
  let chatTemplate: string | undefined;
  let specialTokens = { bos: '<s>', eos: '</s>' };
  if (c.tokenizer.type === 'hf') {
    const cfgPath = join(dir, c.tokenizer.config);
    tokenizer = await HfTokenizer.fromFiles(tokPath, cfgPath, { addBos: c.tokenizer.addBos });
    const tokCfg = readJson(cfgPath) as Record<string, unknown>;
    chatTemplate = chatTemplateOf(tokCfg);
    specialTokens = { bos: tokenString(tokCfg.bos_token, ''), eos: tokenString(tokCfg.eos_token, '') };
  } else {
    tokenizer = Llama2cTokenizer.fromFileSync(tokPath, c.shape.vocabSize);
  }
  return {
    dir,
    name: c.name,
    synthetic: c.synthetic,
    description: c.description,
    shape: c.shape,
    kv: { layers: c.shape.nLayers, kvHeads: c.shape.nKvHeads, headDim: headDim(c.shape), maxContext: c.shape.maxSeqLen },
    vocabSize: c.shape.vocabSize,
    tokenizer,
    bosId: c.tokenizer.bosId,
    stopIds: c.tokenizer.stopIds,
    addBos: c.tokenizer.addBos,
    chatTemplate,
    specialTokens,
    architecture: c.architecture,
    quantization: c.quantization?.label ?? 'fp32',
    graphPath: (f) => {
      const rel = c.graphs[f];
      if (rel === undefined) throw new ModelFormatError(`model ${c.name} has no ${f} graph (it has ${flavours.join(', ')})`);
      return join(dir, rel);
    },
    flavours,
  };
}

/**
 * A Hugging Face / Optimum decoder export we did not write: config.json for the cache
 * geometry, tokenizer.json, and the graph at onnx/model.onnx (or model.onnx).
 */
async function loadHfFolder(dir: string): Promise<LoadedModel> {
  const hf = readJson(join(dir, 'config.json')) as Record<string, unknown>;
  const num = (...keys: string[]): number | undefined => {
    for (const k of keys) if (typeof hf[k] === 'number') return hf[k] as number;
    return undefined;
  };
  const layers = num('num_hidden_layers', 'n_layer');
  const heads = num('num_attention_heads', 'n_head');
  const hidden = num('hidden_size', 'n_embd');
  const vocab = num('vocab_size');
  if (layers === undefined || heads === undefined || hidden === undefined || vocab === undefined) {
    throw new ModelFormatError(`${join(dir, 'config.json')} lacks layer/head/hidden/vocab sizes`);
  }
  const kvHeads = num('num_key_value_heads') ?? heads;
  const hd = num('head_dim') ?? hidden / heads;
  const maxContext = num('max_position_embeddings', 'n_positions', 'n_ctx') ?? 2048;
  const graph = ['onnx/model.onnx', 'model.onnx', 'onnx/decoder_model_merged.onnx', 'decoder_model_merged.onnx']
    .map((p) => join(dir, p))
    .find((p) => existsSync(p));
  if (graph === undefined) throw new ModelFormatError(`${dir} has no onnx/model.onnx`);
  if (!existsSync(join(dir, 'tokenizer.json'))) throw new ModelFormatError(`${dir} has no tokenizer.json`);
  const cfgPath = join(dir, 'tokenizer_config.json');
  const tokenizer = await HfTokenizer.fromFiles(join(dir, 'tokenizer.json'), existsSync(cfgPath) ? cfgPath : undefined);
  const ids = (v: unknown): number[] => (Array.isArray(v) ? v.filter((x): x is number => typeof x === 'number') : typeof v === 'number' ? [v] : []);
  const gen = existsSync(join(dir, 'generation_config.json')) ? (readJson(join(dir, 'generation_config.json')) as Record<string, unknown>) : {};
  const stopIds = [...new Set([...ids(gen.eos_token_id), ...ids(hf.eos_token_id), tokenizer.eosId])];
  const modelType = typeof hf.model_type === 'string' ? hf.model_type : 'decoder';
  const tokCfg = existsSync(cfgPath) ? (readJson(cfgPath) as Record<string, unknown>) : {};
  const chatTemplate = chatTemplateOf(tokCfg);
  return {
    dir,
    name: dir.split('/').filter(Boolean).pop() ?? modelType,
    synthetic: false,
    description: `Hugging Face ${modelType} export`,
    shape: undefined,
    kv: { layers, kvHeads, headDim: hd, maxContext },
    vocabSize: vocab,
    tokenizer,
    bosId: tokenizer.bosId,
    stopIds,
    // HfTokenizer adds BOS only where the tokenizer's own post-processor does (Llama yes, GPT-2 no).
    addBos: true,
    chatTemplate,
    specialTokens: { bos: tokenString(tokCfg.bos_token, ''), eos: tokenString(tokCfg.eos_token, '') },
    architecture: modelType,
    quantization: undefined,
    graphPath: (f) => {
      if (f !== 'hf') throw new ModelFormatError(`${dir} is a Hugging Face export: only the hf flavour is available`);
      return graph;
    },
    flavours: ['hf'],
  };
}

/** tokenizer_config.json's chat_template: a string, or a list of named templates of which 'default' is the one. */
export function chatTemplateOf(tokCfg: Record<string, unknown>): string | undefined {
  const raw = tokCfg.chat_template;
  if (typeof raw === 'string') return raw;
  if (Array.isArray(raw)) return (raw.find((t) => (t as { name?: unknown }).name === 'default') as { template?: string } | undefined)?.template ?? undefined;
  return undefined;
}

function tokenString(v: unknown, fallback: string): string {
  return typeof v === 'string' ? v : v !== null && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string' ? (v as { content: string }).content : fallback;
}

export function describeModel(m: LoadedModel): string {
  const size = m.shape ? `${(parameterCount(m.shape) / 1e6).toFixed(2)}M parameters` : `${m.kv.layers} layers`;
  const weights = m.quantization !== undefined && m.quantization !== 'fp32' ? `, ${m.quantization} weights` : '';
  const warn = m.synthetic ? ' [synthetic: random weights, its text is meaningless]' : '';
  return `${m.name} (${m.description}; ${size}${weights})${warn}`;
}
