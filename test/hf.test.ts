import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { forcedLogProbs } from '../src/engine/evaluate.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { importGguf } from '../src/models/gguf/import.js';
import { importHf } from '../src/models/hf/import.js';
import { loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { TEST_FAMILIES, writeTestGguf, type TestFamily } from './helpers/gguf-models.js';
import { writeHfFolder } from './helpers/hf-folder.js';
import { assertGreedyAgrees, greedy, llamaCpp, llamaCppGreedy } from './helpers/llamacpp.js';
import { tempDir } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';

/** Every position's log-probabilities over `tokens`, flattened. */
async function logProbs(model: LoadedModel, tokens: number[]): Promise<Float32Array> {
  const V = model.vocabSize;
  const out = new Float32Array(tokens.length * V);
  const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 1, intraOpThreads: 1 });
  try {
    await forcedLogProbs(engine, [tokens], (_, pos, row) => out.set(row, pos * V));
  } finally {
    await engine.dispose();
  }
  return out;
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs((a[i] as number) - (b[i] as number)));
  return d;
}

/**
 * A Hugging Face folder written from the same weights as a GGUF (Q and K in rotate-half order
 * there, interleaved in the llama GGUFs) gives the same logits through `import hf` as the GGUF
 * through `import gguf`: float32 against F32, F16 against F16, BF16 against BF16, and with
 * --quantize q8 / q4 --block-size 32 against Q8_0 / Q4_0 (the same blocks, rows reordered); and its greedy text
 * is llama.cpp's on that GGUF.
 */
after(async () => (await llamaCpp()).dispose());

describe('safetensors import gives the GGUF route’s logits', { skip: sharedSkipReason() }, () => {
  for (const family of TEST_FAMILIES) {
    for (const [dtype, gguf, quantize] of [
      ['F32', 'f32', undefined],
      ['F16', 'f16', undefined],
      ['BF16', 'bf16', undefined],
      ['F32', 'q8_0', 'q8'],
      ['F32', 'q4_0', 'q4'],
    ] as const) {
      test(`${family.name}: ${dtype} safetensors${quantize ? ` --quantize ${quantize}` : ''} = GGUF ${gguf.toUpperCase()}`, async () => {
        const dir = tempDir(`hf-${family.name}-${gguf}`);
        writeHfFolder(join(dir, 'hf'), family, dtype);
        writeTestGguf(join(dir, 'm.gguf'), family, gguf);
        importHf(join(dir, 'hf'), join(dir, 'from-hf'), { flavours: ['fast'], ...(quantize ? { quantize: { weights: quantize, blockSize: 32 } } : {}) });
        await importGguf(join(dir, 'm.gguf'), join(dir, 'from-gguf'), { flavours: ['fast'] });
        const hf = await loadModelDir(join(dir, 'from-hf'));
        const gg = await loadModelDir(join(dir, 'from-gguf'));
        assert.equal(hf.architecture, family.name === 'mistral' ? 'mistral' : family.architecture);
        assert.equal(hf.quantization, quantize ?? 'fp32');
        const tokens = hf.tokenizer.encode(family.prompt, { bos: hf.addBos });
        assert.deepEqual(gg.tokenizer.encode(family.prompt, { bos: gg.addBos }), tokens);
        const d = maxDiff(await logProbs(hf, tokens), await logProbs(gg, tokens));
        assert.ok(d < 1e-3, `largest log-probability difference ${d}`);
        // And the greedy text is llama.cpp's on the GGUF, up to the near-ties test/gguf.test.ts allows per type.
        const ref = await llamaCppGreedy(join(dir, 'm.gguf'), family.prompt, 12);
        assert.deepEqual(tokens, ref.prompt);
        assertGreedyAgrees(await greedy(hf, tokens, 12), ref, hf.stopIds, quantize ? 1.8 : dtype === 'BF16' ? 0.7 : 0, `${family.name} ${dtype}${quantize ? ` ${quantize}` : ''}`);
        rmSync(dir, { recursive: true, force: true });
      });
    }
  }

  test('the chat template travels from tokenizer_config.json', async () => {
    const family = TEST_FAMILIES.find((f) => f.name === 'qwen2') as TestFamily;
    const dir = tempDir('hf-template');
    writeHfFolder(join(dir, 'hf'), family);
    importHf(join(dir, 'hf'), join(dir, 'm'), { flavours: ['fast'] });
    const model = await loadModelDir(join(dir, 'm'));
    assert.match(model.chatTemplate ?? '', /<\|im_start\|>/);
    assert.ok(model.stopIds.includes(model.tokenizer.encode('<|im_end|>')[0] as number));
    rmSync(dir, { recursive: true, force: true });
  });

  test('unsupported checkpoints are refused by name', () => {
    const family = TEST_FAMILIES[0] as TestFamily;
    const dir = tempDir('hf-refuse');
    writeHfFolder(join(dir, 'hf'), family);
    const config = (patch: Record<string, unknown>) => {
      const base = { architectures: ['LlamaForCausalLM'], hidden_size: 128, intermediate_size: 352, num_hidden_layers: 2, num_attention_heads: 4, vocab_size: 32000, max_position_embeddings: 256 };
      writeFileSync(join(dir, 'hf', 'config.json'), JSON.stringify({ ...base, ...patch }));
    };
    config({ architectures: ['GemmaForCausalLM'] });
    assert.throws(() => importHf(join(dir, 'hf'), join(dir, 'a')), { code: 'MARGINAL_UNSUPPORTED_MODEL', message: /Hugging Face architecture "GemmaForCausalLM" is not supported/ });
    config({ rope_scaling: { rope_type: 'yarn', factor: 4 } });
    assert.throws(() => importHf(join(dir, 'hf'), join(dir, 'b')), { code: 'MARGINAL_UNSUPPORTED_MODEL', message: /rope scaling "yarn"/ });
    rmSync(join(dir, 'hf', 'model.safetensors.index.json'));
    assert.throws(() => importHf(join(dir, 'hf'), join(dir, 'c')), { code: 'MARGINAL_CHECKPOINT_FORMAT', message: /neither model\.safetensors nor/ });
    rmSync(dir, { recursive: true, force: true });
  });
});
