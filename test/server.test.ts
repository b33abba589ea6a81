import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { Generator } from '../src/serving/generator.js';
import { loadModelDir } from '../src/models/modeldir.js';
import { buildServer } from '../src/server/app.js';
import { synthTiny } from './helpers/models.js';
import { testProviders } from './helpers/providers.js';

describe('HTTP server on a synthetic model', () => {
  let base: string;
  let client: OpenAI;
  let close: () => Promise<void>;

  before(async () => {
    const model = await loadModelDir(synthTiny());
    const engine = await OnnxEngine.create(model, { providers: testProviders(), maxSequences: 4 });
    const { app } = buildServer({ model, generator: new Generator(engine, model) });
    await app.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
    close = async () => {
      await app.close();
      await engine.dispose();
    };
  });
  after(async () => close());

  test('/v1/models says the model is synthetic and its text meaningless', async () => {
    const list = await client.models.list();
    const m = list.data[0] as unknown as { id: string; synthetic: boolean; description: string };
    assert.equal(m.id, 'synthetic-tiny');
    assert.equal(m.synthetic, true);
    assert.match(m.description, /meaningless/);
  });

  test('completions, plain and streamed, give the same seeded text', async () => {
    const params = { model: 'synthetic-tiny', prompt: 'the cat', max_tokens: 12, temperature: 0.8, seed: 5 };
    const plain = await client.completions.create(params);
    assert.equal(plain.usage?.completion_tokens, 12);
    let streamed = '';
    let finish: string | null = null;
    for await (const chunk of await client.completions.create({ ...params, stream: true })) {
      streamed += chunk.choices[0]?.text ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(streamed, plain.choices[0]?.text);
    assert.equal(finish, 'length');
  });

  test('unknown model → 404, bad sampling → 400, both OpenAI-style', async () => {
    await assert.rejects(client.completions.create({ model: 'gpt-9', prompt: 'x' }), (e: InstanceType<typeof OpenAI.APIError>) => e.status === 404 && e.code === 'model_not_found');
    await assert.rejects(client.completions.create({ model: 'synthetic-tiny', prompt: 'x', temperature: 7 }), (e: InstanceType<typeof OpenAI.APIError>) => e.status === 400 && /temperature/.test(e.message));
    const res = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"prompt": ' });
    assert.equal(res.status, 400);
    const body = (await res.json()) as { error: { message: string; type: string } };
    assert.equal(body.error.type, 'invalid_request_error');
  });
});
