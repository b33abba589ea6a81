import { DType, GraphBuilder, inlineTensor } from '../onnx/builder.js';
import { ACCURACY_LEVEL } from '../quant/formats.js';
import { headDim, type LlamaShape } from './shape.js';
import { CLASSIFIER, type GraphWeights } from './weight-store.js';

/**
 * Input and output names of the two graph flavours. The `hf` names are those of Hugging Face
 * Optimum decoder exports, so transformers.js and our engine can load either's graphs.
 */
export const IO = {
  inputIds: 'input_ids',
  attentionMask: 'attention_mask',
  positionIds: 'position_ids',
  pastLengths: 'past_lengths',
  logitsRows: 'logits_rows',
  logits: 'logits',
  pastKey: (l: number) => `past_key_values.${l}.key`,
  pastValue: (l: number) => `past_key_values.${l}.value`,
  presentKey: (l: number) => `present.${l}.key`,
  presentValue: (l: number) => `present.${l}.value`,
  topK: 'topk',
  topKValues: 'topk_values',
  topKIndices: 'topk_indices',
  newKey: (l: number) => `new_key_values.${l}.key`,
  newValue: (l: number) => `new_key_values.${l}.value`,
  blockTables: 'block_tables',
  poolKey: (l: number) => `kv_pool.${l}.key`,
  poolValue: (l: number) => `kv_pool.${l}.value`,
} as const;

/**
 * Rotary tables [position, pair] as llama2.c computes them (float32 arithmetic), each pair's
 * frequency divided by its factor where the model scales rope (Llama 3, linear scaling).
 */
export function ropeTables(s: LlamaShape, positions: number): { cos: Float32Array; sin: Float32Array } {
  const half = headDim(s) / 2;
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  const f = Math.fround;
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const freq = f(f(1 / f(Math.pow(s.ropeTheta, f((2 * i) / headDim(s))))) / (s.ropeFreqFactors?.[i] ?? 1));
      const val = f(p * freq);
      cos[p * half + i] = Math.cos(val);
      sin[p * half + i] = Math.sin(val);
    }
  }
  return { cos, sin };
}

export interface GraphOptions {
  /** Length of the rotary tables: the largest position a graph can see, plus one. */
  ropePositions: number;
}

/** What both flavours share: weights, the per-token layers, and Q/K/V with rotary applied. */
class LlamaGraph {
  readonly g: GraphBuilder;
  readonly hd: number;
  readonly groups: number;
  readonly ids: string;
  readonly pos: string;
  readonly B: string;
  readonly S: string;
  private readonly cosP: string;
  private readonly sinP: string;
  private readonly interleaved: boolean;

  constructor(
    name: string,
    readonly s: LlamaShape,
    readonly weights: GraphWeights,
    opts: GraphOptions,
    dims: { batch: string; seq: string },
  ) {
    const g = (this.g = new GraphBuilder(name));
    for (const t of weights.initializers) g.initializer(t);
    this.interleaved = (s.rope ?? 'interleaved') === 'interleaved';
    this.hd = headDim(s);
    this.groups = s.nHeads / s.nKvHeads;
    this.ids = g.input(IO.inputIds, DType.int64, [dims.batch, dims.seq]);
    this.pos = g.input(IO.positionIds, DType.int64, [dims.batch, dims.seq]);
    const idsShape = g.op1('Shape', [this.ids]);
    this.B = g.op1('Slice', [idsShape, g.constInt64([0]), g.constInt64([1])]);
    this.S = g.op1('Slice', [idsShape, g.constInt64([1]), g.constInt64([2])]);
    const { cos, sin } = ropeTables(s, opts.ropePositions);
    const cosT = g.initializer(inlineTensor('rope_cos', [opts.ropePositions, this.hd / 2], cos));
    const sinT = g.initializer(inlineTensor('rope_sin', [opts.ropePositions, this.hd / 2], sin));
    // Interleaved [B, S, 1, hd/2, 1], half [B, S, 1, 1, hd/2]: broadcast over heads and over
    // the axis that tells a pair's two members apart.
    const at = (table: string) => g.op1('Unsqueeze', [g.op1('Gather', [table, this.pos]), g.constInt64(this.interleaved ? [2, 4] : [2, 3])]);
    this.cosP = at(cosT);
    this.sinP = at(sinT);
  }

  cat(parts: string[]): string {
    return this.g.op1('Concat', parts, { axis: 0 });
  }

