import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { GGMLQuantizationType } from '@huggingface/gguf';
import { forcedLogProbs } from '../src/engine/evaluate.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { exportModelDir, type GgufWeightType } from '../src/models/gguf/export.js';
import { importGguf } from '../src/models/gguf/import.js';
import { kv, writeGguf } from '../src/models/gguf/writer.js';
import { importLlama2c } from '../src/models/importers.js';
import { loadModelDir, writeModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { renderChat } from '../src/server/chat.js';
import { KQUANT_FAMILY, LLAMA2_TOKENIZER, TEST_FAMILIES, testWeights, writeKQuantGguf, writeTestGguf, type TestFamily } from './helpers/gguf-models.js';
import { assertGreedyAgrees, greedy, llamaCpp, llamaCppGreedy, type LlamaCppRun } from './helpers/llamacpp.js';
import { stories260K, tempDir } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';

/**
 * How close marginal's next-token log-probabilities must come to llama.cpp's on the same GGUF,
 * along llama.cpp's own greedy continuation: the largest |Δ log p| over tokens llama.cpp gives
 * p > 0.001, and the largest KL(llama.cpp ‖ marginal) of any step. Measured on this CPU (AVX-512
 * VNNI): F32 1e-4 / 6e-5; F16 0.012 / 6e-5 and BF16 0.11 / 8e-4 (llama.cpp rounds activations to
 * the weights' precision, marginal widens the weights); Q8_0 0.28 / 0.013 and Q4_0 0.36 / 0.008
 * (both engines round activations to int8 per block of 32, each in its own way). Bounds are
 * about 3× those.
 */
const TOLERANCE: Record<GgufWeightType, { logp: number; kl: number }> = {
  f32: { logp: 2e-3, kl: 5e-4 },
  f16: { logp: 0.05, kl: 1e-3 },
  bf16: { logp: 0.35, kl: 5e-3 },
  q8_0: { logp: 0.9, kl: 0.05 },
  q4_0: { logp: 0.9, kl: 0.05 },
};
const TYPES: GgufWeightType[] = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0'];
const STEPS = 16;

interface Compared {
  maxLogp: number;
  maxKl: number;
}

/** marginal's distributions along llama.cpp's sequence, compared step by step with llama.cpp's. */
async function compare(model: LoadedModel, ref: LlamaCppRun): Promise<Compared> {
  const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 1, intraOpThreads: 1 });
  let maxLogp = 0;
  let maxKl = 0;
  try {
    await forcedLogProbs(engine, [[...ref.prompt, ...ref.greedy]], (_, pos, row) => {
      const step = pos - (ref.prompt.length - 1);
      const p = ref.probs[step];
      if (p === undefined) return;
      let kl = 0;
      for (let t = 0; t < p.length; t++) {
        const pt = p[t] as number;
        if (pt > 1e-3) maxLogp = Math.max(maxLogp, Math.abs(Math.log(pt) - (row[t] as number)));
        if (pt > 0) kl += pt * (Math.log(pt) - (row[t] as number));
      }
      maxKl = Math.max(maxKl, kl);
    });
  } finally {
    await engine.dispose();
  }
  return { maxLogp, maxKl };
}

after(async () => (await llamaCpp()).dispose());

