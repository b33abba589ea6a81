import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { Generator } from '../src/serving/generator.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { DirectDriver } from '../src/engine/direct.js';
import { WorkerEngine } from '../src/engine/worker-engine.js';
import type { Engine } from '../src/engine/types.js';
import { loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { Rng } from '../src/sampling/rng.js';
import { validateSamplingParams } from '../src/sampling/params.js';
import { buildServer, type Server } from '../src/server/app.js';
import { parseToolCalls } from '../src/server/tools.js';
import { importStories260K } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';

interface Live {
  server: Server;
  base: string;
  client: OpenAI;
  engine: Engine;
  close(): Promise<void>;
}

async function start(model: LoadedModel, engine: Engine): Promise<Live> {
  const generator = new Generator(engine, model, { policy: 'fcfs' });
  const server = buildServer({ model, generator });
  await server.app.listen({ host: '127.0.0.1', port: 0 });
  const base = `http://127.0.0.1:${(server.app.server.address() as AddressInfo).port}`;
  return {
    server,
    base,
    engine,
    client: new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 }),
    close: async () => {
      await server.drain();
      await engine.dispose();
    },
  };
}

async function post(base: string, path: string, body: object): Promise<{ status: number; json: any }> {
  const res = await fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, json: await res.json() };
}

/**
 * Reference: the model's raw logits at every position of `tokens`, from a separate engine fed one
 * token at a time (row i predicts tokens[i + 1]). Independent of the server and of prefill chunking.
 */
async function referenceLogits(model: LoadedModel, tokens: number[]): Promise<Float32Array[]> {
  const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 1, rankedCandidates: 0 });
  const greedy = validateSamplingParams({ temperature: 0 });
  const d = new DirectDriver(engine);
  d.open(0, greedy, new Rng(1));
  const rows: Float32Array[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const r = await d.step([[0, [tokens[i] as number], true]], true);
    rows.push((r.logits as Float32Array).slice());
  }
  await engine.dispose();
  return rows;
}

/** log_softmax(row)[id] in float64, written plainly: max, sum of exp, log. */
function logSoftmax(row: Float32Array, id: number): number {
  let max = -Infinity;
  for (const v of row) max = Math.max(max, v);
  let sum = 0;
  for (const v of row) sum += Math.exp(v - max);
  return row[id]! - max - Math.log(sum);
}

function topIds(row: Float32Array, k: number): number[] {
  return Array.from(row, (v, i) => [v, i] as const)
    .sort((a, b) => b[0] - a[0] || a[1] - b[1])
    .slice(0, k)
    .map((x) => x[1]);
}

/** Greedy decoding written out in the test: penalties applied to raw logits as vLLM defines them. */
function penalizedArgmax(row: Float32Array, prompt: number[], out: number[], p: { presence: number; frequency: number; repetition: number }): number {
  const counts = new Map<number, number>();
  for (const t of out) counts.set(t, (counts.get(t) ?? 0) + 1);
  const inPrompt = new Set(prompt);
  let best = -Infinity;
  let bi = 0;
  for (let i = 0; i < row.length; i++) {
    let v = row[i]!;
    const c = counts.get(i) ?? 0;
    if (inPrompt.has(i) || c > 0) v = v > 0 ? v / p.repetition : v * p.repetition;
    if (c > 0) v = v - p.frequency * c - p.presence;
    v = Math.fround(v);
    if (v > best) {
      best = v;
      bi = i;
    }
  }
  return bi;
}

