/**
 * Everything the server answers with an error has one shape, OpenAI's
 * `{"error": {"message", "type", "param", "code"}}`: errors thrown by handlers, fastify's own
 * (bad JSON, body too large, wrong content type), the HTTP parser's (malformed requests, headers
 * too large, requests too slow), connection limits and shutdown. The status comes from the
 * error's class in `src/errors.ts`; fastify's errors are first translated into those classes.
 */
import { STATUS_CODES, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import {
  BodyTooLargeError,
  BudgetExhaustedError,
  ExpectationFailedError,
  HeadersTooLargeError,
  InternalError,
  InvalidRequestError,
  isMarginalError,
  MalformedRequestError,
  MethodNotAllowedError,
  RequestRejectedError,
  RequestTimeoutError,
  RouteNotFoundError,
  statusOfCode,
  UnsupportedMediaTypeError,
  type MarginalError,
} from '../errors.js';
import type { Quote } from '../scheduler/request.js';
import { quoteHeaders, rejectionBody } from './quote.js';

export type ErrorType = 'invalid_request_error' | 'authentication_error' | 'permission_error' | 'not_found_error' | 'rate_limit_error' | 'insufficient_quota' | 'server_error';

export interface ErrorBody {
  error: { message: string; type: ErrorType; param: string | null; code: string | null; [extra: string]: unknown };
  [extra: string]: unknown;
}

export interface HttpError {
  status: number;
  body: ErrorBody;
  headers: Record<string, string>;
}

/** OpenAI's error `type` for a status. */
export function errorType(status: number): ErrorType {
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 402) return 'insufficient_quota';
  if (status === 404) return 'not_found_error';
  if (status === 429) return 'rate_limit_error';
  return status >= 500 ? 'server_error' : 'invalid_request_error';
}

/** The wire code of a registry code: MARGINAL_CONTEXT_LENGTH → context_length. */
export function wireCode(code: string): string {
  return code.replace(/^MARGINAL_/, '').toLowerCase();
}

/** Seconds a client should wait before retrying a limit that clears by itself (queues, connections). */
const RETRY_LIMITS_AFTER_S = 1;
const RETRYABLE_LIMITS = new Set(['MARGINAL_QUEUE_FULL', 'MARGINAL_TOKENIZER_BUSY', 'MARGINAL_CLIENT_QUEUE_FULL', 'MARGINAL_CONNECTION_LIMIT', 'MARGINAL_ADDRESS_CONNECTION_LIMIT', 'MARGINAL_ENGINE_CAPACITY']);

function bodyOf(message: string, status: number, param: string | null, code: string): ErrorBody {
  return { error: { message, type: errorType(status), param, code } };
}

/** Headers that go with an error of this code: when to retry, and whether this connection ends. */
function headersFor(code: string): Record<string, string> {
  if (RETRYABLE_LIMITS.has(code)) return { 'retry-after': String(RETRY_LIMITS_AFTER_S), 'x-should-retry': 'true' };
  if (code === 'MARGINAL_DRAINING' || code === 'MARGINAL_SHUTDOWN') return { connection: 'close' };
  return {};
}

/** fastify's own errors, as the registry's classes (by fastify's stable codes, then by status). */
function fromFastify(err: Error & { code?: string; statusCode?: number; validation?: unknown }): MarginalError | undefined {
  if (err.validation) {
    const param = (err.message.match(/^body\/([\w/]+)/)?.[1] ?? null)?.replace(/\//g, '.');
    const e = new InvalidRequestError(err.message) as MarginalError;
    if (param) e.param = param;
    return e;
  }
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new BodyTooLargeError('the request body is larger than this server accepts');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new UnsupportedMediaTypeError(`${err.message}: send application/json`);
    case 'FST_ERR_BAD_URL':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new MalformedRequestError(err.message);
    default:
      break;
  }
  const status = err.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    if (status === 404) return new RouteNotFoundError(err.message);
    if (status === 413) return new BodyTooLargeError(err.message);
    if (status === 415) return new UnsupportedMediaTypeError(err.message);
    // Bad JSON (a SyntaxError fastify marks 400), an empty body, anything else the client sent wrong.
    return new InvalidRequestError(err.message);
  }
  return undefined;
}