  embed(): string {
    const { g } = this;
    const e = this.weights.embedding;
    const rows =
      e.kind === 'float'
        ? g.op1('Gather', [e.name, this.ids])
        : g.op1('GatherBlockQuantized', [e.codes, this.ids, e.scales], { bits: e.bits, block_size: e.blockSize, gather_axis: 0, quantize_axis: 1 }, { domain: 'com.microsoft' });
    return g.op1('Reshape', [rows, g.constInt64([-1, this.s.dim])]);
  }

  rmsNorm(x: string, weight: string): string {
    // Emitted in the Pow/ReduceMean/Add/Sqrt/Div/Mul form that ONNX Runtime fuses into
    // SimplifiedLayerNormalization, so both flavours get the fused kernel without a contrib op.
    const { g } = this;
    const sq = g.op1('Pow', [x, g.constFloat([2], true)]);
    const mean = g.op1('ReduceMean', [sq], { axes: [-1], keepdims: 1 });
    const root = g.op1('Sqrt', [g.op1('Add', [mean, g.constFloat([this.s.normEps], true)])]);
    return g.op1('Mul', [g.op1('Div', [x, root]), weight]);
  }

  /**
   * x · Wᵀ (+ bias) for the projection stored under `weight` (its bias, if the model has one, is
   * `weight` with .bias for .weight): Gemm over float32, MatMulNBits over int8/int4 blocks.
   */
  linear(x: string, weight: string, output?: string): string {
    const { g } = this;
    const w = this.weights.linear.get(weight);
    if (w === undefined) throw new Error(`graph writer: no weight ${weight}`);
    const biasName = weight.replace(/\.weight$/, '.bias');
    const bias = this.weights.vectors.has(biasName) ? biasName : undefined;
    const out = output === undefined ? {} : { output };
    if (w.kind === 'float') return g.op1('Gemm', bias ? [x, w.name, bias] : [x, w.name], { transB: 1 }, out);
    const attrs = { K: w.K, N: w.N, bits: w.bits, block_size: w.blockSize, accuracy_level: ACCURACY_LEVEL };
    if (bias === undefined) return g.op1('MatMulNBits', [x, w.codes, w.scales], attrs, { ...out, domain: 'com.microsoft' });
    return g.op1('Add', [g.op1('MatMulNBits', [x, w.codes, w.scales], attrs, { domain: 'com.microsoft' }), bias], {}, out);
  }

  /** Projections of one input: one linear over their stacked rows and a Split where the store fused them, else one each. */
  private projections(x: string, l: number, fused: string, parts: string[], widths: number[]): string[] {
    const name = `model.layers.${l}.${fused}.weight`;
    if (!this.weights.linear.has(name)) return parts.map((p) => this.linear(x, `model.layers.${l}.${p}.weight`));
    return this.g.op('Split', [this.linear(x, name), this.g.constInt64(widths)], { axis: 1 }, { outputs: parts.length });
  }

  /** Rotary embedding in the model's pair layout, from [B*S, heads*hd] to [B, heads, S, hd]. */
  private rotate(x2d: string, heads: number): string {
    const { g, hd } = this;
    const axis = this.interleaved ? 4 : 3;
    const x5 = g.op1('Reshape', [x2d, this.cat([this.B, this.S, g.constInt64(this.interleaved ? [heads, hd / 2, 2] : [heads, 2, hd / 2])])]);
    const [a, b] = g.op('Split', [x5, g.constInt64([1, 1])], { axis }, { outputs: 2 }) as [string, string];
    const ra = g.op1('Sub', [g.op1('Mul', [a, this.cosP]), g.op1('Mul', [b, this.sinP])]);
    const rb = g.op1('Add', [g.op1('Mul', [a, this.sinP]), g.op1('Mul', [b, this.cosP])]);
    const r = g.op1('Reshape', [g.op1('Concat', [ra, rb], { axis }), this.cat([this.B, this.S, g.constInt64([heads, hd])])]);
    return g.op1('Transpose', [r], { perm: [0, 2, 1, 3] });
  }