describe('API parity on stories260K', { skip: sharedSkipReason() }, () => {
  let model: LoadedModel;
  let live: Live;
  before(async () => {
    model = await loadModelDir(importStories260K());
    live = await start(model, await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 8 }));
  });
  after(async () => live.close());

  test('routes: GET /v1/models/{id}, /tokenize, /detokenize, /version', async () => {
    const card = await live.client.models.retrieve('stories260K');
    assert.equal(card.id, 'stories260K');
    assert.equal((card as unknown as { max_model_len: number }).max_model_len, 512);
    const missing = await fetch(`${live.base}/v1/models/gpt-9`);
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { error: { param: string } }).error.param, 'model');

    const tok = await post(live.base, '/tokenize', { model: 'stories260K', prompt: 'Once upon a time' });
    assert.deepEqual(tok.json.tokens, model.tokenizer.encode('Once upon a time', { bos: true }));
    assert.equal(tok.json.count, tok.json.tokens.length);
    assert.equal(tok.json.max_model_len, 512);
    const noBos = await post(live.base, '/tokenize', { prompt: 'Once upon a time', add_special_tokens: false });
    assert.deepEqual(noBos.json.tokens, model.tokenizer.encode('Once upon a time'));
    const chat = await post(live.base, '/tokenize', { messages: [{ role: 'user', content: 'Hi' }] });
    assert.deepEqual(chat.json.tokens, model.tokenizer.encode('User: Hi\nAssistant:', { bos: true }));
    const detok = await post(live.base, '/detokenize', { tokens: tok.json.tokens });
    assert.equal(detok.json.prompt, 'Once upon a time');
    assert.equal((await post(live.base, '/detokenize', { tokens: [1, 99999] })).status, 400);
    assert.equal((await post(live.base, '/tokenize', { prompt: 'x', frobnicate: true })).status, 400);
    const noBosCompletion = await post(live.base, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 1, add_special_tokens: false });
    assert.equal(noBosCompletion.json.usage.prompt_tokens, model.tokenizer.encode('Once upon a time').length);
    const noGenPrompt = await post(live.base, '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], add_generation_prompt: false });
    assert.equal(noGenPrompt.status, 400);
    assert.equal(noGenPrompt.json.error.param, 'add_generation_prompt');
    const version = (await (await fetch(`${live.base}/version`)).json()) as { version: string };
    assert.match(version.version, /^\d+\.\d+\.\d+/);
  });

  test('completion logprobs equal log-softmax of the full logits, top alternatives included', async () => {
    const r = await live.client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 8, temperature: 0, logprobs: 3 });
    const lp = r.choices[0]!.logprobs!;
    const prompt = model.tokenizer.encode('Once upon a time', { bos: true });
    const generated = model.tokenizer.encode('Once upon a time' + r.choices[0]!.text, { bos: true }).slice(prompt.length);
    assert.equal(lp.token_logprobs!.length, 8);
    const rows = await referenceLogits(model, [...prompt, ...generated.slice(0, 7)]);
    for (let i = 0; i < 8; i++) {
      const row = rows[prompt.length - 1 + i]!;
      const [best] = topIds(row, 1);
      assert.ok(Math.abs(lp.token_logprobs![i]! - logSoftmax(row, best!)) < 1e-4, `position ${i}`);
      const top = lp.top_logprobs![i]!;
      const want = topIds(row, 3);
      assert.equal(Object.keys(top).length, 3);
      for (const id of want) {
        const text = new TextDecoder().decode(model.tokenizer.tokenBytes(id, i === 0 ? prompt[prompt.length - 1]! : -2));
        assert.ok(Math.abs(top[text]! - logSoftmax(row, id)) < 1e-4, `position ${i}: top token ${JSON.stringify(text)}`);
      }
    }
    assert.equal(lp.tokens!.join(''), r.choices[0]!.text);
    assert.equal(lp.text_offset![0], 0);
  });

  test("echo with logprobs answers lm-evaluation-harness's loglikelihood request", async () => {
    // local-completions' payload for a loglikelihood request, prompt as token ids.
    const ids = model.tokenizer.encode('Lily went to the park and saw a dog', { bos: true });
    const { status, json } = await post(live.base, '/v1/completions', { model: 'stories260K', prompt: [ids], temperature: 0, max_tokens: 1, logprobs: 1, seed: 1234, echo: true });
    assert.equal(status, 200, JSON.stringify(json));
    const lp = json.choices[0].logprobs;
    assert.equal(lp.token_logprobs.length, ids.length + 1);
    assert.equal(lp.token_logprobs[0], null);
    assert.equal(lp.top_logprobs[0], null);
    const rows = await referenceLogits(model, ids);
    let sum = 0;
    for (let p = 1; p < ids.length; p++) {
      const want = logSoftmax(rows[p - 1]!, ids[p]!);
      assert.ok(Math.abs(lp.token_logprobs[p] - want) < 1e-4, `prompt position ${p}: ${lp.token_logprobs[p]} vs ${want}`);
      sum += want;
      // is_greedy as lm-eval computes it: the token's logprob equals the best alternative's.
      const greedy = topIds(rows[p - 1]!, 1)[0] === ids[p];
      assert.equal(lp.token_logprobs[p] === Math.max(...(Object.values(lp.top_logprobs[p]) as number[])), greedy, `position ${p}`);
    }
    const ctxlen = 3;
    const got = (lp.token_logprobs as number[]).slice(ctxlen, -1).reduce((a, b) => a + b, 0);
    const want = rows.slice(ctxlen - 1, ids.length - 1).reduce((a, row, j) => a + logSoftmax(row, ids[ctxlen + j]!), 0);
    assert.ok(Math.abs(got - want) < 1e-3);
    assert.ok(Number.isFinite(sum));
    assert.ok(json.choices[0].text.startsWith(model.tokenizer.decode(ids)));
    // The same prompt again is a prefix-cache hit for plain requests, but echo computes it all again.
    const again = await post(live.base, '/v1/completions', { model: 'stories260K', prompt: [ids], temperature: 0, max_tokens: 1, logprobs: 1, echo: true });
    assert.deepEqual(again.json.choices[0].logprobs.token_logprobs, lp.token_logprobs);
  });

  test('chat logprobs, streamed and not, agree and carry top alternatives', async () => {
    const req = { model: 'stories260K', messages: [{ role: 'user' as const, content: 'Tell me about a cat.' }], max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 2 };
    const plain = await live.client.chat.completions.create(req);
    const content = plain.choices[0]!.logprobs!.content!;
    assert.equal(content.length, plain.usage!.completion_tokens);
    for (const e of content) {
      assert.equal(e.top_logprobs.length, 2);
      assert.equal(e.top_logprobs[0]!.logprob, e.logprob, 'greedy: the sampled token is the best');
      assert.ok(e.top_logprobs[1]!.logprob <= e.logprob);
      assert.deepEqual(Buffer.from(e.bytes!).toString('utf8'), e.token);
    }
    assert.equal(content.map((e) => e.token).join(''), plain.choices[0]!.message.content);
    const streamed: typeof content = [];
    for await (const chunk of await live.client.chat.completions.create({ ...req, stream: true })) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
    // The second request reuses the first's cached prompt blocks, computed in another order: equal to rounding.
    assert.deepEqual(streamed.map((e) => e.token), content.map((e) => e.token));
    for (let i = 0; i < content.length; i++) assert.ok(Math.abs(streamed[i]!.logprob - content[i]!.logprob) < 1e-4);
  });

  test('streamed completion logprobs cover every token once', async () => {
    const req = { model: 'stories260K', prompt: 'The dog', max_tokens: 10, temperature: 0, logprobs: 0 };
    const plain = await live.client.completions.create(req);
    const tokens: string[] = [];
    const values: number[] = [];
    for await (const chunk of await live.client.completions.create({ ...req, stream: true })) {
      const lp = chunk.choices[0]?.logprobs;
      if (lp) {
        tokens.push(...lp.tokens!);
        values.push(...(lp.token_logprobs as number[]));
      }
    }
    assert.deepEqual(tokens, plain.choices[0]!.logprobs!.tokens);
    const want = plain.choices[0]!.logprobs!.token_logprobs as number[];
    assert.equal(values.length, want.length);
    for (let i = 0; i < want.length; i++) assert.ok(Math.abs(values[i]! - want[i]!) < 1e-4);
  });

  test('penalties change greedy output exactly as the penalized argmax of the raw logits says', async () => {
    const prompt = model.tokenizer.encode('Once upon a time', { bos: true });
    for (const p of [{ presence: 0, frequency: 0, repetition: 1.3 }, { presence: 0.8, frequency: 0.4, repetition: 1 }, { presence: 0.5, frequency: 0, repetition: 1.1 }]) {
      const r = await live.client.completions.create({
        model: 'stories260K',
        prompt: 'Once upon a time',
        max_tokens: 24,
        temperature: 0,
        presence_penalty: p.presence,
        frequency_penalty: p.frequency,
        repetition_penalty: p.repetition,
      } as OpenAI.CompletionCreateParamsNonStreaming);
      const out: number[] = [];
      for (let i = 0; i < 24; i++) {
        const rows = await referenceLogits(model, [...prompt, ...out]);
        out.push(penalizedArgmax(rows[rows.length - 1]!, prompt, out, p));
      }
      assert.equal(r.choices[0]!.text, model.tokenizer.decode([prompt[prompt.length - 1]!, ...out]).slice(model.tokenizer.decode([prompt[prompt.length - 1]!]).length), JSON.stringify(p));
    }
    const plain = await live.client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 60, temperature: 0 });
    const penalized = await live.client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 60, temperature: 0, frequency_penalty: 2 });
    assert.notEqual(penalized.choices[0]!.text, plain.choices[0]!.text, 'a strong penalty changes the text');
  });

  test('logit_bias, stop_token_ids, ignore_eos and min_tokens', async () => {
    const eos = 2;
    const C = '/v1/completions';
    const forced = await post(live.base, C, { prompt: 'Zoo', max_tokens: 5, temperature: 0, logit_bias: { [eos]: 100 } });
    assert.equal(forced.json.usage.completion_tokens, 0, 'a +100 bias on EOS ends at once');
    assert.equal(forced.json.choices[0].finish_reason, 'stop');
    const ignored = await post(live.base, C, { prompt: 'Zoo', max_tokens: 5, temperature: 0, logit_bias: { [eos]: 100 }, ignore_eos: true });
    assert.equal(ignored.json.usage.completion_tokens, 5);
    assert.equal(ignored.json.choices[0].finish_reason, 'length');
    const atLeast = await post(live.base, C, { prompt: 'Zoo', max_tokens: 8, temperature: 0, logit_bias: { [eos]: 100 }, min_tokens: 3 });
    assert.equal(atLeast.json.usage.completion_tokens, 3);
    assert.equal(atLeast.json.choices[0].finish_reason, 'stop');

    const plain = await post(live.base, C, { prompt: 'Zoo', max_tokens: 10, temperature: 0, logprobs: 0 });
    const ids = model.tokenizer.encode('Zoo' + plain.json.choices[0].text, { bos: true }).slice(model.tokenizer.encode('Zoo', { bos: true }).length);
    const stopAt = ids.findIndex((t, i) => i >= 2 && !ids.slice(0, i).includes(t));
    const stopped = await post(live.base, C, { prompt: 'Zoo', max_tokens: 10, temperature: 0, stop_token_ids: [ids[stopAt]] });
    assert.equal(stopped.json.usage.completion_tokens, stopAt);
    assert.equal(stopped.json.choices[0].finish_reason, 'stop');
    const zoo = model.tokenizer.encode('Zoo', { bos: true });
    const before = Buffer.concat(ids.slice(0, stopAt).map((t, i) => Buffer.from(model.tokenizer.tokenBytes(t, i > 0 ? ids[i - 1]! : zoo[zoo.length - 1]!)))).toString('utf8');
    assert.equal(stopped.json.choices[0].text, before);

    const banned = await post(live.base, C, { prompt: 'Zoo', max_tokens: 10, temperature: 0, logit_bias: Object.fromEntries(ids.slice(0, 3).map((t) => [t, -100])) });
    const bannedIds = model.tokenizer.encode('Zoo' + banned.json.choices[0].text, { bos: true });
    assert.ok(!bannedIds.includes(ids[0]!) || banned.json.choices[0].text !== plain.json.choices[0].text);
  });

  test('structured output: every strict-schema output parses and validates (ajv), over many schemas and seeds', async () => {
    const ajv = new Ajv2020({ strict: true, strictTuples: false });
    addFormats.default(ajv);
    const schemas: Record<string, unknown>[] = [
      { type: 'object', properties: { name: { type: 'string', maxLength: 12 }, age: { type: 'integer', minimum: 0, maximum: 120 } }, required: ['name', 'age'], additionalProperties: false },
      { type: 'object', properties: { ok: { type: 'boolean' }, tags: { type: 'array', items: { enum: ['red', 'green', 'blue'] }, minItems: 1, maxItems: 3 } }, required: ['ok', 'tags'], additionalProperties: false },
      { type: 'object', properties: { p: { type: 'object', properties: { q: { type: 'string', pattern: '^[A-Z][a-z]{1,5}$' } }, required: ['q'], additionalProperties: false }, n: { anyOf: [{ type: 'null' }, { type: 'integer', minimum: 1, maximum: 9 }] } }, required: ['p', 'n'], additionalProperties: false },
      { type: 'string', format: 'date' },
      { type: 'array', items: { type: 'integer', minimum: -5, maximum: 5 }, minItems: 2, maxItems: 4 },
      { $defs: { node: { type: 'object', properties: { v: { type: 'integer', minimum: 0, maximum: 5 }, next: { anyOf: [{ $ref: '#/$defs/node' }, { type: 'null' }] } }, required: ['v', 'next'], additionalProperties: false } }, $ref: '#/$defs/node' },
      { enum: ['cat', 'dog', 42, null, true] },
      { type: 'object', properties: { kind: { const: 'point' }, x: { type: 'integer', minimum: 0, maximum: 99 }, y: { type: 'integer', minimum: 0, maximum: 99 } }, required: ['kind', 'x', 'y'], additionalProperties: false },
      { type: 'object', properties: { email: { type: 'string', pattern: '^[a-z]{2,6}@[a-z]{2,6}\\.(com|org)$' } }, required: ['email'], additionalProperties: false },
      { oneOf: [{ type: 'object', properties: { a: { type: 'integer', minimum: 0, maximum: 3 } }, required: ['a'], additionalProperties: false }, { type: 'object', properties: { b: { type: 'boolean' } }, required: ['b'], additionalProperties: false }] },
      { type: 'object', properties: { when: { type: 'string', format: 'time' }, id: { type: 'string', format: 'uuid' } }, required: ['when', 'id'], additionalProperties: false },
      { type: 'array', prefixItems: [{ type: 'string', maxLength: 3 }, { type: 'boolean' }], items: false },
    ];
    let checked = 0;
    for (const [i, schema] of schemas.entries()) {
      const validate = ajv.compile(schema);
      for (const seed of [1, 2]) {
        const chat = seed === 1;
        const text = chat
          ? (await live.client.chat.completions.create({ model: 'stories260K', messages: [{ role: 'user', content: 'Write a story.' }], max_tokens: 200, temperature: 1, seed, response_format: { type: 'json_schema', json_schema: { name: `s${i}`, schema, strict: true } } })).choices[0]!
          : (await live.client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 200, temperature: 1, seed, guided_json: schema } as OpenAI.CompletionCreateParamsNonStreaming)).choices[0]!;
        const out = 'message' in text ? text.message.content! : text.text;
        assert.equal(text.finish_reason, 'stop', `schema ${i} seed ${seed}: ${out}`);
        const value = JSON.parse(out) as unknown;
        assert.ok(validate(value), `schema ${i} seed ${seed}: ${out} fails ${JSON.stringify(validate.errors)}`);
        checked++;
      }
    }
    assert.equal(checked, 2 * schemas.length);
  });

  test('structured output: json_object, regex, choice, grammar, streamed too; bad grammars are 400s', async () => {
    const obj = await live.client.chat.completions.create({ model: 'stories260K', messages: [{ role: 'user', content: 'x' }], max_tokens: 300, temperature: 0, response_format: { type: 'json_object' } });
    const objText = obj.choices[0]!.message.content!;
    assert.ok(objText.startsWith('{'));
    if (obj.choices[0]!.finish_reason === 'stop') assert.equal(typeof JSON.parse(objText), 'object');
    const C = '/v1/completions';
    for (const seed of [1, 2, 3]) {
      const re = await post(live.base, C, { prompt: 'Once', max_tokens: 40, temperature: 1, seed, guided_regex: '[a-z]{3,8}@[a-z]{2,5}\\.com' });
      assert.match(re.json.choices[0].text, /^[a-z]{3,8}@[a-z]{2,5}\.com$/);
      const choice = await post(live.base, C, { prompt: 'Once', max_tokens: 40, temperature: 1, seed, guided_choice: ['yes', 'no', 'maybe not'] });
      assert.ok(['yes', 'no', 'maybe not'].includes(choice.json.choices[0].text));
      const g = await post(live.base, C, { prompt: 'Once', max_tokens: 40, temperature: 1, seed, guided_grammar: 'root ::= "Lily " ("runs" | "jumps" | "sings") " " [0-9]' });
      assert.match(g.json.choices[0].text, /^Lily (runs|jumps|sings) [0-9]$/);
    }
    const ignoring = await post(live.base, C, { prompt: 'Once', max_tokens: 40, temperature: 1, seed: 5, guided_choice: ['yes', 'no'], ignore_eos: true });
    assert.ok(['yes', 'no'].includes(ignoring.json.choices[0].text), 'a complete grammar ends the request even with ignore_eos');
    assert.equal(ignoring.json.choices[0].finish_reason, 'stop');
    let streamed = '';
    for await (const chunk of await live.client.completions.create({ model: 'stories260K', prompt: 'Once', max_tokens: 40, temperature: 1, seed: 4, stream: true, guided_choice: ['alpha', 'beta'] } as OpenAI.CompletionCreateParamsStreaming)) streamed += chunk.choices[0]?.text ?? '';
    assert.ok(['alpha', 'beta'].includes(streamed));
    for (const [body, param] of [
      [{ guided_json: { type: 'number', minimum: 0 } }, 'guided_json'],
      [{ guided_json: { type: 'array', items: [{ type: 'integer' }] } }, 'guided_json'],
      [{ guided_json: '{not json' }, 'guided_json'],
      [{ guided_grammar: 'root ::= (' }, 'guided_grammar'],
      [{ guided_choice: [] }, 'guided_choice'],
      [{ guided_regex: 'a', guided_choice: ['a'] }, 'guided_choice'],
      [{ response_format: { type: 'yaml' } }, 'response_format'],
      [{ guided_decoding_backend: 'outlines', guided_regex: 'a' }, 'guided_decoding_backend'],
    ] as const) {
      const r = await post(live.base, C, { prompt: 'x', max_tokens: 4, ...body });
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(r.json.error.param, param, JSON.stringify(r.json));
    }
  });

  test('n > 1: seeded choices equal single requests with seeds seed + i, share the prompt blocks, and bill as one', async () => {
    const prompt = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.';
    const promptTokens = model.tokenizer.encode(prompt, { bos: true }).length;
    const r = await live.client.completions.create({ model: 'stories260K', prompt, max_tokens: 12, temperature: 1, seed: 40, n: 3 });
    assert.equal(r.choices.length, 3);
    assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
    for (let i = 0; i < 3; i++) {
      const one = await live.client.completions.create({ model: 'stories260K', prompt, max_tokens: 12, temperature: 1, seed: 40 + i });
      assert.equal(r.choices[i]!.text, one.choices[0]!.text, `choice ${i}`);
    }
    assert.equal(new Set(r.choices.map((c) => c.text)).size, 3, 'different seeds, different texts');
    assert.equal(r.usage!.prompt_tokens, promptTokens, 'the prompt counted once');
    assert.equal(r.usage!.completion_tokens, 36);
    const bill = (r as unknown as { bill: { prompt_tokens: number; computed_prompt_tokens: number; cached_tokens: number; completion_tokens: number } }).bill;
    assert.equal(bill.prompt_tokens, promptTokens, 'one request: its prompt billed once, the choices share its blocks');
    assert.equal(bill.computed_prompt_tokens + bill.cached_tokens, promptTokens);
    assert.equal(bill.completion_tokens, 36);

    const chunks: Record<number, string> = {};
    for await (const chunk of await live.client.chat.completions.create({ model: 'stories260K', messages: [{ role: 'user', content: 'A story' }], max_tokens: 8, temperature: 1, seed: 3, n: 2, stream: true })) {
      for (const c of chunk.choices) chunks[c.index] = (chunks[c.index] ?? '') + (c.delta.content ?? '');
    }
    const plain = await live.client.chat.completions.create({ model: 'stories260K', messages: [{ role: 'user', content: 'A story' }], max_tokens: 8, temperature: 1, seed: 3, n: 2 });
    assert.deepEqual([chunks[0], chunks[1]], plain.choices.map((c) => c.message.content));
  });

  test('best_of keeps the choices with the highest summed log probability', async () => {
    const body = { model: 'stories260K', prompt: 'The cat', max_tokens: 6, temperature: 1.2, seed: 9 };
    const best = await live.client.completions.create({ ...body, best_of: 4, n: 1 });
    const scores: [string, number][] = [];
    for (let i = 0; i < 4; i++) {
      const one = await live.client.completions.create({ ...body, seed: 9 + i, logprobs: 0 });
      scores.push([one.choices[0]!.text, (one.choices[0]!.logprobs!.token_logprobs as number[]).reduce((a, b) => a + b, 0)]);
    }
    scores.sort((a, b) => b[1] - a[1]);
    assert.equal(best.choices.length, 1);
    assert.equal(best.choices[0]!.text, scores[0]![0]);
    assert.equal(best.choices[0]!.logprobs, null, 'logprobs used for ranking are not returned unasked');
    assert.equal(best.usage!.completion_tokens, 24, 'all four runs are billed');
    assert.equal((await post(live.base, '/v1/completions', { prompt: 'x', n: 3, best_of: 2 })).status, 400);
    assert.equal((await post(live.base, '/v1/completions', { prompt: 'x', n: 17 })).status, 400);
  });

  test('tools: required and named calls are OpenAI tool_calls whose arguments validate, streamed as deltas too', async () => {
    const ajv = new Ajv2020({ strict: false });
    const tools: OpenAI.ChatCompletionTool[] = [
      // Small schemas: stories260K's context is 512 tokens of a 512-piece vocabulary.
      { type: 'function', function: { name: 'weather', parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 8 }, unit: { enum: ['c', 'f'] } }, required: ['city', 'unit'] } } },
      { type: 'function', function: { name: 'add', parameters: { type: 'object', properties: { a: { type: 'integer', minimum: 0, maximum: 9 }, b: { type: 'integer', minimum: 0, maximum: 9 } }, required: ['a', 'b'] } } },
    ];
    const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'What is the weather in Paris?' }];
    for (const [choice, seed] of [['required', 1], ['required', 2], [{ type: 'function', function: { name: 'add' } }, 3]] as const) {
      const r = await live.client.chat.completions.create({ model: 'stories260K', messages, tools, tool_choice: choice, max_tokens: 60, temperature: 1, seed });
      const c = r.choices[0]!;
      assert.equal(c.finish_reason, 'tool_calls');
      assert.equal(c.message.content, null);
      const call = c.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall;
      assert.equal(call.type, 'function');
      assert.match(call.id, /^call_/);
      if (typeof choice === 'object') assert.equal(call.function.name, 'add');
      const tool = tools.find((t) => (t as OpenAI.ChatCompletionFunctionTool).function.name === call.function.name) as OpenAI.ChatCompletionFunctionTool;
      assert.ok(tool, call.function.name);
      const args = JSON.parse(call.function.arguments) as unknown;
      assert.ok(ajv.validate(tool.function.parameters!, args), `${call.function.arguments}: ${JSON.stringify(ajv.errors)}`);
    }

    // Streamed: the first delta names the call, later ones carry the arguments.
    let name = '';
    let args = '';
    let id = '';
    let finish: string | null = null;
    for await (const chunk of await live.client.chat.completions.create({ model: 'stories260K', messages, tools, tool_choice: 'required', max_tokens: 60, temperature: 1, seed: 1, stream: true })) {
      const d = chunk.choices[0];
      for (const tc of d?.delta.tool_calls ?? []) {
        if (tc.id) id = tc.id;
        name += tc.function?.name ?? '';
        args += tc.function?.arguments ?? '';
      }
      if (d?.finish_reason) finish = d.finish_reason;
    }
    const plain = await live.client.chat.completions.create({ model: 'stories260K', messages, tools, tool_choice: 'required', max_tokens: 60, temperature: 1, seed: 1 });
    const call = plain.choices[0]!.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall;
    assert.equal(finish, 'tool_calls');
    assert.match(id, /^call_/);
    assert.equal(name, call.function.name);
    assert.deepEqual(JSON.parse(args), JSON.parse(call.function.arguments));

    // The call and its result go back into the conversation; tool_choice none answers in text.
    const followUp = await live.client.chat.completions.create({
      model: 'stories260K',
      messages: [...messages, { role: 'assistant', content: null, tool_calls: [call] }, { role: 'tool', tool_call_id: call.id, content: '{"temp": 21}' }],
      tools,
      tool_choice: 'none',
      max_tokens: 10,
      temperature: 0,
    });
    assert.equal(followUp.choices[0]!.finish_reason, 'length');
    assert.equal(typeof followUp.choices[0]!.message.content, 'string');
    const auto = await live.client.chat.completions.create({ model: 'stories260K', messages, tools, max_tokens: 10, temperature: 0 });
    assert.ok(auto.choices[0]!.message.content !== undefined);

    for (const [body, param] of [
      [{ tools: [{ type: 'function', function: { name: 'bad name!' } }] }, 'tools'],
      [{ tools, tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice'],
      [{ tool_choice: 'required' }, 'tool_choice'],
      [{ tools, tool_choice: 'required', response_format: { type: 'json_object' } }, 'response_format'],
    ] as const) {
      const r = await post(live.base, '/v1/chat/completions', { messages, max_tokens: 4, ...body });
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(r.json.error.param, param);
    }
  });

  test('min_p 1 keeps only the best token: sampling at any temperature equals greedy', async () => {
    const greedy = await live.client.completions.create({ model: 'stories260K', prompt: 'Zoo', max_tokens: 20, temperature: 0 });
    for (const seed of [1, 2, 3]) {
      const r = await live.client.completions.create({ model: 'stories260K', prompt: 'Zoo', max_tokens: 20, temperature: 1.5, seed, min_p: 1 } as OpenAI.CompletionCreateParamsNonStreaming);
      assert.equal(r.choices[0]!.text, greedy.choices[0]!.text);
    }
  });
});

