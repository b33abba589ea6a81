import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ContextLengthError, ERROR_CLASSES, EngineWorkerError, registeredCodes, RequestRejectedError, statusOfCode } from '../src/errors.js';
import { reviveError, serializeError } from '../src/engine/worker-engine.js';
import { describeClientError, describeError, rawResponse, wireCode } from '../src/server/errors-http.js';
import { resolveLimits } from '../src/server/limits.js';

const readme = readFileSync(fileURLToPath(new URL('../README.md', import.meta.url)), 'utf8');

describe('the error registry', () => {
  test('every class has a MARGINAL_ code and an HTTP status; a code means one status', () => {
    const seen = new Map<string, number>();
    for (const C of ERROR_CLASSES) {
      const e = new C('x');
      assert.match(e.code, /^MARGINAL_[A-Z_]+$/);
      assert.ok(Number.isInteger(e.statusCode) && (e.statusCode as number) >= 400 && (e.statusCode as number) < 600, e.code);
      const before = seen.get(e.code);
      if (before !== undefined) assert.equal(before, e.statusCode, `${e.code} has one status`);
      seen.set(e.code, e.statusCode as number);
      assert.equal(statusOfCode(e.code), e.statusCode);
    }
    assert.equal(new EngineWorkerError('x').code, 'MARGINAL_ENGINE_WORKER', 'the engine worker error lives in the registry');
  });

  test("README's error table lists every code with its status", () => {
    const rows = new Map<string, number>();
    for (const m of readme.matchAll(/^\| ((?:`[a-z_]+`(?:, )?)+) \| (\d{3}) \|/gm)) {
      for (const c of (m[1] as string).matchAll(/`([a-z_]+)`/g)) rows.set(c[1] as string, Number(m[2]));
    }
    for (const [code, status] of registeredCodes()) {
      if (code === 'MARGINAL_REJECTED' || code === 'MARGINAL_BUDGET_EXHAUSTED') continue; // their wire codes are the quote reasons
      assert.equal(rows.get(wireCode(code)), status, `README lists \`${wireCode(code)}\` as ${status}`);
    }
    for (const reason of ['price_above_bid', 'slo_unreachable', 'value_cap', 'budget_exhausted']) assert.ok(rows.has(reason), reason);
  });

  test('the status follows from the class, never from a message or a stray statusCode', () => {
    // An error revived from the engine worker is a plain Error carrying the code: it maps by code.
    const revived = reviveError(serializeError(new ContextLengthError('the prompt is too long')));
    assert.ok(!(revived instanceof ContextLengthError));
    Object.assign(revived, { statusCode: 500 });
    const d = describeError(revived);
    assert.equal(d.status, 400);
    assert.equal(d.body.error.code, 'context_length');
    // A 429 without a quote is still the registry's 429, with its type.
    const r = describeError(new RequestRejectedError('budget something'));
    assert.equal(r.status, 429);
    assert.equal(r.body.error.type, 'rate_limit_error');
  });

  test("fastify's and node's own errors, and anything unknown, come out in the OpenAI shape", () => {
    const cases: [unknown, number, string][] = [
      [Object.assign(new Error('body/max_tokens must be integer'), { validation: [{}], statusCode: 400, code: 'FST_ERR_VALIDATION' }), 400, 'invalid_request'],
      [Object.assign(new Error('Request body is too large'), { statusCode: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE' }), 413, 'body_too_large'],
      [Object.assign(new Error('Unsupported Media Type'), { statusCode: 415, code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE' }), 415, 'unsupported_media_type'],
      [Object.assign(new SyntaxError('Unexpected end of JSON input'), { statusCode: 400 }), 400, 'invalid_request'],
      [new TypeError("Cannot read properties of undefined (reading 'secret')"), 500, 'internal'],
      ['a thrown string', 500, 'internal'],
    ];
    for (const [e, status, code] of cases) {
      const d = describeError(e);
      assert.equal(d.status, status, code);
      assert.equal(d.body.error.code, code);
      assert.equal(typeof d.body.error.message, 'string');
      assert.ok(!d.body.error.message.includes('secret'), 'internal details stay in the log');
    }
    assert.equal(describeError(Object.assign(new Error('body/max_tokens must be integer'), { validation: [{}] })).body.error.param, 'max_tokens');
    for (const [code, status] of [['ERR_HTTP_REQUEST_TIMEOUT', 408], ['HPE_HEADER_OVERFLOW', 431], ['HPE_INVALID_METHOD', 400], ['HPE_UNEXPECTED_CONTENT_LENGTH', 400]] as const) {
      const d = describeClientError(Object.assign(new Error('x'), { code }));
      assert.equal(d.status, status, code);
      const raw = rawResponse(d);
      assert.match(raw, new RegExp(`^HTTP/1\\.1 ${status} `));
      const body = JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)) as { error: { code: string } };
      assert.equal(Buffer.byteLength(raw.slice(raw.indexOf('\r\n\r\n') + 4)), Number(raw.match(/content-length: (\d+)/)?.[1]));
      assert.equal(typeof body.error.code, 'string');
    }
  });

  test('limits: defaults that work, and values that cannot are refused', () => {
    const d = resolveLimits();
    assert.ok(d.headersTimeoutMs <= d.requestTimeoutMs && d.requestTimeoutMs > 0);
    assert.ok(d.keepAliveTimeoutMs < d.headersTimeoutMs, 'an idle keep-alive connection closes before a header timeout could fire on it');
    assert.ok(d.maxConnectionsPerAddress <= d.maxConnections);
    assert.ok(d.drainTimeoutMs < 30_000, "inside Kubernetes' default grace period");
    assert.throws(() => resolveLimits({ maxConnections: 0 }), /maxConnections/);
    assert.throws(() => resolveLimits({ requestTimeoutMs: -1 }), /requestTimeoutMs/);
    assert.throws(() => resolveLimits({ maxQueued: 1.5 }), /maxQueued/);
    assert.equal(resolveLimits({ requestTimeoutMs: 1000, headersTimeoutMs: 5000 }).headersTimeoutMs, 1000);
  });
});
