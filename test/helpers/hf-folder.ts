import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ggufTokenizer } from '../../src/models/gguf/tokenizer.js';
import { isRopeRows, permuteRows, ropeRowOrder } from '../../src/models/gguf/names.js';
import { headDim, weightSpecs } from '../../src/models/llama/shape.js';
import { floatToHalf } from '../../src/models/quant/ggml.js';
import type { TestFamily } from './gguf-models.js';
import { testWeights } from './gguf-models.js';

const HF_ARCH = { llama2: 'LlamaForCausalLM', llama3: 'LlamaForCausalLM', mistral: 'MistralForCausalLM', qwen2: 'Qwen2ForCausalLM' } as const;

/** A safetensors file: 8-byte header length, JSON header, data. */
function safetensors(tensors: { name: string; dtype: 'F32' | 'F16' | 'BF16'; shape: number[]; bytes: Uint8Array }[]): Buffer {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let at = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.bytes.length] };
    at += t.bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, Buffer.from(json), ...tensors.map((t) => Buffer.from(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength))]);
}

/** bfloat16 rounded to nearest even, as the GGUF writer rounds. */
function toBf16(f: Float32Array): Uint8Array {
  const u = new Uint32Array(f.buffer, f.byteOffset, f.length);
  const out = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) out[i] = ((u[i] as number) + 0x7fff + (((u[i] as number) >>> 16) & 1)) >>> 16;
  return new Uint8Array(out.buffer);
}

/** IEEE half precision rounded to nearest even, as the GGUF writer rounds. */
function toF16(f: Float32Array): Uint8Array {
  return new Uint8Array(Uint16Array.from(f, floatToHalf).buffer);
}

/**
 * The family's test weights as a Hugging Face checkpoint folder: config.json, the weights
 * sharded over two safetensors files with an index, Q and K rows in Hugging Face's rotate-half
 * order, and the tokenizer files marginal derives from the GGUF's vocabulary.
 */
export function writeHfFolder(dir: string, family: TestFamily, dtype: 'F32' | 'F16' | 'BF16' = 'F32'): void {
  mkdirSync(dir, { recursive: true });
  const s = family.shape;
  const source = testWeights(s);
  const interleaved = (s.rope ?? 'interleaved') === 'interleaved';
  const tensors = weightSpecs(s).map((spec) => {
    let v = source(spec) as Float32Array;
    if (interleaved && isRopeRows(spec.name)) v = permuteRows(v, ropeRowOrder(spec.dims[0] as number, headDim(s), false));
    // Norms and biases stay float32, as GGUF files keep them: mixed dtypes are legal in safetensors.
    const t = spec.dims.length === 1 ? 'F32' : dtype;
    return { name: spec.name, dtype: t, shape: spec.dims, bytes: t === 'F32' ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : t === 'F16' ? toF16(v) : toBf16(v) };
  });
  const half = Math.ceil(tensors.length / 2);
  const shards = [tensors.slice(0, half), tensors.slice(half)];
  const weightMap: Record<string, string> = {};
  shards.forEach((part, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    writeFileSync(join(dir, file), safetensors(part));
    for (const t of part) weightMap[t.name] = file;
  });
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  const config: Record<string, unknown> = {
    architectures: [HF_ARCH[family.name]],
    model_type: family.architecture === 'qwen2' ? 'qwen2' : family.name === 'mistral' ? 'mistral' : 'llama',
    hidden_size: s.dim,
    intermediate_size: s.hiddenDim,
    num_hidden_layers: s.nLayers,
    num_attention_heads: s.nHeads,
    num_key_value_heads: s.nKvHeads,
    vocab_size: s.vocabSize,
    max_position_embeddings: s.maxSeqLen,
    rms_norm_eps: s.normEps,
    rope_theta: s.ropeTheta,
    tie_word_embeddings: s.sharedClassifier,
    torch_dtype: { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[dtype],
    rope_scaling: family.name === 'llama3' ? { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 32 } : null,
  };
  if (family.name === 'mistral') config.sliding_window = 4096;
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  // The tokenizer files marginal writes for the GGUF, as a checkpoint's own would be.
  const md = Object.fromEntries(Object.entries(family.tokenizer()).map(([k, e]) => [k, e.value]));
  const tok = ggufTokenizer(md, s.vocabSize);
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok.json));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tok.config));
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: tok.stopIds }));
}