  /** Q as [B, kvH, groups*S, hd] (query heads sharing a KV head are adjacent, as in llama2.c), K and V as [B, kvH, S, hd]. */
  qkv(h: string, l: number): { q: string; k: string; v: string } {
    const { g, s, hd } = this;
    const [q2d, k2d, v2d] = this.projections(h, l, 'self_attn.qkv_proj', ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'], [s.nHeads * hd, s.nKvHeads * hd, s.nKvHeads * hd]) as [string, string, string];
    const q = this.rotate(q2d, s.nHeads);
    const k = this.rotate(k2d, s.nKvHeads);
    const v = g.op1('Transpose', [g.op1('Reshape', [v2d, this.cat([this.B, this.S, g.constInt64([s.nKvHeads, hd])])])], { perm: [0, 2, 1, 3] });
    return { q: g.op1('Reshape', [q, g.constInt64([0, s.nKvHeads, -1, hd])]), k, v };
  }

  /** Scores [B, kvH, groups*S, T] viewed as [B, kvH, groups, S, T] so a [B, 1, 1, S, T] bias broadcasts. */
  grouped(scores: string, T: string): string {
    return this.g.op1('Reshape', [scores, this.cat([this.B, this.g.constInt64([this.s.nKvHeads, this.groups]), this.S, T])]);
  }

  ungrouped(probs: string, T: string): string {
    return this.g.op1('Reshape', [probs, this.cat([this.B, this.g.constInt64([this.s.nKvHeads, -1]), T])]);
  }

  /** Attention context [B, kvH, groups*S, hd] back to [B*S, H*hd], then the output projection and the residual. */
  finishAttention(x: string, ctx: string, l: number): string {
    const { g, s, hd } = this;
    const heads = g.op1('Reshape', [ctx, g.constInt64([0, s.nHeads, -1, hd])]);
    const merged = g.op1('Reshape', [g.op1('Transpose', [heads], { perm: [0, 2, 1, 3] }), g.constInt64([-1, s.nHeads * hd])]);
    return g.op1('Add', [x, this.linear(merged, `model.layers.${l}.self_attn.o_proj.weight`)]);
  }

  feedForward(x: string, l: number): string {
    const { g } = this;
    const h = this.rmsNorm(x, `model.layers.${l}.post_attention_layernorm.weight`);
    const [gate, up] = this.projections(h, l, 'mlp.gate_up_proj', ['mlp.gate_proj', 'mlp.up_proj'], [this.s.hiddenDim, this.s.hiddenDim]) as [string, string];
    const silu = g.op1('Mul', [gate, g.op1('Sigmoid', [gate])]);
    return g.op1('Add', [x, this.linear(g.op1('Mul', [silu, up]), `model.layers.${l}.mlp.down_proj.weight`)]);
  }

  /** Finite so a fully masked row stays NaN-free (and NaN never reaches a masked value). */
  bias(allowed: string): string {
    return this.g.op1('Where', [allowed, this.g.constFloat([0], true), this.g.constFloat([-1e9], true)]);
  }

  get scale(): number {
    return 1 / Math.sqrt(this.hd);
  }
}

/**
 * The engine's own flavour, over a paged KV pool. Each layer's keys and values are one pool
 * input of [kvHeads, blocks, blockSize, headDim] that the graph only reads (handed over
 * without a copy); `block_tables` [batch, blocksPerSequence] names each row's blocks, and an
 * in-graph Gather takes only those, so attention costs what the batch's tables reach — the
 * context actually held, not the engine's maximum. The graph returns only the new tokens' keys
 * and values, which the engine writes into their blocks. Gathering along the pool's block axis
 * yields [kvHeads, batch, positions, headDim] directly, so attention runs head-major (queries
 * and the context of the new tokens are transposed instead of the cache). Scores against the
 * gathered past (positions at or past each row's length masked) and against the new tokens
 * (causal) share one softmax. Logits are computed only for the rows asked for, which spares
 * the vocabulary projection for every prefill token but the last.
 *
 * A CUDA variant would swap the Gather-and-attend block below for ONNX Runtime's
 * com.microsoft.PagedAttention (float16 cache, token-major blocks, block_table and
 * past_seqlens as int32, the cache updated in place); every other input and output stays.
 */
export function buildFastGraph(s: LlamaShape, weights: GraphWeights, opts: GraphOptions): Uint8Array {
  const m = new LlamaGraph('marginal_llama_fast', s, weights, opts, { batch: 'batch', seq: 'sequence' });
  const { g, hd } = m;
  const H = s.nKvHeads;
  const G = m.groups;
  const pastLengths = g.input(IO.pastLengths, DType.int64, ['batch']);
  const rows = g.input(IO.logitsRows, DType.int64, ['rows']);
  const tables = g.input(IO.blockTables, DType.int32, ['batch', 'blocks_per_sequence']);
  const poolDims = [H, 'pool_blocks', 'block_size', hd];
  const newDims = ['batch', H, 'sequence', hd];
  const zero = g.constInt64([0], true);
  const one = g.constInt64([1], true);
  // [kvHeads, batch, blocks, blockSize, hd] -> [kvHeads, batch, T, hd], T = blocks × blockSize.
  const gathered = (pool: string) => g.op1('Reshape', [g.op1('Gather', [pool, tables], { axis: 1 }), g.constInt64([0, 0, -1, hd])]);
  g.input(IO.poolKey(0), DType.float, poolDims);
  const pastK0 = gathered(IO.poolKey(0));
  const T = g.op1('Slice', [g.op1('Shape', [pastK0]), g.constInt64([2]), g.constInt64([3])]);
  const Ts = g.op1('Squeeze', [T, g.constInt64([0])]);
  const Ss = g.op1('Squeeze', [m.S, g.constInt64([0])]);
  // [1, B, 1, 1, T]: gathered position j is visible while j < past_lengths[b].
  const pastPos = g.op1('Unsqueeze', [g.op1('Range', [zero, Ts, one]), g.constInt64([0])]);
  const pastOk = g.op1('Less', [pastPos, g.op1('Unsqueeze', [pastLengths, g.constInt64([1])])]);
  const pastBias = g.op1('Unsqueeze', [m.bias(pastOk), g.constInt64([0, 2, 3])]);
  // [S, S]: new token j is visible to new token i while j <= i.
  const newPos = g.op1('Range', [zero, Ss, one]);
  const causal = g.op1('LessOrEqual', [g.op1('Unsqueeze', [newPos, g.constInt64([0])]), g.op1('Unsqueeze', [newPos, g.constInt64([1])])]);
  const newBias = m.bias(causal);
  const headMajor = (x: string) => g.op1('Transpose', [x], { perm: [1, 0, 2, 3] });
  // Scores [kvH, B, G·S, n] viewed as [kvH, B, G, S, n] so the biases broadcast, and back.
  const grouped = (x: string, n: string) => g.op1('Reshape', [x, m.cat([g.constInt64([0, 0, G, -1]), n])]);
  const ungrouped = (x: string, n: string) => g.op1('Reshape', [x, m.cat([g.constInt64([0, 0, -1]), n])]);
  // FusedMatMul's transB reads the keys as gathered: no transposed copy.
  const fm = (a: string, b: string) => g.op1('FusedMatMul', [a, b], { transB: 1, alpha: { float: m.scale } }, { domain: 'com.microsoft' });

  let x = m.embed();
  for (let l = 0; l < s.nLayers; l++) {
    const h = m.rmsNorm(x, `model.layers.${l}.input_layernorm.weight`);
    const { q, k, v } = m.qkv(h, l);
    if (l > 0) g.input(IO.poolKey(l), DType.float, poolDims);
    g.input(IO.poolValue(l), DType.float, poolDims);
    g.op1('Identity', [k], {}, { output: IO.newKey(l) });
    g.op1('Identity', [v], {}, { output: IO.newValue(l) });
    g.output(IO.newKey(l), DType.float, newDims);
    g.output(IO.newValue(l), DType.float, newDims);
    const pastK = l === 0 ? pastK0 : gathered(IO.poolKey(l));
    const pastV = gathered(IO.poolValue(l));
    const qh = headMajor(q);
    const kh = headMajor(k);
    const vh = headMajor(v);
    const sPast = g.op1('Add', [grouped(fm(qh, pastK), T), pastBias]);
    const sNew = g.op1('Add', [grouped(fm(qh, kh), m.S), newBias]);
    const probs = g.op1('Softmax', [g.op1('Concat', [sPast, sNew], { axis: 4 })], { axis: -1 });
    const [pPast, pNew] = g.op('Split', [probs, m.cat([T, m.S])], { axis: 4 }, { outputs: 2 }) as [string, string];
    const ctx = g.op1('Add', [g.op1('MatMul', [ungrouped(pPast, T), pastV]), g.op1('MatMul', [ungrouped(pNew, m.S), vh])]);
    x = m.feedForward(m.finishAttention(x, headMajor(ctx), l), l);
  }
  const picked = g.op1('Gather', [x, rows], { axis: 0 });
  const normed = m.rmsNorm(picked, 'model.norm.weight');
  m.linear(normed, CLASSIFIER, IO.logits);
  g.output(IO.logits, DType.float, ['rows', s.vocabSize]);
  // The k best logits per row, best first (ties: lower id first, as ONNX specifies): a step
  // whose rows are all greedy or top-k fetches these instead of rows × vocab floats, which on
  // a GPU is the difference between copying kilobytes and megabytes to the host.
  const k = g.input(IO.topK, DType.int64, [1]);
  g.op('TopK', [IO.logits, k], { axis: -1, largest: 1, sorted: 1 }, { outputs: [IO.topKValues, IO.topKIndices] });
  g.output(IO.topKValues, DType.float, ['rows', 'k']);
  g.output(IO.topKIndices, DType.int64, ['rows', 'k']);
  return g.encode({ '': 17, 'com.microsoft': 1 }, { flavour: 'fast' });
}

/**
 * The Hugging Face / Optimum decoder interface, in standard ONNX operators only, so that
 * transformers.js and any ONNX Runtime build can run it: past keys and values go in, the
 * concatenated present comes out (a copy of the cache every step; that is the interface's cost).
 */
export function buildHfGraph(s: LlamaShape, weights: GraphWeights, opts: GraphOptions): Uint8Array {
  const m = new LlamaGraph('marginal_llama_hf', s, weights, opts, { batch: 'batch_size', seq: 'sequence_length' });
  const { g, hd } = m;
  const mask = g.input(IO.attentionMask, DType.int64, ['batch_size', 'total_sequence_length']);
  const T = g.op1('Slice', [g.op1('Shape', [mask]), g.constInt64([1]), g.constInt64([2])]);
  // [B, 1, 1, S, T]: key j is visible to new token i when j <= P + i (causal over the
  // concatenation past ++ new) and attention_mask[j] = 1.
  const zero = g.constInt64([0], true);
  const one = g.constInt64([1], true);
  const Ts = g.op1('Squeeze', [T, g.constInt64([0])]);
  const Ps = g.op1('Sub', [Ts, g.op1('Squeeze', [m.S, g.constInt64([0])])]);
  const keyPos = g.op1('Unsqueeze', [g.op1('Range', [zero, Ts, one]), g.constInt64([0])]);
  const queryPos = g.op1('Unsqueeze', [g.op1('Range', [Ps, Ts, one]), g.constInt64([1])]);
  const allowed = g.op1('And', [
    g.op1('LessOrEqual', [keyPos, queryPos]),
    g.op1('Unsqueeze', [g.op1('Cast', [mask], { to: DType.bool }), g.constInt64([1])]),
  ]);
  const bias = g.op1('Unsqueeze', [m.bias(allowed), g.constInt64([1, 2])]);
  const scale = g.constFloat([m.scale], true);

  let x = m.embed();
  for (let l = 0; l < s.nLayers; l++) {
    const h = m.rmsNorm(x, `model.layers.${l}.input_layernorm.weight`);
    const { q, k, v } = m.qkv(h, l);
    const pastDims = ['batch_size', s.nKvHeads, 'past_sequence_length', hd];
    const presentDims = ['batch_size', s.nKvHeads, 'total_sequence_length', hd];
    const pk = g.input(IO.pastKey(l), DType.float, pastDims);
    const pv = g.input(IO.pastValue(l), DType.float, pastDims);
    const presentK = g.op1('Concat', [pk, k], { axis: 2 }, { output: IO.presentKey(l) });
    const presentV = g.op1('Concat', [pv, v], { axis: 2 }, { output: IO.presentValue(l) });
    g.output(IO.presentKey(l), DType.float, presentDims);
    g.output(IO.presentValue(l), DType.float, presentDims);
    const scores = g.op1('Mul', [g.op1('MatMul', [q, g.op1('Transpose', [presentK], { perm: [0, 1, 3, 2] })]), scale]);
    const probs = g.op1('Softmax', [g.op1('Add', [m.grouped(scores, T), bias])], { axis: -1 });
    const ctx = g.op1('MatMul', [m.ungrouped(probs, T), presentV]);
    x = m.feedForward(m.finishAttention(x, ctx, l), l);
  }
  const normed = m.rmsNorm(x, 'model.norm.weight');
  const logits2d = m.linear(normed, CLASSIFIER);
  g.op1('Reshape', [logits2d, m.cat([m.B, m.S, g.constInt64([s.vocabSize])])], {}, { output: IO.logits });
  g.output(IO.logits, DType.float, ['batch_size', 'sequence_length', s.vocabSize]);
  // Standard operators only unless the weights are quantized (MatMulNBits is a contrib op).
  return g.encode(weights.quantized ? { '': 17, 'com.microsoft': 1 } : { '': 17 }, { flavour: 'hf' });
}
