/**
 * The chaos client: sends one request (over node:http or a raw socket) and judges the answer —
 * its status, whether a non-2xx body has OpenAI's error shape, whether a stream ended properly —
 * and whether the request was lost (the connection ended with no answer the client could read).
 */
import { request, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import type { HostileCase } from './cases.js';

export interface Outcome {
  name: string;
  /** HTTP status, or 0 when no answer came back. */
  status: number;
  /** No answer, and the client did not hang up on purpose. */
  lost: boolean;
  /** A non-2xx answer whose body is not `{"error": {"message", "type", "param", "code"}}`, or a 2xx that is not what it should be. */
  badShape: string | undefined;
  /** error.code of a non-2xx answer. */
  code: string | null;
  body: string;
}

/** OpenAI's error shape, or what is wrong with it. */
export function errorShapeProblem(body: string): string | undefined {
  let j: unknown;
  try {
    j = JSON.parse(body);
  } catch {
    return `not JSON: ${body.slice(0, 80)}`;
  }
  const e = (j as { error?: unknown })?.error as Record<string, unknown> | undefined;
  if (e === null || typeof e !== 'object') return `no error object: ${body.slice(0, 80)}`;
  if (typeof e.message !== 'string') return 'error.message is not a string';
  if (typeof e.type !== 'string') return 'error.type is not a string';
  if (!(e.code === null || typeof e.code === 'string')) return 'error.code is not a string';
  if (!('param' in e)) return 'error.param is missing';
  if ('statusCode' in (j as object)) return "fastify's own shape";
  return undefined;
}

function judge(name: string, status: number, body: string, headers: Record<string, string | string[] | undefined>, method: string): Outcome {
  let badShape: string | undefined;
  let code: string | null = null;
  if (status >= 300 && method !== 'HEAD') {
    badShape = errorShapeProblem(body);
    if (badShape === undefined) code = (JSON.parse(body) as { error: { code: string | null } }).error.code;
  } else if (status >= 200 && status < 300 && method !== 'HEAD') {
    const type = String(headers['content-type'] ?? '');
    if (type.startsWith('text/event-stream')) {
      if (!body.trimEnd().endsWith('data: [DONE]')) badShape = 'stream without data: [DONE]';
    } else {
      try {
        JSON.parse(body);
      } catch {
        badShape = `2xx body is not JSON: ${body.slice(0, 80)}`;
      }
    }
  }
  return { name, status, lost: false, badShape, code, body };
}

export interface SendOptions {
  port: number;
  /** Source address on the loopback (127.0.0.x), to act as another client. */
  localAddress?: string;
  /** Gives up waiting after this (the answer counts as lost), ms. */
  timeoutMs?: number;
  /** Hang up after this many bytes of the answer (a client that leaves mid-stream). */
  abortAfterBytes?: number;
}

/** One request over HTTP/1.1 on its own connection. */
export function sendHttp(c: HostileCase, o: SendOptions): Promise<Outcome> {
  return new Promise((resolve) => {
    const method = c.method ?? 'POST';
    let settled = false;
    const done = (x: Outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(x);
    };
    const req = request({ host: '127.0.0.1', port: o.port, path: c.path ?? '/', method, headers: { connection: 'close', ...(c.headers ?? {}) }, agent: false, ...(o.localAddress ? { localAddress: o.localAddress } : {}) }, (res: IncomingMessage) => {
      const parts: Buffer[] = [];
      let bytes = 0;
      res.on('data', (d: Buffer) => {
        parts.push(d);
        bytes += d.length;
        if (o.abortAfterBytes !== undefined && bytes >= o.abortAfterBytes) {
          req.destroy();
          done({ name: c.name, status: res.statusCode ?? 0, lost: false, badShape: undefined, code: null, body: '' });
        }
      });
      res.on('end', () => done(judge(c.name, res.statusCode ?? 0, Buffer.concat(parts).toString('utf8'), res.headers, method)));
      res.on('error', () => done({ name: c.name, status: res.statusCode ?? 0, lost: true, badShape: 'the answer broke off', code: null, body: Buffer.concat(parts).toString('utf8') }));
    });
    const timer = setTimeout(() => {
      req.destroy();
      done({ name: c.name, status: 0, lost: !c.clientAborts, badShape: undefined, code: null, body: 'timeout' });
    }, o.timeoutMs ?? 60_000);
    req.on('error', (e) => done({ name: c.name, status: 0, lost: !c.clientAborts, badShape: undefined, code: null, body: `${(e as NodeJS.ErrnoException).code ?? e.message}` }));
    if (c.body !== undefined) req.end(c.body);
    else req.end();
  });
}

/** Raw bytes on a fresh connection; the first response in what comes back is judged. */
export function sendRaw(c: HostileCase, o: SendOptions & { gapMs?: number }): Promise<Outcome> {
  return new Promise((resolve) => {
    const s = connect({ port: o.port, host: '127.0.0.1', ...(o.localAddress ? { localAddress: o.localAddress } : {}) });
    const parts: Buffer[] = [];
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      // A 100 Continue comes before the answer, which is the one judged.
      const data = Buffer.concat(parts).toString('latin1').replace(/^(HTTP\/1\.1 100 [^\r]*\r\n\r\n)+/, '');
      const m = data.match(/^HTTP\/1\.[01] (\d{3})[^\r]*\r\n([\s\S]*?)\r\n\r\n([\s\S]*)$/);
      if (!m) {
        resolve({ name: c.name, status: 0, lost: !c.clientAborts, badShape: undefined, code: null, body: data.slice(0, 200) });
        return;
      }
      const headers: Record<string, string> = {};
      for (const line of (m[2] as string).split('\r\n')) {
        const i = line.indexOf(':');
        if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      const len = Number(headers['content-length'] ?? NaN);
      const rest = Buffer.from(m[3] as string, 'latin1');
      const body = (Number.isFinite(len) ? rest.subarray(0, len) : rest).toString('utf8');
      resolve(judge(c.name, Number(m[1]), body, headers, 'GET'));
    };
    const timer = setTimeout(finish, o.timeoutMs ?? 30_000);
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('error', () => {});
    s.on('close', finish);
    const chunks = c.chunks ?? [];
    let i = 0;
    const next = () => {
      if (settled || s.destroyed || i >= chunks.length) return;
      const ok = s.write(chunks[i++] as string | Buffer);
      if (o.gapMs) setTimeout(next, o.gapMs);
      else if (ok) next();
      else s.once('drain', next);
    };
    s.on('connect', next);
  });
}

export function send(c: HostileCase, o: SendOptions): Promise<Outcome> {
  return c.kind === 'raw' ? sendRaw(c, o) : sendHttp(c, o);
}

/** Runs `tasks` with at most `concurrency` at once. */
export async function pooled<T>(tasks: (() => Promise<T>)[], concurrency: number): Promise<T[]> {
  const out = new Array<T>(tasks.length);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= tasks.length) return;
      out[i] = await (tasks[i] as () => Promise<T>)();
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, tasks.length)) }, worker));
  return out;
}
