import onnxProto from 'onnx-proto';
import { DType, GraphBuilder, inlineTensor } from '../onnx/builder.js';
import { classifierName, headDim, type LlamaShape } from './shape.js';

type ITensorProto = onnxProto.onnx.ITensorProto;

/**
 * Input and output names of the two graph flavours. The `hf` names are those of Hugging Face
 * Optimum decoder exports, so transformers.js and our engine can load either's graphs.
 */
export const IO = {
  inputIds: 'input_ids',
  attentionMask: 'attention_mask',
  positionIds: 'position_ids',
  seqlensK: 'seqlens_k',
  totalSeqLen: 'total_sequence_length',
  logitsRows: 'logits_rows',
  logits: 'logits',
  pastKey: (l: number) => `past_key_values.${l}.key`,
  pastValue: (l: number) => `past_key_values.${l}.value`,
  presentKey: (l: number) => `present.${l}.key`,
  presentValue: (l: number) => `present.${l}.value`,
} as const;

/** Head size of the fast graph's KV cache: the model's, rounded up to GroupQueryAttention's multiple of 16. */
export function fastCacheHeadDim(s: LlamaShape): number {
  return Math.ceil(headDim(s) / 16) * 16;
}

/** Rotary tables as llama2.c computes them (interleaved pairs, float32 arithmetic). */
export function ropeTables(s: LlamaShape, positions: number): { cos: Float32Array; sin: Float32Array } {
  const half = headDim(s) / 2;
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  const f = Math.fround;
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const freq = f(1 / f(Math.pow(s.ropeTheta, f((2 * i) / headDim(s)))));
      const val = f(p * freq);
      cos[p * half + i] = Math.cos(val);
      sin[p * half + i] = Math.sin(val);
    }
  }
  return { cos, sin };
}

function padRopeTables(s: LlamaShape, t: { cos: Float32Array; sin: Float32Array }, positions: number, width: number): { cos: Float32Array; sin: Float32Array } {
  const half = headDim(s) / 2;
  if (width === half) return t;
  const cos = new Float32Array(positions * width).fill(1);
  const sin = new Float32Array(positions * width);
  for (let p = 0; p < positions; p++) {
    cos.set(t.cos.subarray(p * half, (p + 1) * half), p * width);
    sin.set(t.sin.subarray(p * half, (p + 1) * half), p * width);
  }
  return { cos, sin };
}

interface Common {
  g: GraphBuilder;
  s: LlamaShape;
  w: (name: string) => string;
}

function rmsNorm({ g, s }: Common, x: string, weight: string): string {
  // Emitted in the Pow/ReduceMean/Add/Sqrt/Div/Mul form that ONNX Runtime fuses into
  // SimplifiedLayerNormalization, so both flavours get the fused kernel without a contrib op.
  const sq = g.op1('Pow', [x, g.constFloat([2], true)]);
  const mean = g.op1('ReduceMean', [sq], { axes: [-1], keepdims: 1 });
  const eps = g.op1('Add', [mean, g.constFloat([s.normEps], true)]);
  const root = g.op1('Sqrt', [eps]);
  const normed = g.op1('Div', [x, root]);
  return g.op1('Mul', [normed, weight]);
}

function linear({ g, w }: Common, x: string, weight: string): string {
  return g.op1('Gemm', [x, w(weight)], { transB: 1 });
}

function feedForward(c: Common, x: string, l: number): string {
  const { g, w } = c;
  const h = rmsNorm(c, x, w(`model.layers.${l}.post_attention_layernorm.weight`));
  const gate = linear(c, h, `model.layers.${l}.mlp.gate_proj.weight`);
  const up = linear(c, h, `model.layers.${l}.mlp.up_proj.weight`);
  const silu = g.op1('Mul', [gate, g.op1('Sigmoid', [gate])]);
  const down = linear(c, g.op1('Mul', [silu, up]), `model.layers.${l}.mlp.down_proj.weight`);
  return g.op1('Add', [x, down]);
}

export interface GraphOptions {
  /** Length of the rotary tables: the largest position (plus padding headroom) a graph can see. */
  ropePositions: number;
}