/** An HTTP-ready error: status, OpenAI body and headers, from anything a handler or fastify can throw. */
export function describeError(e: unknown): HttpError {
  const err = e as Error & { code?: string; statusCode?: number; param?: string; quote?: Quote; validation?: unknown };
  if (err?.quote !== undefined && (e instanceof RequestRejectedError || e instanceof BudgetExhaustedError)) {
    return { status: e.statusCode as number, body: rejectionBody(err.message, err.quote) as unknown as ErrorBody, headers: quoteHeaders(err.quote) };
  }
  const known = isMarginalError(e) && statusOfCode(err.code as string) !== undefined ? (e as MarginalError) : e instanceof Error ? fromFastify(err) : undefined;
  if (known === undefined) {
    const internal = new InternalError('internal error');
    return { status: 500, body: bodyOf(internal.message, 500, null, wireCode(internal.code)), headers: {} };
  }
  const status = statusOfCode(known.code) as number;
  return { status, body: bodyOf(known.message, status, known.param ?? null, wireCode(known.code)), headers: headersFor(known.code) };
}

/** A complete HTTP/1.1 response as text, for answers written straight to a socket. */
export function rawResponse(d: HttpError): string {
  const body = JSON.stringify(d.body);
  const lines = [`HTTP/1.1 ${d.status} ${STATUS_CODES[d.status] ?? 'Error'}`, 'content-type: application/json; charset=utf-8', `content-length: ${Buffer.byteLength(body)}`, 'connection: close'];
  for (const [k, v] of Object.entries(d.headers)) if (k !== 'connection') lines.push(`${k}: ${v}`);
  return `${lines.join('\r\n')}\r\n\r\n${body}`;
}

const ANSWERED = Symbol('marginal.answered');
/** How long a socket we answered on the raw level is read (and discarded) before it is destroyed. */
const LINGER_MS = 2000;

/**
 * Writes `d` to a socket outside any request (parser errors, timeouts, refused connections) and
 * closes it the way a client can read: half-close, keep reading what the client still sends for
 * a moment (an immediate destroy with unread data makes the kernel send a reset, and the client
 * may lose the answer), then destroy.
 */
export function answerSocket(socket: Socket, d: HttpError): void {
  const s = socket as Socket & { [ANSWERED]?: boolean };
  if (s[ANSWERED] || s.destroyed) return;
  s[ANSWERED] = true;
  if (s.writable) s.end(rawResponse(d));
  s.on('error', () => {});
  s.resume();
  const t = setTimeout(() => s.destroy(), LINGER_MS);
  t.unref();
  s.once('close', () => clearTimeout(t));
}

/** The HTTP parser's complaint, as a registry error. */
export function describeClientError(err: Error & { code?: string }): HttpError {
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return describeError(new RequestTimeoutError('the request (headers and body) did not arrive within the server\'s request timeout'));
  if (err.code === 'HPE_HEADER_OVERFLOW') return describeError(new HeadersTooLargeError('the request headers are larger than this server accepts'));
  const what = typeof err.code === 'string' && err.code.startsWith('HPE_') ? ` (${err.code.slice(4).toLowerCase().replace(/_/g, ' ')})` : '';
  return describeError(new MalformedRequestError(`malformed HTTP request${what}`));
}

/** fastify's clientErrorHandler: the parser's errors in the OpenAI shape, never a reset. */
export function clientErrorHandler(err: Error & { code?: string }, socket: Socket): void {
  // A reset connection has nobody left to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  // A response already under way on this socket cannot be followed by another one.
  if ((socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent) {
    socket.destroy();
    return;
  }
  answerSocket(socket, describeClientError(err));
}

/**
 * What node answers by itself, outside fastify, in the OpenAI shape too: an `Expect` it does
 * not know (node's own 417 has an empty body) and CONNECT (node drops the connection unanswered).
 */
export function answerOutsideRouter(server: HttpServer): void {
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    const d = describeError(new ExpectationFailedError(`Expect: ${String(req.headers.expect ?? '').slice(0, 64)} is not supported`));
    const body = JSON.stringify(d.body);
    res.writeHead(d.status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), connection: 'close' });
    res.end(body);
  });
  server.on('connect', (_req: IncomingMessage, socket: Socket) => answerSocket(socket, describeError(new MethodNotAllowedError('CONNECT is not supported: this is not a proxy'))));
}

/** fastify's `frameworkErrors`: URLs it cannot decode, in the OpenAI shape. */
export function frameworkErrors(err: FastifyError, _req: FastifyRequest, reply: FastifyReply): void {
  const d = err.code === 'FST_ERR_BAD_URL' ? describeError(new MalformedRequestError(err.message)) : describeError(err);
  reply.code(d.status).headers(d.headers).send(d.body);
}
