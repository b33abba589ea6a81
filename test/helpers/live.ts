import { connect, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { Ledger } from '../../src/economy/ledger.js';
import { Generator } from '../../src/serving/generator.js';
import { OnnxEngine } from '../../src/engine/onnx-engine.js';
import type { LoadedModel } from '../../src/models/modeldir.js';
import { buildServer, type Server } from '../../src/server/app.js';
import type { ServerLimits } from '../../src/server/limits.js';
import { parseApiKeys } from '../../src/server/tenants.js';
import type { TokenizePool } from '../../src/server/tokenize-pool.js';

/** A real server on 127.0.0.1 (port 0) over a real ONNX Runtime engine. */
export interface Live {
  server: Server;
  base: string;
  port: number;
  client: OpenAI;
  engine: OnnxEngine;
  generator: Generator;
  close(): Promise<void>;
}

export interface LiveOptions {
  policy?: string;
  maxSequences?: number;
  ledger?: Ledger;
  apiKeys?: unknown;
  limits?: Partial<ServerLimits>;
  pool?: TokenizePool;
  defaultBid?: number;
}

export async function startLive(model: LoadedModel, o: LiveOptions = {}): Promise<Live> {
  const engine = await OnnxEngine.create(model, { providers: ['cpu'], maxSequences: o.maxSequences ?? 8 });
  const generator = new Generator(engine, model, { policy: o.policy ?? 'shadow', defaultBid: () => o.defaultBid ?? 0.01, ...(o.ledger ? { ledger: o.ledger } : {}) });
  const pool = o.pool;
  const server = buildServer({
    model,
    generator,
    ...(o.apiKeys ? { tenants: parseApiKeys(o.apiKeys) } : {}),
    ...(o.limits ? { limits: o.limits } : {}),
    ...(pool ? { tokenize: (text: string, bos: boolean, ctx) => pool.encode(text, bos, ctx) } : {}),
  });
  await server.app.listen({ host: '127.0.0.1', port: 0 });
  const port = (server.app.server.address() as AddressInfo).port;
  const base = `http://127.0.0.1:${port}`;
  return {
    server,
    base,
    port,
    generator,
    engine,
    client: new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 }),
    close: async () => {
      await server.drain(5000);
      await engine.dispose();
    },
  };
}

export interface Posted {
  status: number;
  text: string;
  json: { error?: { message: string; type: string; param: string | null; code: string | null; quote?: Record<string, unknown> }; [k: string]: unknown };
  headers: Headers;
}

export async function postJson(base: string, path: string, body: string | object, headers: Record<string, string> = {}): Promise<Posted> {
  const res = await fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await res.text();
  let json: Posted['json'] = {};
  try {
    json = JSON.parse(text) as Posted['json'];
  } catch {
    /* not JSON: the caller asserts on text */
  }
  return { status: res.status, text, json, headers: res.headers };
}

/** A raw HTTP exchange: what came back before the server closed, and how the client side ended. */
export interface RawResult {
  data: string;
  /** The socket error the client saw (EPIPE, ECONNRESET), if any. */
  error: string | undefined;
}

/** Writes `chunks` to a fresh connection (pausing `gapMs` between them) and reads until the server closes or `timeoutMs`. */
export function rawExchange(port: number, chunks: (string | Buffer)[], o: { gapMs?: number; timeoutMs?: number; localAddress?: string } = {}): Promise<RawResult> {
  return new Promise((resolve) => {
    const s: Socket = connect({ port, host: '127.0.0.1', ...(o.localAddress ? { localAddress: o.localAddress } : {}) });
    let data = '';
    let error: string | undefined;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ data, error });
    };
    const timer = setTimeout(finish, o.timeoutMs ?? 10_000);
    s.on('data', (d) => (data += d.toString('latin1')));
    s.on('error', (e) => (error = (e as NodeJS.ErrnoException).code ?? e.message));
    s.on('close', finish);
    let i = 0;
    const next = () => {
      if (done || s.destroyed) return;
      if (i >= chunks.length) return;
      const ok = s.write(chunks[i++] as string | Buffer);
      if (o.gapMs) setTimeout(next, o.gapMs);
      else if (ok) next();
      else s.once('drain', next);
    };
    s.on('connect', next);
  });
}

/** Status and parsed JSON body of the first HTTP response in raw text. */
export function parseRaw(data: string): { status: number; headers: Record<string, string>; body: Posted['json'] } | undefined {
  const m = data.match(/^HTTP\/1\.1 (\d{3})[^\r]*\r\n([\s\S]*?)\r\n\r\n([\s\S]*)$/);
  if (!m) return undefined;
  const headers: Record<string, string> = {};
  for (const line of (m[2] as string).split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  const len = Number(headers['content-length'] ?? NaN);
  const raw = Number.isFinite(len) ? Buffer.from(m[3] as string, 'latin1').subarray(0, len).toString('utf8') : (m[3] as string);
  let body: Posted['json'] = {};
  try {
    body = JSON.parse(raw) as Posted['json'];
  } catch {
    /* left empty: the caller asserts the shape */
  }
  return { status: Number(m[1]), headers, body };
}

/** Every sample of a Prometheus exposition, by line. */
export function samples(text: string): { line: string; value: number }[] {
  return text
    .split('\n')
    .filter((l) => l.length > 0 && !l.startsWith('#'))
    .map((line) => ({ line, value: Number(line.slice(line.lastIndexOf(' ') + 1)) }));
}

export function metricSum(text: string, name: string, label = ''): number {
  let sum = 0;
  for (const { line, value } of samples(text)) if ((line.startsWith(name + '{') || line.startsWith(name + ' ')) && line.includes(label)) sum += value;
  return sum;
}
