import createError from '@fastify/error';

/**
 * The one registry of errors (as fastify's lib/errors.js): every error that can cross the API
 * boundary is a class made here with a stable code and its HTTP status, so the server maps it
 * to an OpenAI-style JSON body and the CLI to a message and exit code without string matching.
 * The status of an error follows from its class (looked up by code, so an error revived from a
 * worker thread maps the same way), never from its message.
 *
 * On the wire `error.code` is the class code without `MARGINAL_`, lower-cased
 * (MARGINAL_CONTEXT_LENGTH → `context_length`), except rejections with a quote, whose code is
 * the quote's reason. README.md lists every wire code; test/errors.test.ts checks the two agree.
 */

// --- models, tokenizers, engines (CLI and start-up; 500 when a request meets them) -----------
export const ModelNotFoundError = createError<[string]>('MARGINAL_MODEL_NOT_FOUND', 'model not found: %s', 404);
export const ModelFormatError = createError<[string]>('MARGINAL_MODEL_FORMAT', 'invalid model: %s', 500);
export const CheckpointFormatError = createError<[string]>('MARGINAL_CHECKPOINT_FORMAT', 'invalid checkpoint: %s', 400);
export const TokenizerFormatError = createError<[string]>('MARGINAL_TOKENIZER_FORMAT', 'invalid tokenizer: %s', 400);
/** A well-formed model file of a kind marginal does not run (an architecture, a weight type, a tokenizer), named in the message. */
export const UnsupportedModelError = createError<[string]>('MARGINAL_UNSUPPORTED_MODEL', 'unsupported model: %s', 400);
export const EngineCapacityError = createError<[string]>('MARGINAL_ENGINE_CAPACITY', '%s', 503);
/** The engine's worker thread failed or exited: nothing can run until a new engine is created. */
export const EngineWorkerError = createError<[string]>('MARGINAL_ENGINE_WORKER', 'engine worker: %s', 500);
/** /health: the engine is not running, so nothing can be served. */
export const EngineDownError = createError<[string]>('MARGINAL_ENGINE_DOWN', '%s', 503);

// --- what a request asks for -----------------------------------------------------------------
export const InvalidSamplingError = createError<[string]>('MARGINAL_INVALID_SAMPLING', 'invalid sampling parameter: %s', 400);
export const ContextLengthError = createError<[string]>('MARGINAL_CONTEXT_LENGTH', '%s', 400);
export const InvalidArgumentError = createError<[string]>('MARGINAL_INVALID_ARGUMENT', '%s', 400);
/** The body does not match the API's schema (wrong type, missing field) or is not JSON. */
export const InvalidRequestError = createError<[string]>('MARGINAL_INVALID_REQUEST', '%s', 400);
/** A request to a protected route without a key, or with a key the server does not know. */
export const InvalidApiKeyError = createError<[string]>('MARGINAL_INVALID_API_KEY', '%s', 401);
/** A known key that lacks the right for this route (the console needs an admin key). */
export const AdminKeyRequiredError = createError<[string]>('MARGINAL_ADMIN_KEY_REQUIRED', '%s', 403);
/** A request names a model this server does not serve. */
export const UnknownModelError = createError<[string]>('MARGINAL_MODEL_NOT_FOUND', '%s', 404);
export const RouteNotFoundError = createError<[string]>('MARGINAL_ROUTE_NOT_FOUND', '%s', 404);
/** CONNECT and other methods node hands to the server outside the router. */
export const MethodNotAllowedError = createError<[string]>('MARGINAL_METHOD_NOT_ALLOWED', '%s', 405);
export const BodyTooLargeError = createError<[string]>('MARGINAL_BODY_TOO_LARGE', '%s', 413);
export const UnsupportedMediaTypeError = createError<[string]>('MARGINAL_UNSUPPORTED_MEDIA_TYPE', '%s', 415);

// --- HTTP that cannot be parsed or arrives too slowly (answered on the raw socket) ------------
export const MalformedRequestError = createError<[string]>('MARGINAL_MALFORMED_REQUEST', '%s', 400);
export const RequestTimeoutError = createError<[string]>('MARGINAL_REQUEST_TIMEOUT', '%s', 408);
export const HeadersTooLargeError = createError<[string]>('MARGINAL_HEADERS_TOO_LARGE', '%s', 431);
/** An `Expect` header other than 100-continue. */
export const ExpectationFailedError = createError<[string]>('MARGINAL_EXPECTATION_FAILED', '%s', 417);