describe('API parity through the worker engine', { skip: sharedSkipReason() }, () => {
  test('penalties, logprobs and echo cross to the engine thread and back unchanged', async () => {
    const model = await loadModelDir(importStories260K());
    const local = await start(model, await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 4 }));
    const remote = await start(model, await WorkerEngine.create(model.dir, { providers: ['cpu'], maxSequences: 4 }));
    try {
      const bodies = [
        { prompt: 'Once upon a time', max_tokens: 16, temperature: 0.9, seed: 7, repetition_penalty: 1.2, frequency_penalty: 0.5, logprobs: 2 },
        { prompt: 'Lily and Ben', max_tokens: 1, temperature: 0, logprobs: 1, echo: true },
        { prompt: 'Zoo', max_tokens: 6, temperature: 0, logit_bias: { 2: 100 }, min_tokens: 4 },
      ];
      for (const b of bodies) {
        const a = await post(local.base, '/v1/completions', b);
        const c = await post(remote.base, '/v1/completions', b);
        assert.equal(a.status, 200, JSON.stringify(a.json));
        assert.deepEqual(c.json.choices, a.json.choices, JSON.stringify(b));
      }
    } finally {
      await local.close();
      await remote.close();
    }
  });
});

test('parseToolCalls reads the generic format, several calls, and bare call objects; text stays text', () => {
  const fs = [{ name: 'f' }, { name: 'g' }];
  const two = parseToolCalls('Let me check. <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call><tool_call>{"name": "g", "arguments": {}}</tool_call>', fs);
  assert.deepEqual(two?.calls.map((c) => [c.function.name, c.function.arguments]), [['f', '{"x":1}'], ['g', '{}']]);
  assert.equal(two?.content, 'Let me check.');
  assert.equal(parseToolCalls('{"name": "g", "parameters": {"y": 2}}', fs)?.calls[0]?.function.arguments, '{"y":2}');
  assert.equal(parseToolCalls('<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{"name": "g", "arguments": {}}</tool_call>', fs, false)?.calls.length, 1, 'parallel_tool_calls: false');
  assert.equal(parseToolCalls('Once upon a time', fs), undefined);
  assert.equal(parseToolCalls('{"name": "unknown", "arguments": {}}', fs), undefined);
  assert.equal(parseToolCalls('<tool_call>{broken</tool_call>', fs), undefined);
});
