import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import OpenAI from 'openai';
import { loadModelDir } from '../src/models/modeldir.js';
import { renderChat } from '../src/server/chat.js';
import { TEST_FAMILIES, writeTestGguf, type TestFamily } from './helpers/gguf-models.js';
import { writeHfFolder } from './helpers/hf-folder.js';
import { tempDir } from './helpers/models.js';
import { startServe } from './helpers/serve.js';
import { sharedSkipReason } from './helpers/shared.js';

interface ModelCard {
  id: string;
  architecture: string;
  quantization: string;
  context_length: number;
}

/** `marginal serve --model X` twice: the first run imports into the store, the second reuses it. */
async function serveTwice(model: string, store: string, check: (client: OpenAI, card: ModelCard) => Promise<void>): Promise<string[]> {
  const logs: string[] = [];
  for (let run = 0; run < 2; run++) {
    const server = await startServe(['--model', model, '--max-sequences', '2'], { env: { MARGINAL_MODEL_STORE: store }, waitMs: 120_000 });
    try {
      const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
      await check(client, (await client.models.list()).data[0] as unknown as ModelCard);
    } finally {
      await server.stop();
      logs.push(server.log());
    }
  }
  return logs;
}

const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, MARGINAL_PROVIDERS: 'cpu' } });

describe('import gguf and import hf on the command line', { skip: sharedSkipReason() }, () => {
  test('import gguf --quantize q4 --max-context 128 writes a q4 model with the capped context; a bad file exits 2 naming the problem', () => {
    const dir = tempDir('cli-gguf');
    const family = TEST_FAMILIES.find((f) => f.name === 'llama3') as TestFamily;
    writeTestGguf(join(dir, 'm.gguf'), family, 'q8_0');
    const r = run('import', 'gguf', join(dir, 'm.gguf'), '--out', join(dir, 'out'), '--quantize', 'q4', '--max-context', '128');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /requantized/);
    assert.match(r.stderr, /context capped at 128 tokens/);
    const config = JSON.parse(readFileSync(join(dir, 'out', 'marginal.json'), 'utf8')) as { quantization: { label: string }; shape: { maxSeqLen: number; ropeFreqFactors?: number[] }; architecture: string };
    assert.equal(config.quantization.label, 'q4');
    assert.equal(config.shape.maxSeqLen, 128);
    assert.equal(config.shape.ropeFreqFactors?.length, 8);
    const g = run('generate', '--model', join(dir, 'out'), '--prompt', 'Once upon a time', '--max-tokens', '4', '--temperature', '0');
    assert.equal(g.status, 0, g.stderr);
    writeTestGguf(join(dir, 'bad.gguf'), family, 'f32', 'phi3');
    const bad = run('import', 'gguf', join(dir, 'bad.gguf'), '--out', join(dir, 'bad'));
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /GGUF architecture "phi3" is not supported/);
    rmSync(dir, { recursive: true, force: true });
  });

  test('import hf writes the checkpoint as a model directory', () => {
    const dir = tempDir('cli-hf');
    writeHfFolder(join(dir, 'hf'), TEST_FAMILIES.find((f) => f.name === 'qwen2') as TestFamily);
    const r = run('import', 'hf', join(dir, 'hf'), '--out', join(dir, 'out'), '--quantize', 'q8');
    assert.equal(r.status, 0, r.stderr);
    // Rows 128 and 320 wide: blocks of 64 are the largest that divide both.
    assert.match(r.stderr, /wrote hf \(Hugging Face Qwen2ForCausalLM checkpoint hf; .*q8 \(blocks of 64\) weights\)/);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('serve --model FILE.gguf | HF_DIR', { skip: sharedSkipReason() }, () => {
  test('a GGUF is imported into the store once, then served with its chat template; /v1/models reports architecture, quantization, context', async () => {
    const family = TEST_FAMILIES.find((f) => f.name === 'qwen2') as TestFamily;
    const dir = tempDir('store-gguf');
    const file = join(dir, 'qwen2-test-q8_0.gguf');
    writeTestGguf(file, family, 'q8_0');
    const store = join(dir, 'store');
    const logs = await serveTwice(file, store, async (client, card) => {
      assert.deepEqual([card.id, card.architecture, card.quantization, card.context_length], ['test-qwen2', 'qwen2', 'q8', 256]);
      const messages = [{ role: 'user' as const, content: 'Tell me a story' }];
      const r = await client.chat.completions.create({ model: card.id, messages, max_tokens: 6, temperature: 0 });
      // The prompt is the file's ChatML template: its control tokens are single tokens.
      const model = await loadModelDir(join(store, readdirSync(store)[0] as string));
      const prompt = renderChat(model, messages).prompt;
      assert.match(prompt, /^<\|im_start\|>user\nTell me a story<\|im_end\|>\n<\|im_start\|>assistant\n$/);
      assert.equal(r.usage?.prompt_tokens, model.tokenizer.encode(prompt).length);
      assert.ok((r.usage?.completion_tokens ?? 0) >= 1);
    });
    assert.match(logs[0] as string, /importing .*qwen2-test-q8_0\.gguf/);
    assert.match(logs[1] as string, /imported from .* before/);
    assert.equal(readdirSync(store).length, 1);
    rmSync(dir, { recursive: true, force: true });
  });

  test('a Hugging Face safetensors folder is imported the same way', async () => {
    const family = TEST_FAMILIES.find((f) => f.name === 'llama3') as TestFamily;
    const dir = tempDir('store-hf');
    writeHfFolder(join(dir, 'Llama-3-test'), family);
    const logs = await serveTwice(join(dir, 'Llama-3-test'), join(dir, 'store'), async (client, card) => {
      assert.deepEqual([card.id, card.architecture, card.quantization, card.context_length], ['Llama-3-test', 'llama', 'fp32', 256]);
      const r = await client.completions.create({ model: card.id, prompt: 'Once upon a time', max_tokens: 4, temperature: 0 });
      assert.ok(r.choices[0]?.text !== undefined);
    });
    assert.match(logs[0] as string, /importing/);
    assert.match(logs[1] as string, /before/);
    rmSync(dir, { recursive: true, force: true });
  });

  test('a GGUF marginal cannot run fails the server at start with the reason', async () => {
    const dir = tempDir('store-bad');
    const file = join(dir, 'bad.gguf');
    writeTestGguf(file, TEST_FAMILIES[0] as TestFamily, 'f32', 'gemma2');
    // The server logs JSON lines, so the quotes may arrive escaped.
    await assert.rejects(startServe(['--model', file], { env: { MARGINAL_MODEL_STORE: join(dir, 'store') } }), /exited with 2:[^]*GGUF architecture \\?"gemma2\\?" is not supported/);
    const store = join(dir, 'store');
    assert.ok(!existsSync(store) || readdirSync(store).length === 0, 'nothing left in the store');
    rmSync(dir, { recursive: true, force: true });
  });
});