/** MARGINAL_IO_BINDING=1 demanded the native runner where it cannot run. */
export const IoBindingUnavailableError = createError<[string]>('MARGINAL_IO_BINDING_UNAVAILABLE', 'I/O binding is unavailable: %s', 500);

// --- the economy ---------------------------------------------------------------------------
/** The scheduler turned the request away with a price quote (`quote` on the error): HTTP 429. */
export const RequestRejectedError = createError<[string]>('MARGINAL_REJECTED', '%s', 429);
/** The tenant's budget is spent, and nothing in flight will refund any of it: HTTP 402. */
export const BudgetExhaustedError = createError<[string]>('MARGINAL_BUDGET_EXHAUSTED', '%s', 402);

// --- limits: one client cannot take what others need -----------------------------------------
/** This client (address or tenant) has as many prompts waiting for the tokenizer as it may. */
export const ClientQueueFullError = createError<[string]>('MARGINAL_CLIENT_QUEUE_FULL', '%s', 429);
/** This client address holds as many connections as it may. */
export const AddressConnectionLimitError = createError<[string]>('MARGINAL_ADDRESS_CONNECTION_LIMIT', '%s', 429);
/** The server holds as many connections as it may. */
export const ConnectionLimitError = createError<[string]>('MARGINAL_CONNECTION_LIMIT', '%s', 503);
/** As many requests wait (to be tokenized or scheduled) as the server queues. */
export const QueueFullError = createError<[string]>('MARGINAL_QUEUE_FULL', '%s', 503);
/** The tokenizer's queue is full. */
export const TokenizerBusyError = createError<[string]>('MARGINAL_TOKENIZER_BUSY', '%s', 503);

// --- shutdown and the unexpected -------------------------------------------------------------
/** The server is draining: it finishes what it has and takes nothing new. */
export const DrainingError = createError<[string]>('MARGINAL_DRAINING', '%s', 503);
/** The drain timed out and this request, still unfinished, was aborted. */
export const ShutdownError = createError<[string]>('MARGINAL_SHUTDOWN', '%s', 503);
/** Anything not in this registry: the body says no more than this (details go to the log). */
export const InternalError = createError<[string]>('MARGINAL_INTERNAL', '%s', 500);

/** Every error class above (ModelNotFoundError and UnknownModelError share their code). */
export const ERROR_CLASSES = [
  ModelNotFoundError,
  ModelFormatError,
  CheckpointFormatError,
  TokenizerFormatError,
  UnsupportedModelError,
  EngineCapacityError,
  EngineWorkerError,
  EngineDownError,
  IoBindingUnavailableError,
  InvalidSamplingError,
  ContextLengthError,
  InvalidArgumentError,
  InvalidRequestError,
  InvalidApiKeyError,
  AdminKeyRequiredError,
  UnknownModelError,
  RouteNotFoundError,
  MethodNotAllowedError,
  BodyTooLargeError,
  UnsupportedMediaTypeError,
  MalformedRequestError,
  RequestTimeoutError,
  HeadersTooLargeError,
  ExpectationFailedError,
  RequestRejectedError,
  BudgetExhaustedError,
  ClientQueueFullError,
  AddressConnectionLimitError,
  ConnectionLimitError,
  QueueFullError,
  TokenizerBusyError,
  DrainingError,
  ShutdownError,
  InternalError,
] as const;

const STATUS_BY_CODE: ReadonlyMap<string, number> = new Map(ERROR_CLASSES.map((C) => [new C('').code, new C('').statusCode as number]));

/** The HTTP status of an error code in the registry; undefined for codes it does not hold. */
export function statusOfCode(code: string): number | undefined {
  return STATUS_BY_CODE.get(code);
}

/** Every registered code with its status, for documentation and its test. */
export function registeredCodes(): ReadonlyMap<string, number> {
  return STATUS_BY_CODE;
}

export interface MarginalError extends Error {
  code: string;
  statusCode?: number;
  /** The request field at fault, reported as OpenAI's `error.param`. */
  param?: string;
}

export function isMarginalError(e: unknown): e is MarginalError {
  return e instanceof Error && typeof (e as { code?: unknown }).code === 'string' && String((e as unknown as { code: string }).code).startsWith('MARGINAL_');
}
