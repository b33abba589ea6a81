/**
 * Hostile requests, generated: valid bodies with fields replaced by the extremes JSON allows
 * and by the wrong types, bodies that are not what they claim, headers and paths that are not
 * what the API expects, and HTTP that a parser must refuse. Deterministic given the seed, so a
 * failure can be replayed by its index.
 */
import { mulberry32 as prng } from '../../src/random.js';

export type CaseKind = 'http' | 'raw';

export interface HostileCase {
  name: string;
  kind: CaseKind;
  /** http: method, path, headers and body (a Buffer for bytes that are not UTF-8). */
  method?: string;
  path?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  /** raw: what is written to a fresh connection, in pieces. */
  chunks?: (string | Buffer)[];
  /** The client hangs up before the answer on purpose: no answer is expected. */
  clientAborts?: boolean;
}


/** Values JSON can carry that a server must survive in any field. */
export const EXTREMES: readonly unknown[] = [
  1e308,
  -1e308,
  5e-324,
  -5e-324,
  0,
  -0,
  1,
  -1,
  0.5,
  2 ** 53 + 2,
  -(2 ** 53) - 2,
  1e21,
  1.7976931348623157e308,
  'NaN',
  'Infinity',
  '1e308',
  '',
  'x'.repeat(100_000),
  '\u0000\ud800\udfff\u202e',
  true,
  false,
  null,
  [],
  {},
  [1e308, -1e308],
  { nested: { deeper: [1, 2, 3] } },
  Array.from({ length: 10_000 }, (_, i) => i),
];