describe('GGUF import: every architecture × weight type against llama.cpp', { skip: sharedSkipReason() }, () => {
  for (const family of TEST_FAMILIES) {
    describe(family.name, () => {
      for (const type of TYPES) {
        test(`${type}: prompt tokens, logits and greedy text match llama.cpp`, async () => {
          const dir = tempDir(`gguf-${family.name}-${type}`);
          const file = join(dir, `${family.name}-${type}.gguf`);
          writeTestGguf(file, family, type);
          const ref = await llamaCppGreedy(file, family.prompt, STEPS);
          await importGguf(file, join(dir, 'model'), { flavours: ['fast'] });
          const model = await loadModelDir(join(dir, 'model'));
          assert.deepEqual(model.tokenizer.encode(family.prompt, { bos: model.addBos }), ref.prompt, 'prompt tokens');
          const c = await compare(model, ref);
          const tol = TOLERANCE[type];
          assert.ok(c.maxLogp < tol.logp, `max |Δ log p| ${c.maxLogp} ≥ ${tol.logp}`);
          assert.ok(c.maxKl < tol.kl, `max KL ${c.maxKl} ≥ ${tol.kl}`);
          const mine = await greedy(model, ref.prompt, STEPS);
          assertGreedyAgrees(mine, ref, model.stopIds, type === 'f32' || type === 'f16' ? 0 : 2 * tol.logp, `${family.name} ${type}`);
          const expected = type === 'q8_0' ? 'q8' : type === 'q4_0' ? 'q4' : 'fp32';
          assert.equal(model.quantization, expected);
          rmSync(dir, { recursive: true, force: true });
        });
      }
    });
  }

  // K-quants are dequantized (ggml's dequantize_row_q*_K) and stored as q8 by default. llama.cpp
  // multiplies them with activations rounded per 256 values (Q8_K), coarser than Q8_0's 32:
  // measured up to |Δ log p| 2.5 and KL 0.16 (Q4_K_M-like) and 1.2 / 0.035 (Q5_K) on this CPU.
  for (const [kind, tol] of [['q4_K_M', { logp: 6, kl: 0.5 }], ['q5_K', { logp: 3, kl: 0.15 }]] as const) {
    test(`${kind}-style file: dequantized K-quants give llama.cpp's logits and greedy text`, async () => {
      const dir = tempDir(`gguf-${kind}`);
      const file = join(dir, `${kind}.gguf`);
      writeKQuantGguf(file, kind);
      const ref = await llamaCppGreedy(file, KQUANT_FAMILY.prompt, STEPS);
      const lines: string[] = [];
      await importGguf(file, join(dir, 'model'), { flavours: ['fast'], log: (l) => lines.push(l) });
      assert.match(lines.join('\n'), kind === 'q5_K' ? /16 Q5_K tensor\(s\) dequantized and stored as q8/ : /11 Q4_K, 5 Q6_K tensor\(s\) dequantized and stored as q8/);
      const model = await loadModelDir(join(dir, 'model'));
      assert.equal(model.quantization, 'q8');
      const c = await compare(model, ref);
      assert.ok(c.maxLogp < tol.logp, `max |Δ log p| ${c.maxLogp}`);
      assert.ok(c.maxKl < tol.kl, `max KL ${c.maxKl}`);
      assertGreedyAgrees(await greedy(model, ref.prompt, STEPS), ref, model.stopIds, tol.logp / 4, kind);
      rmSync(dir, { recursive: true, force: true });
    });
  }

  test("a Q4_0 file with llama-quantize's Q6_K classifier keeps its projections q4 and stores the classifier as q8", async () => {
    const dir = tempDir('gguf-q4_0-q6k');
    const file = join(dir, 'q4_0.gguf');
    writeKQuantGguf(file, 'q4_0_Q6_K');
    const ref = await llamaCppGreedy(file, KQUANT_FAMILY.prompt, STEPS);
    const lines: string[] = [];
    await importGguf(file, join(dir, 'model'), { flavours: ['fast'], log: (l) => lines.push(l) });
    assert.match(lines.join('\n'), /1 Q6_K tensor\(s\) dequantized and stored as q8/);
    assert.doesNotMatch(lines.join('\n'), /requantized/);
    const model = await loadModelDir(join(dir, 'model'));
    assert.equal(model.quantization, 'q4 (classifier q8)');
    // Measured 0.84 / 0.054 on this CPU: llama.cpp multiplies the Q6_K classifier with
    // activations rounded per 256 values, marginal's q8 copy of it per 32.
    const c = await compare(model, ref);
    assert.ok(c.maxLogp < 2.5, `max |Δ log p| ${c.maxLogp}`);
    assert.ok(c.maxKl < 0.15, `max KL ${c.maxKl}`);
    assertGreedyAgrees(await greedy(model, ref.prompt, STEPS), ref, model.stopIds, 0.75, 'q4_0 + Q6_K');
    rmSync(dir, { recursive: true, force: true });
  });

  test('Q4_0 weights load as Q4_0: marginal sits by llama.cpp Q4_0, far from its F32', async () => {
    const family = TEST_FAMILIES[0] as TestFamily;
    const dir = tempDir('gguf-q4-vs-f32');
    const f32 = join(dir, 'f32.gguf');
    const q4 = join(dir, 'q4.gguf');
    writeTestGguf(f32, family, 'f32');
    writeTestGguf(q4, family, 'q4_0');
    const refF32 = await llamaCppGreedy(f32, family.prompt, 1);
    const refQ4 = await llamaCppGreedy(q4, family.prompt, 1);
    await importGguf(q4, join(dir, 'model'), { flavours: ['fast'] });
    const model = await loadModelDir(join(dir, 'model'));
    const toQ4 = await compare(model, refQ4);
    const toF32 = await compare(model, { ...refF32, greedy: refQ4.greedy });
    assert.ok(toF32.maxKl > 20 * toQ4.maxKl, `KL to llama.cpp Q4_0 ${toQ4.maxKl}, to its F32 ${toF32.maxKl}`);
  });

  test("the chat template and special tokens come from the file: rendered chats tokenize as llama.cpp's", async () => {
    const l = await llamaCpp();
    for (const family of TEST_FAMILIES) {
      const dir = tempDir(`gguf-chat-${family.name}`);
      const file = join(dir, 'm.gguf');
      writeTestGguf(file, family, 'q8_0');
      await importGguf(file, join(dir, 'model'), { flavours: ['fast'] });
      const model = await loadModelDir(join(dir, 'model'));
      assert.equal(model.chatTemplate, family.tokenizer()['tokenizer.chat_template']?.value, family.name);
      const chat = renderChat(model, [{ role: 'user', content: 'Tell me a story' }]);
      const mine = model.tokenizer.encode(chat.prompt, { bos: model.addBos && !chat.hasBos });
      const ref = await l.loadModel({ modelPath: file, vocabOnly: true });
      try {
        const theirs = ref.tokenize(chat.prompt, true).map(Number);
        if (ref.tokens.shouldPrependBosToken && theirs[0] !== ref.tokens.bos) theirs.unshift(Number(ref.tokens.bos));
        assert.deepEqual(mine, theirs, `${family.name}: ${JSON.stringify(chat.prompt)}`);
      } finally {
        await ref.dispose();
      }
      const specials = mine.filter((id) => model.tokenizer.tokenBytes(id, -1).length === 0);
      assert.ok(family.name === 'mistral' || family.name === 'llama2' || specials.length >= 2, `${family.name}: the template's control tokens are single tokens`);
    }
  });

  test('a file that says architecture "mistral" is read as llama.cpp reads Mistral models (llama)', async () => {
    const family = TEST_FAMILIES.find((f) => f.name === 'mistral') as TestFamily;
    const dir = tempDir('gguf-mistral-arch');
    writeTestGguf(join(dir, 'llama.gguf'), family, 'q8_0');
    writeTestGguf(join(dir, 'mistral.gguf'), family, 'q8_0', 'mistral');
    await importGguf(join(dir, 'llama.gguf'), join(dir, 'a'), { flavours: ['fast'] });
    await importGguf(join(dir, 'mistral.gguf'), join(dir, 'b'), { flavours: ['fast'] });
    const a = await loadModelDir(join(dir, 'a'));
    const b = await loadModelDir(join(dir, 'b'));
    assert.equal(b.architecture, 'mistral');
    const prompt = a.tokenizer.encode(family.prompt, { bos: true });
    assert.deepEqual(await greedy(b, prompt, 12), await greedy(a, prompt, 12));
  });

  test('unsupported files are refused by name before anything is written', async () => {
    const dir = tempDir('gguf-refuse');
    const base = (arch: string) => ({
      'general.architecture': kv.str(arch),
      [`${arch}.context_length`]: kv.u32(64),
      [`${arch}.embedding_length`]: kv.u32(32),
      [`${arch}.block_count`]: kv.u32(1),
      [`${arch}.feed_forward_length`]: kv.u32(64),
      [`${arch}.attention.head_count`]: kv.u32(2),
      [`${arch}.attention.layer_norm_rms_epsilon`]: kv.f32(1e-5),
    });
    const f32 = (name: string, ne: number[]) => ({ name, ne, type: GGMLQuantizationType.F32, data: () => new Uint8Array(ne.reduce((a, b) => a * b, 1) * 4) });
    const cases: [string, Parameters<typeof writeGguf>[1], Parameters<typeof writeGguf>[2], RegExp][] = [
      ['gemma.gguf', base('gemma2'), [f32('token_embd.weight', [32, 8])], /GGUF architecture "gemma2" is not supported \(supported: llama, mistral, qwen2\)/],
      [
        'q2k.gguf',
        { ...base('llama') },
        [f32('token_embd.weight', [256, 8]), { name: 'output.weight', ne: [256, 8], type: GGMLQuantizationType.Q2_K, data: () => new Uint8Array(8 * 84) }],
        /tensor output\.weight is Q2_K; marginal reads F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K/,
      ],
      ['yarn.gguf', { ...base('llama'), 'llama.rope.scaling.type': kv.str('yarn') }, [f32('token_embd.weight', [32, 8])], /rope scaling "yarn"/],
      [
        'pre.gguf',
        { ...base('llama'), 'tokenizer.ggml.model': kv.str('gpt2'), 'tokenizer.ggml.pre': kv.str('deepseek-llm'), 'tokenizer.ggml.tokens': kv.strs(['a', 'b']), 'tokenizer.ggml.merges': kv.strs([]), 'tokenizer.ggml.eos_token_id': kv.u32(0) },
        [f32('token_embd.weight', [32, 2]), f32('output_norm.weight', [32])],
        /GGUF pre-tokenizer "deepseek-llm" is not supported/,
      ],
    ];
    for (const [name, md, tensors, message] of cases) {
      const file = join(dir, name);
      writeGguf(file, md, tensors);
      await assert.rejects(importGguf(file, join(dir, `out-${name}`)), (e: Error & { code?: string }) => {
        assert.match(e.message, message);
        assert.ok(e.code === 'MARGINAL_UNSUPPORTED_MODEL', `${name}: ${e.code}`);
        return true;
      });
    }
    await assert.rejects(importGguf(join(dir, 'missing.gguf'), join(dir, 'x')), { code: 'MARGINAL_CHECKPOINT_FORMAT' });
  });
});

