import { existsSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { CheckpointFormatError, UnsupportedModelError } from '../../errors.js';
import { checkShape, weightSpecs, type LlamaShape, type WeightSpec } from '../llama/shape.js';
import type { WeightSource } from '../llama/weights.js';
import { capContext, writeModelDir, type Architecture, type Flavour, type HfTokenizerFiles, type ModelConfig } from '../modeldir.js';
import type { QuantizeOptions } from '../quant/formats.js';
import { HfTokenizer } from '../tokenizer/hf.js';
import { SafetensorsFolder } from './safetensors.js';

const ARCHITECTURES: Record<string, Architecture> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};

type Json = Record<string, unknown>;

function readJson(path: string): Json {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Json;
  } catch (e) {
    throw new CheckpointFormatError(`cannot read ${path}: ${(e as Error).message}`);
  }
}

/** Whether `dir` is a Hugging Face checkpoint folder (config.json and safetensors) rather than an ONNX export. */
export function isSafetensorsFolder(dir: string): boolean {
  return existsSync(join(dir, 'config.json')) && (existsSync(join(dir, 'model.safetensors')) || existsSync(join(dir, 'model.safetensors.index.json')));
}

/**
 * Llama 3's rope scaling as per-pair divisors of the frequencies (transformers'
 * _compute_llama3_parameters; what convert_hf_to_gguf writes as rope_freqs).
 */
export function llama3FreqFactors(headDim: number, theta: number, s: { factor: number; low_freq_factor: number; high_freq_factor: number; original_max_position_embeddings: number }): number[] {
  const out: number[] = [];
  const lowWavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const highWavelen = s.original_max_position_embeddings / s.high_freq_factor;
  for (let i = 0; i < headDim / 2; i++) {
    const freq = 1 / Math.pow(theta, (2 * i) / headDim);
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) out.push(1);
    else if (wavelen > lowWavelen) out.push(s.factor);
    else {
      const smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      out.push(1 / ((1 - smooth) / s.factor + smooth));
    }
  }
  return out;
}

export interface HfFolder {
  dir: string;
  architecture: Architecture;
  shape: LlamaShape;
  tensors: SafetensorsFolder;
  /** The context config.json states, before any cap. */
  context: number;
}

/** config.json of a LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM checkpoint as a shape (rotate-half rope, as Hugging Face stores Q and K). */
export function readHfFolder(dir: string, log?: (line: string) => void): HfFolder {
  const cfg = readJson(join(dir, 'config.json'));
  const archName = Array.isArray(cfg.architectures) ? String(cfg.architectures[0]) : String(cfg.model_type ?? '');
  const architecture = ARCHITECTURES[archName];
  if (architecture === undefined) throw new UnsupportedModelError(`Hugging Face architecture "${archName}" is not supported (supported: ${Object.keys(ARCHITECTURES).join(', ')})`);
  const num = (key: string, fallback?: number): number => {
    const v = cfg[key];
    if (typeof v === 'number') return v;
    if (fallback !== undefined) return fallback;
    throw new CheckpointFormatError(`${join(dir, 'config.json')} lacks ${key}`);
  };
  const tensors = SafetensorsFolder.open(dir);
  if (tensors.has('model.layers.0.self_attn.o_proj.bias') || tensors.has('model.layers.0.mlp.up_proj.bias')) {
    throw new UnsupportedModelError('biases on the attention output or MLP projections (attention_bias / mlp_bias)');
  }
  const dim = num('hidden_size');
  const nHeads = num('num_attention_heads');
  const hd = typeof cfg.head_dim === 'number' ? cfg.head_dim : dim / nHeads;
  const theta = num('rope_theta', 10000);
  let context = num('max_position_embeddings');
  const shape: LlamaShape = {
    dim,
    hiddenDim: num('intermediate_size'),
    nLayers: num('num_hidden_layers'),
    nHeads,
    nKvHeads: num('num_key_value_heads', nHeads),
    vocabSize: num('vocab_size'),
    maxSeqLen: context,
    normEps: num('rms_norm_eps', 1e-6),
    ropeTheta: theta,
    sharedClassifier: cfg.tie_word_embeddings === true || !tensors.has('lm_head.weight'),
    rope: 'half',
  };
  if (hd !== dim / nHeads) shape.headDim = hd;
  if (tensors.has('model.layers.0.self_attn.q_proj.bias')) shape.qkvBias = true;
  const scaling = cfg.rope_scaling as Json | null | undefined;
  if (scaling !== null && scaling !== undefined) {
    const kind = String(scaling.rope_type ?? scaling.type ?? 'default');
    if (kind === 'llama3') {
      shape.ropeFreqFactors = llama3FreqFactors(hd, theta, scaling as never);
    } else if (kind === 'linear') {
      shape.ropeFreqFactors = new Array<number>(hd / 2).fill(Number(scaling.factor));
    } else if (kind !== 'default') {
      throw new UnsupportedModelError(`rope scaling "${kind}" (supported: default, linear, llama3)`);
    }
  }
  // Within its window, sliding-window attention is full attention: keep the context inside it.
  const window = cfg.sliding_window;
  if (architecture !== 'llama' && typeof window === 'number' && window < context && cfg.use_sliding_window !== false) {
    log?.(`marginal: context limited to the sliding window of ${window} tokens (marginal attends to the whole context)`);
    context = window;
    shape.maxSeqLen = window;
  }
  const problem = checkShape(shape);
  if (problem !== undefined) throw new CheckpointFormatError(`${join(dir, 'config.json')}: ${problem}`);
  return { dir, architecture, shape, tensors, context };
}

