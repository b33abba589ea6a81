import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { ChatOpenAI } from '@langchain/openai';
import { generateObject, generateText, streamText, tool } from 'ai';
import { z } from 'zod';
import { Generator } from '../src/serving/generator.js';
import { OnnxEngine } from '../src/engine/onnx-engine.js';
import { loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { buildServer, type Server } from '../src/server/app.js';
import { importStories260K } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';

/**
 * The Vercel AI SDK and LangChain JS against a real server on stories260K, as their users call
 * them: text, streams, structured objects and tool calls. The model is tiny and writes stories,
 * so structured results come from the grammar, not from the model's understanding.
 */
describe('Vercel AI SDK and LangChain JS', { skip: sharedSkipReason() }, () => {
  let model: LoadedModel;
  let server: Server;
  let engine: OnnxEngine;
  let baseURL: string;
  before(async () => {
    model = await loadModelDir(importStories260K());
    engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: 4 });
    server = buildServer({ model, generator: new Generator(engine, model, { policy: 'fcfs' }) });
    await server.app.listen({ host: '127.0.0.1', port: 0 });
    baseURL = `http://127.0.0.1:${(server.app.server.address() as AddressInfo).port}/v1`;
  });
  after(async () => {
    await server.drain();
    await engine.dispose();
  });

  const weather = z.object({ city: z.string().max(8), unit: z.enum(['c', 'f']) });
  const person = z.object({ name: z.string().max(10), age: z.number().int().min(0).max(99), pet: z.enum(['cat', 'dog']) });

  test('AI SDK: generateText, streamText, generateObject and tool calls', async () => {
    const provider = createOpenAICompatible({ name: 'marginal', baseURL, apiKey: 'unused', supportsStructuredOutputs: true, includeUsage: true });
    const m = provider.chatModel('stories260K');
    const text = await generateText({ model: m, prompt: 'Tell me a story.', maxOutputTokens: 20, temperature: 0 });
    assert.ok(text.text.length > 0);
    assert.equal(text.usage.outputTokens, 20);

    const stream = streamText({ model: m, prompt: 'Tell me a story.', maxOutputTokens: 20, temperature: 0 });
    let streamed = '';
    for await (const piece of stream.textStream) streamed += piece;
    assert.equal(streamed, text.text);

    const obj = await generateObject({ model: m, schema: person, prompt: 'A person.', maxOutputTokens: 80, temperature: 1, seed: 2 });
    assert.deepEqual(person.parse(obj.object), obj.object);

    const called = await generateText({
      model: m,
      prompt: 'Weather in Paris?',
      tools: { weather: tool({ description: 'weather', inputSchema: weather }) },
      toolChoice: 'required',
      maxOutputTokens: 60,
      temperature: 1,
      seed: 1,
    });
    assert.equal(called.toolCalls.length, 1);
    assert.equal(called.toolCalls[0]!.toolName, 'weather');
    weather.parse(called.toolCalls[0]!.input);
    assert.equal(called.finishReason, 'tool-calls');
  });

  test('LangChain: invoke, stream, withStructuredOutput (JSON schema and function calling) and bound tools', async () => {
    const chat = new ChatOpenAI({ model: 'stories260K', apiKey: 'unused', configuration: { baseURL }, temperature: 0, maxTokens: 20, maxRetries: 0 });
    const reply = await chat.invoke('Tell me a story.');
    assert.ok(typeof reply.content === 'string' && reply.content.length > 0);
    let streamed = '';
    for await (const chunk of await chat.stream('Tell me a story.')) streamed += chunk.content as string;
    assert.equal(streamed, reply.content);

    const sampling = new ChatOpenAI({ model: 'stories260K', apiKey: 'unused', configuration: { baseURL }, temperature: 1, maxTokens: 80, maxRetries: 0, modelKwargs: { seed: 3 } });
    // jsonMode (json_object) bounds nothing, and this model fills a free string until max_tokens; the schema methods finish.
    for (const method of ['jsonSchema', 'functionCalling'] as const) {
      const structured = sampling.withStructuredOutput(person, { method, name: 'person' });
      const out = await structured.invoke('A person.');
      assert.deepEqual(person.parse(out), out, method);
    }

    const withTools = sampling.bindTools([{ type: 'function', function: { name: 'weather', description: 'weather', parameters: z.toJSONSchema(weather) as Record<string, unknown> } }], { tool_choice: 'required' });
    const msg = await withTools.invoke('Weather in Paris?');
    assert.equal(msg.tool_calls?.length, 1);
    assert.equal(msg.tool_calls?.[0]?.name, 'weather');
    weather.parse(msg.tool_calls?.[0]?.args);
  });
});
