import { readFileSync } from 'node:fs';
import { CheckpointFormatError } from '../../errors.js';
import type { BlockTensor } from '../quant/ggml.js';
import type { LlamaShape, WeightSpec } from './shape.js';
import { headDim, checkShape, weightSpecs } from './shape.js';

/**
 * Produces each weight tensor on demand, so multi-gigabyte models never sit in memory whole:
 * float32 values, or ggml blocks as a quantized file stores them (loaded without a detour
 * through float32 where the target format is the same).
 */
export type WeightSource = (spec: WeightSpec) => Float32Array | BlockTensor;

const HEADER_BYTES = 7 * 4;

export interface Llama2cCheckpoint {
  shape: LlamaShape;
  weights: WeightSource;
}

/**
 * Reads a llama2.c legacy (version 0) checkpoint: seven int32 header fields, then float32
 * tensors grouped by kind across layers, then the two RoPE tables, then the classifier when
 * unshared (negative vocab_size).
 */
export function readLlama2cCheckpoint(path: string): Llama2cCheckpoint {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new CheckpointFormatError(`cannot read ${path}: ${(e as Error).message}`);
  }
  if (buf.byteLength < HEADER_BYTES) throw new CheckpointFormatError(`${path} is ${buf.byteLength} bytes, shorter than the 28-byte header`);
  const header = new Int32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + HEADER_BYTES));
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabRaw, seqLen] = Array.from(header) as [number, number, number, number, number, number, number];
  const shape: LlamaShape = {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: Math.abs(vocabRaw),
    maxSeqLen: seqLen,
    normEps: 1e-5,
    ropeTheta: 10000,
    sharedClassifier: vocabRaw > 0,
  };
  const problem = checkShape(shape);
  if (problem !== undefined) throw new CheckpointFormatError(`${path}: header ${problem}`);
  const hd = headDim(shape);
  const kvDim = nKvHeads * hd;
  const L = nLayers;
  // Sizes in llama2.c's file order.
  const sections: [string, number][] = [
    ['embed', shape.vocabSize * dim],
    ['rms_att', L * dim],
    ['wq', L * dim * dim],
    ['wk', L * dim * kvDim],
    ['wv', L * dim * kvDim],
    ['wo', L * dim * dim],
    ['rms_ffn', L * dim],
    ['w1', L * dim * hiddenDim],
    ['w2', L * hiddenDim * dim],
    ['w3', L * dim * hiddenDim],
    ['rms_final', dim],
    ['freq_cis', seqLen * hd],
  ];
  if (!shape.sharedClassifier) sections.push(['wcls', shape.vocabSize * dim]);
  const expected = HEADER_BYTES + sections.reduce((n, [, c]) => n + c * 4, 0);
  if (buf.byteLength !== expected) {
    throw new CheckpointFormatError(
      `${path} is ${buf.byteLength} bytes but its header (dim ${dim}, hidden ${hiddenDim}, layers ${nLayers}, heads ${nHeads}/${nKvHeads}, vocab ${vocabRaw}, seq ${seqLen}) implies ${expected}`,
    );
  }
  const floats = new Float32Array(buf.buffer.slice(buf.byteOffset + HEADER_BYTES, buf.byteOffset + buf.byteLength));
  const offsets = new Map<string, number>();
  let at = 0;
  for (const [name, count] of sections) {
    offsets.set(name, at);
    at += count;
  }
  const section = (name: string, layer: number, perLayer: number): Float32Array => {
    const base = (offsets.get(name) as number) + layer * perLayer;
    return floats.subarray(base, base + perLayer);
  };
  const byKind: Record<string, [string, number]> = {
    input_layernorm: ['rms_att', dim],
    'self_attn.q_proj': ['wq', dim * dim],
    'self_attn.k_proj': ['wk', dim * kvDim],
    'self_attn.v_proj': ['wv', dim * kvDim],
    'self_attn.o_proj': ['wo', dim * dim],
    post_attention_layernorm: ['rms_ffn', dim],
    'mlp.gate_proj': ['w1', dim * hiddenDim],
    'mlp.down_proj': ['w2', hiddenDim * dim],
    'mlp.up_proj': ['w3', dim * hiddenDim],
  };
  const weights = (spec: WeightSpec): Float32Array => {
    if (spec.name === 'model.embed_tokens.weight') return section('embed', 0, shape.vocabSize * dim);
    if (spec.name === 'model.norm.weight') return section('rms_final', 0, dim);
    if (spec.name === 'lm_head.weight') return section('wcls', 0, shape.vocabSize * dim);
    const m = /^model\.layers\.(\d+)\.(.+)\.weight$/.exec(spec.name);
    const kind = m ? byKind[m[2] as string] : undefined;
    if (!m || !kind) throw new CheckpointFormatError(`no tensor ${spec.name} in a llama2.c checkpoint`);
    return section(kind[0], Number(m[1]), kind[1]);
  };
  // Touch every spec once so a layout mistake fails at import, not at inference.
  for (const spec of weightSpecs(shape)) {
    const n = spec.dims.reduce((a, b) => a * b, 1);
    if (weights(spec).length !== n) throw new CheckpointFormatError(`tensor ${spec.name} has the wrong size`);
  }
  return { shape, weights };
}