describe('GGUF export of a model directory', { skip: sharedSkipReason() }, () => {
  test('stories260K as an F32 GGUF: llama.cpp writes the llama2.c reference text', async () => {
    const dir = tempDir('gguf-export');
    importLlama2c(stories260K.checkpoint, stories260K.tokenizer, join(dir, 'fp32'), { flavours: ['fast'] });
    exportModelDir(join(dir, 'fp32'), join(dir, 'f32.gguf'), 'f32');
    const run = await llamaCppGreedy(join(dir, 'f32.gguf'), 'Zoo', 57);
    const tok = (await loadModelDir(join(dir, 'fp32'))).tokenizer;
    assert.equal(tok.decode([...run.prompt, ...run.greedy]), stories260K.referenceZoo);
    rmSync(dir, { recursive: true, force: true });
  });

  test("--quantize picks marginal's own larger blocks for float weights; a GGUF's Q8_0 blocks stay 32 and exact", async () => {
    const dir = tempDir('gguf-blocks');
    const base = TEST_FAMILIES[0] as TestFamily;
    // Rows 128 and 384 wide: 128 is the largest block that divides both.
    const family: TestFamily = { ...base, shape: { ...base.shape, hiddenDim: 384 } };
    const blockSize = (out: string) => (JSON.parse(readFileSync(join(dir, out, 'marginal.json'), 'utf8')) as { quantization: { blockSize: number } }).quantization.blockSize;
    const write = (out: string, quantize: { weights: 'q8' | 'q4'; blockSize?: number }) =>
      writeModelDir({ dir: join(dir, out), name: 'm', shape: family.shape, weights: testWeights(family.shape), tokenizer: readFileSync(LLAMA2_TOKENIZER), synthetic: true, description: 'test', flavours: ['fast'], quantize });
    write('q8', { weights: 'q8' });
    write('q4', { weights: 'q4' });
    write('q8-32', { weights: 'q8', blockSize: 32 });
    assert.equal(blockSize('q8'), 128);
    assert.equal(blockSize('q4'), 128);
    assert.equal(blockSize('q8-32'), 32);
    assert.equal((await loadModelDir(join(dir, 'q8'))).quantization, 'q8 (blocks of 128)');

    writeTestGguf(join(dir, 'q8_0.gguf'), family, 'q8_0');
    writeTestGguf(join(dir, 'f32.gguf'), family, 'f32');
    const lines: string[] = [];
    await importGguf(join(dir, 'q8_0.gguf'), join(dir, 'from-q8_0'), { flavours: ['fast'], log: (l) => lines.push(l) });
    await importGguf(join(dir, 'f32.gguf'), join(dir, 'from-f32'), { flavours: ['fast'], quantize: { weights: 'q8' } });
    assert.equal(blockSize('from-q8_0'), 32);
    assert.doesNotMatch(lines.join('\n'), /requantized/);
    assert.equal(blockSize('from-f32'), 128);

    const logged: string[] = [];
    exportModelDir(join(dir, 'q8'), join(dir, 'rounded.gguf'), 'q8_0', { log: (l) => logged.push(l) });
    assert.match(logged.join('\n'), /holds blocks of 128; GGUF's Q8_0\/Q4_0 hold 32, so its blocks are rounded again/);
    rmSync(dir, { recursive: true, force: true });
  });

  for (const [format, type] of [['q8', 'q8_0'], ['q4', 'q4_0']] as const) {
    test(`a ${format} directory in blocks of 32 exports its blocks unchanged: the same file as quantizing its float32 original to ${type}`, () => {
      const dir = tempDir(`gguf-export-${format}`);
      const family = TEST_FAMILIES[0] as TestFamily;
      const write = (out: string, quantize?: { weights: 'q8' | 'q4'; blockSize: number }) =>
        writeModelDir({ dir: join(dir, out), name: 'm', shape: family.shape, weights: testWeights(family.shape), tokenizer: readFileSync(LLAMA2_TOKENIZER), synthetic: true, description: 'test', flavours: ['fast'], ...(quantize ? { quantize } : {}) });
      write('fp32');
      write(format, { weights: format, blockSize: 32 });
      exportModelDir(join(dir, format), join(dir, 'a.gguf'), type);
      exportModelDir(join(dir, 'fp32'), join(dir, 'b.gguf'), type);
      assert.ok(readFileSync(join(dir, 'a.gguf')).equals(readFileSync(join(dir, 'b.gguf'))));
      rmSync(dir, { recursive: true, force: true });
    });
  }
});

