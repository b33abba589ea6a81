/** The hyper-parameters of a Llama-architecture decoder (llama2.c's Config plus what it implies). */
export interface LlamaShape {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  maxSeqLen: number;
  normEps: number;
  ropeTheta: number;
  /** Whether the classifier reuses the token embedding (llama2.c: positive vocab_size in the header). */
  sharedClassifier: boolean;
  /** Head size where it is not dim / nHeads (GGUF attention.key_length, Hugging Face head_dim). */
  headDim?: number;
  /**
   * How rotary pairs are laid out in a head: `interleaved` rotates (0,1), (2,3)… (llama2.c,
   * GGUF llama, whose converter permutes Q and K into this order); `half` rotates (i, i + hd/2)
   * (Hugging Face's rotate_half, GGUF qwen2's NeoX rope). Default interleaved.
   */
  rope?: RopeLayout;
  /** Per-pair divisors of the rotary frequencies (Llama 3 and linear scaling; GGUF rope_freqs). */
  ropeFreqFactors?: number[];
  /** Q, K and V projections carry biases (Qwen2). */
  qkvBias?: boolean;
}

export type RopeLayout = 'interleaved' | 'half';

export function headDim(s: LlamaShape): number {
  return s.headDim ?? s.dim / s.nHeads;
}

export function checkShape(s: LlamaShape): string | undefined {
  const ints: (keyof LlamaShape)[] = ['dim', 'hiddenDim', 'nLayers', 'nHeads', 'nKvHeads', 'vocabSize', 'maxSeqLen'];
  for (const k of ints) {
    const v = s[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) return `${k} must be a positive integer, got ${String(v)}`;
  }
  if (s.headDim === undefined && s.dim % s.nHeads !== 0) return `dim ${s.dim} is not divisible by n_heads ${s.nHeads}`;
  if (s.headDim !== undefined && (!Number.isInteger(s.headDim) || s.headDim <= 0)) return `headDim must be a positive integer, got ${String(s.headDim)}`;
  if (s.nHeads % s.nKvHeads !== 0) return `n_heads ${s.nHeads} is not divisible by n_kv_heads ${s.nKvHeads}`;
  if (headDim(s) % 2 !== 0) return `head size ${headDim(s)} must be even for rotary embeddings`;
  if (s.rope !== undefined && s.rope !== 'interleaved' && s.rope !== 'half') return `rope must be interleaved or half, got ${String(s.rope)}`;
  if (s.ropeFreqFactors !== undefined && s.ropeFreqFactors.length !== headDim(s) / 2) {
    return `ropeFreqFactors has ${s.ropeFreqFactors.length} entries, the head needs ${headDim(s) / 2}`;
  }
  return undefined;
}

export interface WeightSpec {
  name: string;
  /** Row-major [out, in] for projections: llama2.c's layout, consumed by Gemm with transB=1. */
  dims: number[];
}

/** The model's tensors, named as Hugging Face Llama checkpoints name them. */
export function weightSpecs(s: LlamaShape): WeightSpec[] {
  const hd = headDim(s);
  const q = s.nHeads * hd;
  const kv = s.nKvHeads * hd;
  const specs: WeightSpec[] = [{ name: 'model.embed_tokens.weight', dims: [s.vocabSize, s.dim] }];
  const perLayer: [string, number[]][] = [
    ['input_layernorm.weight', [s.dim]],
    ['self_attn.q_proj.weight', [q, s.dim]],
    ['self_attn.k_proj.weight', [kv, s.dim]],
    ['self_attn.v_proj.weight', [kv, s.dim]],
    ['self_attn.o_proj.weight', [s.dim, q]],
    ['post_attention_layernorm.weight', [s.dim]],
    ['mlp.gate_proj.weight', [s.hiddenDim, s.dim]],
    ['mlp.down_proj.weight', [s.dim, s.hiddenDim]],
    ['mlp.up_proj.weight', [s.hiddenDim, s.dim]],
  ];
  if (s.qkvBias) perLayer.push(['self_attn.q_proj.bias', [q]], ['self_attn.k_proj.bias', [kv]], ['self_attn.v_proj.bias', [kv]]);
  for (let l = 0; l < s.nLayers; l++) {
    for (const [n, d] of perLayer) specs.push({ name: `model.layers.${l}.${n}`, dims: d });
  }
  specs.push({ name: 'model.norm.weight', dims: [s.dim] });
  if (!s.sharedClassifier) specs.push({ name: 'lm_head.weight', dims: [s.vocabSize, s.dim] });
  return specs;
}

export function classifierName(s: LlamaShape): string {
  return s.sharedClassifier ? 'model.embed_tokens.weight' : 'lm_head.weight';
}

/** Number of parameters, for the synthetic model's description and the benchmark's FLOP estimates. */
export function parameterCount(s: LlamaShape): number {
  return weightSpecs(s).reduce((n, w) => n + w.dims.reduce((a, b) => a * b, 1), 0);
}