function hfWeights(f: HfFolder): WeightSource {
  return (spec: WeightSpec) => {
    const name = spec.name === 'lm_head.weight' && !f.tensors.has(spec.name) ? 'model.embed_tokens.weight' : spec.name;
    const shape = f.tensors.shape(name);
    if (shape === undefined) throw new CheckpointFormatError(`${f.dir} has no tensor ${name}`);
    if (shape.length !== spec.dims.length || shape.some((d, i) => d !== spec.dims[i])) {
      throw new CheckpointFormatError(`tensor ${name} is [${shape.join(', ')}], config.json implies [${spec.dims.join(', ')}]`);
    }
    return f.tensors.read(name);
  };
}

/** tokenizer.json with tokenizer_config.json (and chat_template.jinja where a newer transformers wrote the template there). */
export function hfTokenizerFiles(dir: string): HfTokenizerFiles {
  const jsonPath = join(dir, 'tokenizer.json');
  if (!existsSync(jsonPath)) throw new CheckpointFormatError(`${dir} has no tokenizer.json`);
  const json = readJson(jsonPath);
  const config = existsSync(join(dir, 'tokenizer_config.json')) ? readJson(join(dir, 'tokenizer_config.json')) : {};
  if (config.chat_template === undefined && existsSync(join(dir, 'chat_template.jinja'))) config.chat_template = readFileSync(join(dir, 'chat_template.jinja'), 'utf8');
  const tok = new HfTokenizer(json, config);
  const ids = (v: unknown): number[] => (Array.isArray(v) ? v.filter((x): x is number => typeof x === 'number') : typeof v === 'number' ? [v] : []);
  const gen = existsSync(join(dir, 'generation_config.json')) ? readJson(join(dir, 'generation_config.json')) : {};
  const cfg = readJson(join(dir, 'config.json'));
  return { json, config, stopIds: [...new Set([...ids(gen.eos_token_id), ...ids(cfg.eos_token_id), tok.eosId])] };
}

export interface HfImportOptions {
  flavours?: Flavour[];
  quantize?: QuantizeOptions;
  maxContext?: number;
  log?: (line: string) => void;
  onProgress?: (done: number, total: number) => void;
}

/** `marginal import hf DIR --out DIR`: a Hugging Face safetensors checkpoint on the fast graph. */
export function importHf(dir: string, out: string, o: HfImportOptions = {}): ModelConfig {
  const f = readHfFolder(dir, o.log);
  for (const spec of weightSpecs(f.shape)) {
    if (!f.tensors.has(spec.name) && !(spec.name === 'lm_head.weight')) throw new CheckpointFormatError(`${dir} has no tensor ${spec.name}`);
  }
  const tokenizer = hfTokenizerFiles(dir);
  capContext(f.shape, o.maxContext, o.log);
  return writeModelDir({
    dir: out,
    name: basename(resolve(dir)),
    shape: f.shape,
    weights: hfWeights(f),
    tokenizer,
    synthetic: false,
    description: `Hugging Face ${Object.keys(ARCHITECTURES).find((k) => ARCHITECTURES[k] === f.architecture) ?? f.architecture} checkpoint ${basename(resolve(dir))}`,
    architecture: f.architecture,
    source: resolve(dir),
    ...(o.flavours ? { flavours: o.flavours } : {}),
    ...(o.quantize ? { quantize: o.quantize } : {}),
    ...(o.log ? { log: o.log } : {}),
    ...(o.onProgress ? { onProgress: o.onProgress } : {}),
  });
}
