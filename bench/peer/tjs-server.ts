/**
 * The peer: what a Node user would write today to serve a model over HTTP — a small fastify
 * server calling transformers.js's `generate` per request, streaming through its TextStreamer.
 * Requests are not batched together; concurrent ones interleave their steps on one session.
 * It loads the same Hugging Face folder (the `hf` graph) that marginal's model directory holds.
 *
 *   node --import tsx bench/peer/tjs-server.ts --model DIR --port 8101
 */
import { AutoModelForCausalLM, AutoTokenizer, TextStreamer, env } from '@huggingface/transformers';
import { Command } from 'commander';
import Fastify from 'fastify';
import { basename, dirname, resolve } from 'node:path';

const o = new Command().requiredOption('--model <dir>').option('--port <n>', 'port', '8101').option('--threads <n>', 'ONNX Runtime threads').parse().opts<{ model: string; port: string; threads?: string }>();
const dir = resolve(o.model);
env.allowRemoteModels = false;
env.localModelPath = dirname(dir) + '/';
const name = basename(dir);
const tokenizer = await AutoTokenizer.from_pretrained(name);
const model = await AutoModelForCausalLM.from_pretrained(name, {
  dtype: 'fp32',
  device: 'cpu',
  ...(o.threads ? { session_options: { intraOpNumThreads: Number(o.threads) } } : {}),
});

const app = Fastify();
app.get('/health', async () => ({ status: 'ok' }));
app.get('/v1/models', async () => ({ object: 'list', data: [{ id: name, object: 'model', owned_by: 'transformers.js' }] }));
app.post('/v1/completions', async (req, reply) => {
  const body = req.body as { prompt: string; max_tokens?: number; stream?: boolean; temperature?: number };
  const inputs = tokenizer(body.prompt);
  const id = `cmpl-${Date.now()}`;
  const maxNew = body.max_tokens ?? 16;
  const sample = (body.temperature ?? 1) > 0;
  if (!body.stream) {
    const out = (await model.generate({ ...inputs, max_new_tokens: maxNew, do_sample: sample })) as unknown as { dims: number[]; slice: (...a: unknown[]) => unknown };
    const ids = (out as unknown as { tolist(): bigint[][] }).tolist()[0] ?? [];
    const promptLen = (inputs.input_ids as { dims: number[] }).dims[1] ?? 0;
    const text = tokenizer.decode(ids.slice(promptLen), { skip_special_tokens: true });
    return { id, object: 'text_completion', model: name, choices: [{ index: 0, text, finish_reason: 'length' }], usage: { prompt_tokens: promptLen, completion_tokens: ids.length - promptLen } };
  }
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  let tokens = 0;
  const streamer = new TextStreamer(tokenizer, {
    skip_prompt: true,
    skip_special_tokens: true,
    callback_function: (text: string) => {
      if (text.length > 0) res.write(`data: ${JSON.stringify({ id, object: 'text_completion', model: name, choices: [{ index: 0, text, finish_reason: null }] })}\n\n`);
    },
    token_callback_function: () => {
      tokens++;
    },
  });
  await model.generate({ ...inputs, max_new_tokens: maxNew, do_sample: sample, streamer });
  const promptLen = (inputs.input_ids as { dims: number[] }).dims[1] ?? 0;
  res.write(`data: ${JSON.stringify({ id, object: 'text_completion', model: name, choices: [{ index: 0, text: '', finish_reason: 'length' }] })}\n\n`);
  res.write(`data: ${JSON.stringify({ id, object: 'text_completion', model: name, choices: [], usage: { prompt_tokens: promptLen, completion_tokens: tokens, total_tokens: promptLen + tokens } })}\n\n`);
  res.end('data: [DONE]\n\n');
  return reply;
});
await app.listen({ host: '127.0.0.1', port: Number(o.port) });
process.stderr.write(`transformers.js peer serving ${name} on 127.0.0.1:${o.port}\n`);
process.once('SIGTERM', () => void app.close().then(() => process.exit(0)));