/**
 * The engine's own flavour. Attention is com.microsoft GroupQueryAttention with past and
 * present bound to one buffer per layer ([slots, kv_heads, capacity, head_dim]), so a step
 * writes only its new keys and values in place and never copies the cache. Logits are
 * computed only for the rows the caller asks for (the last token of each sequence), which
 * spares the vocabulary projection for every prefill token but one.
 */
export function buildFastGraph(s: LlamaShape, weights: Map<string, ITensorProto>, opts: GraphOptions): Uint8Array {
  const g = new GraphBuilder('marginal_llama_fast');
  const w = addWeights(g, weights);
  const c: Common = { g, s, w };
  const hd = headDim(s);
  const ids = g.input(IO.inputIds, DType.int64, ['batch', 'sequence']);
  const seqlensK = g.input(IO.seqlensK, DType.int32, ['batch']);
  const total = g.input(IO.totalSeqLen, DType.int32, []);
  const rows = g.input(IO.logitsRows, DType.int64, ['rows']);
  const cacheHd = fastCacheHeadDim(s);
  const { cos, sin } = padRopeTables(s, ropeTables(s, opts.ropePositions), opts.ropePositions, cacheHd / 2);
  const cosT = g.initializer(inlineTensor('rope_cos', [opts.ropePositions, cacheHd / 2], cos));
  const sinT = g.initializer(inlineTensor('rope_sin', [opts.ropePositions, cacheHd / 2], sin));

  const bs = g.op1('Shape', [ids]);
  const bsMinus1 = g.op1('Concat', [bs, g.constInt64([-1])], { axis: 0 });
  let x = g.op1('Gather', [w('model.embed_tokens.weight'), ids]);
  x = g.op1('Reshape', [x, g.constInt64([-1, s.dim])]);
  // ONNX Runtime's CPU GroupQueryAttention wants head sizes in multiples of 16. Smaller heads
  // are zero-padded: padded query and key lanes add nothing to the scores, padded value lanes
  // produce zeros that are sliced off, and the rotary tables turn padded lanes by angle 0.
  const padHeads = (x2d: string, heads: number): string => {
    if (cacheHd === hd) return x2d;
    const x3 = g.op1('Reshape', [x2d, g.constInt64([-1, heads, hd])]);
    const padded = g.op1('Pad', [x3, g.constInt64([0, 0, 0, 0, 0, cacheHd - hd])]);
    return g.op1('Reshape', [padded, g.constInt64([-1, heads * cacheHd])]);
  };
  const unpadHeads = (attn: string): string => {
    if (cacheHd === hd) return g.op1('Reshape', [attn, g.constInt64([-1, s.nHeads * hd])]);
    const x3 = g.op1('Reshape', [attn, g.constInt64([-1, s.nHeads, cacheHd])]);
    const real = g.op1('Slice', [x3, g.constInt64([0]), g.constInt64([hd]), g.constInt64([2])]);
    return g.op1('Reshape', [real, g.constInt64([-1, s.nHeads * hd])]);
  };
  const pastDims = ['batch', s.nKvHeads, 'kv_capacity', cacheHd];
  for (let l = 0; l < s.nLayers; l++) {
    const h = rmsNorm(c, x, w(`model.layers.${l}.input_layernorm.weight`));
    const q = g.op1('Reshape', [padHeads(linear(c, h, `model.layers.${l}.self_attn.q_proj.weight`), s.nHeads), bsMinus1]);
    const k = g.op1('Reshape', [padHeads(linear(c, h, `model.layers.${l}.self_attn.k_proj.weight`), s.nKvHeads), bsMinus1]);
    const v = g.op1('Reshape', [padHeads(linear(c, h, `model.layers.${l}.self_attn.v_proj.weight`), s.nKvHeads), bsMinus1]);
    const pk = g.input(IO.pastKey(l), DType.float, pastDims);
    const pv = g.input(IO.pastValue(l), DType.float, pastDims);
    const [attn] = g.op(
      'GroupQueryAttention',
      [q, k, v, pk, pv, seqlensK, total, cosT, sinT],
      { num_heads: s.nHeads, kv_num_heads: s.nKvHeads, do_rotary: 1, rotary_interleaved: 1, scale: { float: 1 / Math.sqrt(hd) } },
      { domain: 'com.microsoft', outputs: [`attn_${l}`, IO.presentKey(l), IO.presentValue(l)] },
    );
    g.output(IO.presentKey(l), DType.float, pastDims);
    g.output(IO.presentValue(l), DType.float, pastDims);
    const o = linear(c, unpadHeads(attn as string), `model.layers.${l}.self_attn.o_proj.weight`);
    x = g.op1('Add', [x, o]);
    x = feedForward(c, x, l);
  }
  const picked = g.op1('Gather', [x, rows], { axis: 0 });
  const normed = rmsNorm(c, picked, w('model.norm.weight'));
  g.op1('Gemm', [normed, w(classifierName(s))], { transB: 1 }, { output: IO.logits });
  g.output(IO.logits, DType.float, ['rows', s.vocabSize]);
  return g.encode({ '': 17, 'com.microsoft': 1 }, { flavour: 'fast' });
}