const NUMERIC_FIELDS = ['max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'n', 'presence_penalty', 'frequency_penalty', 'value', 'bid', 'priority', 'deadline_ms', 'logprobs', 'best_of', 'top_logprobs'];
const OTHER_FIELDS = ['model', 'prompt', 'messages', 'stop', 'stream', 'stream_options', 'slo', 'logit_bias', 'user', 'echo', 'suffix', 'response_format', 'tools', 'tool_choice'];

function deepNest(depth: number, open: string, close: string, inner = '1'): string {
  return open.repeat(depth) + inner + close.repeat(depth);
}

const COMPLETION = { prompt: 'Once upon a time', max_tokens: 4, temperature: 0 };
const CHAT = { messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 4, temperature: 0 };

function setPath(obj: Record<string, unknown>, path: string, v: unknown): void {
  const parts = path.split('.');
  let o: Record<string, unknown> = obj;
  for (const p of parts.slice(0, -1)) {
    if (typeof o[p] !== 'object' || o[p] === null) o[p] = {};
    o = o[p] as Record<string, unknown>;
  }
  o[parts[parts.length - 1] as string] = v;
}

/** Raw HTTP that must be refused by the parser (or answered) in the OpenAI shape. */
export function rawCases(): HostileCase[] {
  const C = '/v1/completions';
  const json = '{"prompt":"Zoo","max_tokens":2}';
  const r = (name: string, ...chunks: (string | Buffer)[]): HostileCase => ({ name, kind: 'raw', chunks });
  return [
    r('bad request line', 'GARBAGE\r\n\r\n'),
    r('no version', `POST ${C}\r\n\r\n`),
    r('HTTP/2 preface on HTTP/1', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
    r('Content-Length with Transfer-Encoding', `POST ${C} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`),
    r('two Content-Lengths', `POST ${C} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n12345`),
    r('negative Content-Length', `POST ${C} HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n`),
    r('bad chunk size', `POST ${C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`),
    r('chunk longer than it says', `POST ${C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}}}}\r\n0\r\n\r\n`),
    r('LF-only line ends', 'GET /health HTTP/1.1\nHost: x\n\n'),
    r('space in header name', 'GET /health HTTP/1.1\r\nHo st: x\r\n\r\n'),
    r('NUL in header value', 'GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\u0000b\r\n\r\n'),
    r('obsolete line folding', 'GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\n\r\n'),
    r('headers too large', `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`),
    r('many headers', `GET /health HTTP/1.1\r\nHost: x\r\n${Array.from({ length: 3000 }, (_, i) => `X-${i}: v`).join('\r\n')}\r\n\r\n`),
    r('URL too long', `GET /health?${'q'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`),
    r('unknown method', `BREW ${C} HTTP/1.1\r\nHost: x\r\n\r\n`),
    r('unknown Transfer-Encoding', `POST ${C} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n${json}`),
    r('HTTP/1.0 without Host', `POST ${C} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: ${json.length}\r\n\r\n${json}`),
    r('absolute-form target', `POST http://evil.example${C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${json.length}\r\n\r\n${json}`),
    r('pipelined valid then garbage', `GET /health HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n`),
    r('pipelined three', `GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`),
    r('body shorter than Content-Length, then FIN', `POST ${C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt":`),
    r('invalid UTF-8 in body', Buffer.concat([Buffer.from(`POST ${C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\nConnection: close\r\n\r\n`), Buffer.from([0x7b, 0x22, 0x70, 0x72, 0x6f, 0x6d, 0x70, 0x74, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0xc3, 0x28, 0x22, 0x7d, 0x20, 0x20, 0x20])])),
    r('expect 100-continue', `POST ${C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: ${json.length}\r\nConnection: close\r\n\r\n${json}`),
    r('expect something else', `POST ${C} HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: ${json.length}\r\nConnection: close\r\n\r\n${json}`),
    r('upgrade to websocket', `GET /v1/completions HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`),
    r('CONNECT', 'CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n'),
  ];
}

/**
 * `n` hostile requests over HTTP (plus the raw ones), deterministic in `seed`. About a third
 * replace one field of a valid body with an extreme, a third mutate several, the rest break the
 * body, the headers or the path.
 */
export function hostileCases(n: number, seed = 1): HostileCase[] {
  const rand = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
  const out: HostileCase[] = [...rawCases()];
  const post = (name: string, path: string, body: string | Buffer, headers: Record<string, string> = { 'content-type': 'application/json' }): HostileCase => ({ name, kind: 'http', method: 'POST', path, headers, body });
  const fixed: HostileCase[] = [
    // The findings, as requests.
    post('finding 1: value 1e308', '/v1/completions', JSON.stringify({ ...COMPLETION, value: 1e308 })),
    post('finding 1: value 1e308, again', '/v1/completions', JSON.stringify({ ...COMPLETION, value: 1e308 })),
    post('finding 1: bid 1e300 streamed', '/v1/completions', JSON.stringify({ ...COMPLETION, bid: 1e300, stream: true })),
    post('finding 2: a 1.5 MB prompt', '/v1/completions', JSON.stringify({ prompt: 'Once upon a time there was a cat. '.repeat(45_000), max_tokens: 4 })),
    post('finding 2: a 1.5 MB chat message', '/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', content: 'Tell me a story. '.repeat(90_000) }] })),
    post('finding 4: an 8 MB body', '/v1/completions', JSON.stringify({ prompt: 'x'.repeat(8 * 1024 * 1024) })),
    post('finding 2: /tokenize a 1.5 MB prompt', '/tokenize', JSON.stringify({ prompt: 'Once upon a time there was a cat. '.repeat(45_000) })),
    post('finding 5: TTFT SLO 1000 ms', '/v1/completions', JSON.stringify({ ...COMPLETION, slo: { ttft_ms: 1000 } })),
    post('finding 5: deadline 1e-300 ms', '/v1/completions', JSON.stringify({ ...COMPLETION, deadline_ms: 1e-300 })),
    post('finding 5: TTFT SLO 5e-324 ms', '/v1/completions', JSON.stringify({ ...COMPLETION, slo: { ttft_ms: 5e-324 } })),
    // Bodies that are not what they claim.
    post('empty body', '/v1/completions', ''),
    post('truncated JSON', '/v1/completions', '{"prompt": "x",'),
    post('top-level array', '/v1/completions', '[1,2,3]'),
    post('top-level number', '/v1/completions', '1e308'),
    post('top-level string', '/v1/completions', '"prompt"'),
    post('top-level null', '/v1/completions', 'null'),
    post('BOM before JSON', '/v1/completions', '\ufeff' + JSON.stringify(COMPLETION)),
    post('deeply nested arrays', '/v1/completions', `{"prompt": ${deepNest(50_000, '[', ']')}}`),
    post('deeply nested objects', '/v1/completions', `{"prompt": "x", "x": ${deepNest(20_000, '{"a":', '}')}}`),
    post('duplicate keys', '/v1/completions', '{"prompt": "x", "max_tokens": 2, "max_tokens": 1e308}'),
    post('__proto__ pollution', '/v1/completions', '{"prompt": "x", "__proto__": {"admin": true}}'),
    post('constructor.prototype pollution', '/v1/completions', '{"prompt": "x", "constructor": {"prototype": {"admin": true}}}'),
    post('ten thousand keys', '/v1/completions', JSON.stringify(Object.fromEntries([['prompt', 'x'], ...Array.from({ length: 10_000 }, (_, i) => [`k${i}`, i])]))),
    post('a 100k-character key', '/v1/completions', JSON.stringify({ prompt: 'x', ['k'.repeat(100_000)]: 1 })),
    post('invalid UTF-8', '/v1/completions', Buffer.concat([Buffer.from('{"prompt": "'), Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80]), Buffer.from('"}')])),
    post('lone surrogates', '/v1/completions', '{"prompt": "\\ud800\\udc00\\ud800 x \\udfff", "max_tokens": 2}'),
    post('NUL in prompt', '/v1/completions', JSON.stringify({ prompt: 'a\u0000b', max_tokens: 2 })),
    post('100k token ids', '/v1/completions', JSON.stringify({ prompt: Array.from({ length: 100_000 }, () => 5), max_tokens: 2 })),
    post('token ids past the vocabulary', '/v1/completions', JSON.stringify({ prompt: [1, 2 ** 31, 2 ** 53], max_tokens: 2 })),
    post('4096 chat messages', '/v1/chat/completions', JSON.stringify({ messages: Array.from({ length: 4096 }, () => ({ role: 'user', content: 'hi' })), max_tokens: 2 })),
    post('4097 chat messages', '/v1/chat/completions', JSON.stringify({ messages: Array.from({ length: 4097 }, () => ({ role: 'user', content: 'hi' })), max_tokens: 2 })),
    post('chat message without content', '/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user' }], max_tokens: 2 })),
    post('chat message with a misspelt content key', '/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', cont: 'hi' }], max_tokens: 2 })),
    post('assistant turn without content', '/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant' }, { role: 'user', content: 'go on' }], max_tokens: 2 })),
    post('chat content parts of the wrong types', '/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', content: [{ type: 'text', text: 5 }, { type: 'image_url' }, null] }] })),
    post('a 1 MB stop string', '/v1/completions', JSON.stringify({ ...COMPLETION, max_tokens: 8, stop: ['a'.repeat(1_000_000)] })),
    // Headers and content types.
    post('text/plain', '/v1/completions', JSON.stringify(COMPLETION), { 'content-type': 'text/plain' }),
    post('no content type', '/v1/completions', JSON.stringify(COMPLETION), {}),
    post('multipart', '/v1/completions', '--x\r\n\r\nprompt\r\n--x--', { 'content-type': 'multipart/form-data; boundary=x' }),
    post('JSON in UTF-16', '/v1/completions', Buffer.from(JSON.stringify(COMPLETION), 'utf16le'), { 'content-type': 'application/json; charset=utf-16' }),
    post('content type with junk parameters', '/v1/completions', JSON.stringify(COMPLETION), { 'content-type': `application/json; ${'x=y; '.repeat(500)}` }),
    post('garbage authorization', '/v1/completions', JSON.stringify(COMPLETION), { 'content-type': 'application/json', authorization: 'Bearer \u00ff'.repeat(100) }),
    post('gzip that is not', '/v1/completions', JSON.stringify(COMPLETION), { 'content-type': 'application/json', 'content-encoding': 'gzip' }),
    // Paths and methods.
    { name: 'GET on a POST route', kind: 'http', method: 'GET', path: '/v1/completions' },
    { name: 'DELETE', kind: 'http', method: 'DELETE', path: '/v1/completions' },
    { name: 'PUT with a body', kind: 'http', method: 'PUT', path: '/v1/chat/completions', headers: { 'content-type': 'application/json' }, body: JSON.stringify(CHAT) },
    { name: 'OPTIONS', kind: 'http', method: 'OPTIONS', path: '/v1/completions' },
    { name: 'HEAD /health', kind: 'http', method: 'HEAD', path: '/health' },
    post('POST /health', '/health', '{}'),
    post('trailing slash', '/v1/completions/', JSON.stringify(COMPLETION)),
    post('upper-case path', '/V1/COMPLETIONS', JSON.stringify(COMPLETION)),
    post('dot segments', '/v1/../v1/completions', JSON.stringify(COMPLETION)),
    post('encoded path', '/v1/%63ompletions', JSON.stringify(COMPLETION)),
    post('bad percent-encoding', '/v1/completions%', JSON.stringify(COMPLETION)),
    post('query string', '/v1/completions?stream=true&__proto__=1', JSON.stringify(COMPLETION)),
    { name: 'a 10k-character path', kind: 'http', method: 'GET', path: '/' + 'a'.repeat(10_000) },
  ];
  out.push(...fixed);
  // Generated cases are kept only when their bytes are new: n distinct requests, not n draws.
  const seen = new Set(out.map((c) => `${c.method} ${c.path} ${String(c.body)}`));
  const fresh = (c: HostileCase): void => {
    const key = `${c.method} ${c.path} ${String(c.body)}`;
    if (seen.has(key)) return;
    seen.add(key);
    out.push(c);
  };
  let i = 0;
  while (out.length < n && i < 100 * n) {
    i++;
    const chat = rand() < 0.35;
    const base: Record<string, unknown> = structuredClone(chat ? CHAT : COMPLETION);
    const path = chat ? '/v1/chat/completions' : '/v1/completions';
    const r = rand();
    if (r < 0.45) {
      // One field, one extreme.
      const field = rand() < 0.6 ? pick(NUMERIC_FIELDS) : pick(OTHER_FIELDS);
      const v = pick(EXTREMES);
      base[field] = v;
      if (rand() < 0.3) base.stream = true;
      fresh(post(`${field} = ${JSON.stringify(v)?.slice(0, 40)} (${chat ? 'chat' : 'completion'} #${i})`, path, JSON.stringify(base)));
    } else if (r < 0.75) {
      // Several fields at once, economics included.
      const k = 2 + Math.floor(rand() * 4);
      const names: string[] = [];
      for (let j = 0; j < k; j++) {
        const field = pick([...NUMERIC_FIELDS, 'slo.ttft_ms', 'slo.tpot_ms', 'stop', 'stream']);
        setPath(base, field, pick(EXTREMES));
        names.push(field);
      }
      fresh(post(`${names.join('+')} extreme (#${i})`, path, JSON.stringify(base)));
    } else if (r < 0.9) {
      // Valid types, hostile sizes and economics: these may run, and must not hurt anyone.
      const valid: Record<string, unknown> = {
        ...base,
        max_tokens: 1 + Math.floor(rand() * 8),
        temperature: pick([0, 5e-324, 1e-300, 0.7, 2]),
        ...(rand() < 0.5 ? { value: pick([1e308, 5e-324, 0, 1e12, 10]) } : { bid: pick([1e300, 5e-324, 0, 1e-9]) }),
        ...(rand() < 0.5 ? { slo: { ttft_ms: pick([5e-324, 1, 1000, 1e308]), tpot_ms: pick([5e-324, 1e308]) } } : {}),
        ...(rand() < 0.3 ? { deadline_ms: pick([1e-300, 5e-324, 1, 1e308]) } : {}),
        ...(rand() < 0.3 ? { priority: pick([-1000000, 1000000, 0]) } : {}),
        ...(rand() < 0.3 ? { seed: pick([0, -(2 ** 53) + 1, 2 ** 53 - 1]) } : {}),
        ...(rand() < 0.3 ? { stream: true, stream_options: { include_usage: true } } : {}),
      };
      fresh(post(`valid but extreme (#${i})`, path, JSON.stringify(valid)));
    } else {
      // The body's bytes themselves.
      const text = JSON.stringify(base);
      const cut = Math.floor(rand() * text.length);
      const choice = rand();
      const body = choice < 0.3 ? text.slice(0, cut) : choice < 0.6 ? text.slice(0, cut) + pick(['\u0000', '}', ']', '"', '\\', '\ud800', ',,', 'NaN', 'Infinity']) + text.slice(cut) : choice < 0.8 ? text.replace(/:/g, pick([': ', ':\n', ' : '])) : `${text}${text}`;
      fresh(post(`mangled body (#${i})`, path, body));
    }
  }
  return out;
}
