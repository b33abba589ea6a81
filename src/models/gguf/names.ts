import type { BlockTensor } from '../quant/ggml.js';

/**
 * Tensor names: Hugging Face's (marginal's weight specs) against llama.cpp's GGUF names
 * (gguf-py's tensor_mapping for the llama family).
 */
const LAYER: [hf: string, gguf: string][] = [
  ['input_layernorm.weight', 'attn_norm.weight'],
  ['self_attn.q_proj.weight', 'attn_q.weight'],
  ['self_attn.k_proj.weight', 'attn_k.weight'],
  ['self_attn.v_proj.weight', 'attn_v.weight'],
  ['self_attn.o_proj.weight', 'attn_output.weight'],
  ['self_attn.q_proj.bias', 'attn_q.bias'],
  ['self_attn.k_proj.bias', 'attn_k.bias'],
  ['self_attn.v_proj.bias', 'attn_v.bias'],
  ['post_attention_layernorm.weight', 'ffn_norm.weight'],
  ['mlp.gate_proj.weight', 'ffn_gate.weight'],
  ['mlp.down_proj.weight', 'ffn_down.weight'],
  ['mlp.up_proj.weight', 'ffn_up.weight'],
];
const GLOBAL: [string, string][] = [
  ['model.embed_tokens.weight', 'token_embd.weight'],
  ['model.norm.weight', 'output_norm.weight'],
  ['lm_head.weight', 'output.weight'],
];

export function ggufName(hf: string): string {
  for (const [h, g] of GLOBAL) if (h === hf) return g;
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  const entry = m ? LAYER.find(([h]) => h === m[2]) : undefined;
  if (!m || !entry) throw new RangeError(`no GGUF name for ${hf}`);
  return `blk.${m[1]}.${entry[1]}`;
}

/** Whether a tensor's rows are Q or K head rows, which the rope layout orders. */
export function isRopeRows(hf: string): boolean {
  return /\.self_attn\.[qk]_proj\.(weight|bias)$/.test(hf);
}

/**
 * Row order of the Q and K projections between the two rope layouts: within each head,
 * interleaved row 2i + j is rotate-half row j·hd/2 + i (llama.cpp's convert_hf_to_gguf
 * `permute`, and its inverse). `toInterleaved` maps half → interleaved.
 */
export function ropeRowOrder(rows: number, headDim: number, toInterleaved: boolean): Int32Array {
  const order = new Int32Array(rows);
  const half = headDim / 2;
  for (let r = 0; r < rows; r++) {
    const head = Math.floor(r / headDim);
    const k = r % headDim;
    // Destination row r takes source row order[r].
    const src = toInterleaved ? (k % 2) * half + Math.floor(k / 2) : 2 * (k % half) + Math.floor(k / half);
    order[r] = head * headDim + src;
  }
  return order;
}

/** A [rows, cols] tensor (float32 or blocks; a bias is [rows, 1]) with its rows put in `order`. */
export function permuteRows<T extends Float32Array | BlockTensor>(value: T, order: Int32Array): T {
  if (value instanceof Float32Array) {
    const cols = value.length / order.length;
    const out = new Float32Array(value.length);
    for (let r = 0; r < order.length; r++) out.set(value.subarray((order[r] as number) * cols, ((order[r] as number) + 1) * cols), r * cols);
    return out as T;
  }
  const t = value as BlockTensor;
  const rowBytes = t.blocks.length / t.rows;
  const blocks = new Uint8Array(t.blocks.length);
  for (let r = 0; r < order.length; r++) blocks.set(t.blocks.subarray((order[r] as number) * rowBytes, ((order[r] as number) + 1) * rowBytes), r * rowBytes);
  return { ...t, blocks } as T;
}