/**
 * The Hugging Face / Optimum decoder interface, in standard ONNX operators only, so that
 * transformers.js and any ONNX Runtime build can run it: past keys and values go in, the
 * concatenated present comes out (a copy of the cache every step; that is the interface's cost).
 */
export function buildHfGraph(s: LlamaShape, weights: Map<string, ITensorProto>, opts: GraphOptions): Uint8Array {
  const g = new GraphBuilder('marginal_llama_hf');
  const w = addWeights(g, weights);
  const c: Common = { g, s, w };
  const hd = headDim(s);
  const groups = s.nHeads / s.nKvHeads;
  const ids = g.input(IO.inputIds, DType.int64, ['batch_size', 'sequence_length']);
  const mask = g.input(IO.attentionMask, DType.int64, ['batch_size', 'total_sequence_length']);
  const pos = g.input(IO.positionIds, DType.int64, ['batch_size', 'sequence_length']);
  const { cos, sin } = ropeTables(s, opts.ropePositions);
  const cosT = g.initializer(inlineTensor('rope_cos', [opts.ropePositions, hd / 2], cos));
  const sinT = g.initializer(inlineTensor('rope_sin', [opts.ropePositions, hd / 2], sin));

  const idsShape = g.op1('Shape', [ids]);
  const B = g.op1('Slice', [idsShape, g.constInt64([0]), g.constInt64([1])]);
  const S = g.op1('Slice', [idsShape, g.constInt64([1]), g.constInt64([2])]);
  const T = g.op1('Slice', [g.op1('Shape', [mask]), g.constInt64([1]), g.constInt64([2])]);
  const cat = (parts: string[]) => g.op1('Concat', parts, { axis: 0 });

  // [B, S, 1, hd/2, 1]: broadcast over heads and over the (even, odd) pair axis.
  const ropeAt = (table: string) => g.op1('Unsqueeze', [g.op1('Gather', [table, pos]), g.constInt64([2, 4])]);
  const cosP = ropeAt(cosT);
  const sinP = ropeAt(sinT);
  const rotate = (x2d: string, heads: number): string => {
    const x5 = g.op1('Reshape', [x2d, cat([B, S, g.constInt64([heads, hd / 2, 2])])]);
    const [even, odd] = g.op('Split', [x5, g.constInt64([1, 1])], { axis: 4 }, { outputs: 2 }) as [string, string];
    const re = g.op1('Sub', [g.op1('Mul', [even, cosP]), g.op1('Mul', [odd, sinP])]);
    const ro = g.op1('Add', [g.op1('Mul', [even, sinP]), g.op1('Mul', [odd, cosP])]);
    const r = g.op1('Reshape', [g.op1('Concat', [re, ro], { axis: 4 }), cat([B, S, g.constInt64([heads, hd])])]);
    return g.op1('Transpose', [r], { perm: [0, 2, 1, 3] });
  };

  // Additive bias [B, 1, 1, S, T]: key j is visible to new token i when j <= P + i (causal
  // over the concatenation past ++ new) and attention_mask[j] = 1. Finite, so a fully padded
  // row stays NaN-free.
  const zero = g.constInt64([0], true);
  const one = g.constInt64([1], true);
  const Tscalar = g.op1('Squeeze', [T, g.constInt64([0])]);
  const Sscalar = g.op1('Squeeze', [S, g.constInt64([0])]);
  const Pscalar = g.op1('Sub', [Tscalar, Sscalar]);
  const keyPos = g.op1('Unsqueeze', [g.op1('Range', [zero, Tscalar, one]), g.constInt64([0])]);
  const queryPos = g.op1('Unsqueeze', [g.op1('Range', [Pscalar, Tscalar, one]), g.constInt64([1])]);
  const causal = g.op1('LessOrEqual', [keyPos, queryPos]);
  const padOk = g.op1('Unsqueeze', [g.op1('Cast', [mask], { to: DType.bool }), g.constInt64([1])]);
  const allowed = g.op1('And', [causal, padOk]);
  const bias = g.op1('Unsqueeze', [
    g.op1('Where', [allowed, g.constFloat([0], true), g.constFloat([-1e9], true)]),
    g.constInt64([1, 2]),
  ]);
  const scale = g.constFloat([1 / Math.sqrt(hd)], true);

  let x = g.op1('Gather', [w('model.embed_tokens.weight'), ids]);
  x = g.op1('Reshape', [x, g.constInt64([-1, s.dim])]);
  for (let l = 0; l < s.nLayers; l++) {
    const h = rmsNorm(c, x, w(`model.layers.${l}.input_layernorm.weight`));
    const q = rotate(linear(c, h, `model.layers.${l}.self_attn.q_proj.weight`), s.nHeads);
    const k = rotate(linear(c, h, `model.layers.${l}.self_attn.k_proj.weight`), s.nKvHeads);
    const v = g.op1('Transpose', [
      g.op1('Reshape', [linear(c, h, `model.layers.${l}.self_attn.v_proj.weight`), cat([B, S, g.constInt64([s.nKvHeads, hd])])]),
    ], { perm: [0, 2, 1, 3] });
    const pastDims = ['batch_size', s.nKvHeads, 'past_sequence_length', hd];
    const presentDims = ['batch_size', s.nKvHeads, 'total_sequence_length', hd];
    const pk = g.input(IO.pastKey(l), DType.float, pastDims);
    const pv = g.input(IO.pastValue(l), DType.float, pastDims);
    const presentK = g.op1('Concat', [pk, k], { axis: 2 }, { output: IO.presentKey(l) });
    const presentV = g.op1('Concat', [pv, v], { axis: 2 }, { output: IO.presentValue(l) });
    g.output(IO.presentKey(l), DType.float, presentDims);
    g.output(IO.presentValue(l), DType.float, presentDims);
    // Query heads that share a KV head are adjacent (llama2.c: kv head = h / groups), so
    // [B, H, S, hd] regroups to [B, kvH, groups*S, hd] without repeating keys or values.
    const qg = g.op1('Reshape', [q, g.constInt64([0, s.nKvHeads, -1, hd])]);
    const scores = g.op1('Mul', [g.op1('MatMul', [qg, g.op1('Transpose', [presentK], { perm: [0, 1, 3, 2] })]), scale]);
    const scores5 = g.op1('Reshape', [scores, cat([B, g.constInt64([s.nKvHeads, groups]), S, T])]);
    const probs = g.op1('Softmax', [g.op1('Add', [scores5, bias])], { axis: -1 });
    const probs4 = g.op1('Reshape', [probs, cat([B, g.constInt64([s.nKvHeads, -1]), T])]);
    const ctx = g.op1('Reshape', [g.op1('MatMul', [probs4, presentV]), g.constInt64([0, s.nHeads, -1, hd])]);
    const merged = g.op1('Reshape', [g.op1('Transpose', [ctx], { perm: [0, 2, 1, 3] }), g.constInt64([-1, s.nHeads * hd])]);
    x = g.op1('Add', [x, linear(c, merged, `model.layers.${l}.self_attn.o_proj.weight`)]);
    x = feedForward(c, x, l);
  }
  const normed = rmsNorm(c, x, w('model.norm.weight'));
  const logits2d = g.op1('Gemm', [normed, w(classifierName(s))], { transB: 1 });
  g.op1('Reshape', [logits2d, cat([B, S, g.constInt64([s.vocabSize])])], {}, { output: IO.logits });
  g.output(IO.logits, DType.float, ['batch_size', 'sequence_length', s.vocabSize]);
  return g.encode({ '': 17 }, { flavour: 'hf' });
}

function addWeights(g: GraphBuilder, weights: Map<string, ITensorProto>): (name: string) => string {
  for (const t of weights.values()) g.initializer(t);
  return (name: string) => {
    if (!weights.has(name)) throw new Error(`graph refers to missing weight ${name}`);
    return name;
  };
}
