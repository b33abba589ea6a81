import createError from '@fastify/error';

/**
 * Every error that can cross the API boundary has a stable code and an HTTP status, in
 * @fastify/error style, so the server can map it to an OpenAI-style JSON body and the CLI to
 * a message and exit code without string matching.
 */
export const ModelNotFoundError = createError<[string]>('MARGINAL_MODEL_NOT_FOUND', 'model not found: %s', 404);
export const ModelFormatError = createError<[string]>('MARGINAL_MODEL_FORMAT', 'invalid model: %s', 500);
export const CheckpointFormatError = createError<[string]>('MARGINAL_CHECKPOINT_FORMAT', 'invalid checkpoint: %s', 400);
export const TokenizerFormatError = createError<[string]>('MARGINAL_TOKENIZER_FORMAT', 'invalid tokenizer: %s', 400);
export const InvalidSamplingError = createError<[string]>('MARGINAL_INVALID_SAMPLING', 'invalid sampling parameter: %s', 400);
export const ContextLengthError = createError<[string]>('MARGINAL_CONTEXT_LENGTH', '%s', 400);
export const InvalidArgumentError = createError<[string]>('MARGINAL_INVALID_ARGUMENT', '%s', 400);
export const EngineCapacityError = createError<[string]>('MARGINAL_ENGINE_CAPACITY', '%s', 503);
export const IoBindingUnavailableError = createError<[string]>('MARGINAL_IO_BINDING_UNAVAILABLE', 'I/O binding is unavailable: %s', 500);
/** The scheduler turned the request away with a price quote (`quote` on the error): HTTP 429. */
export const RequestRejectedError = createError<[string]>('MARGINAL_REJECTED', '%s', 429);
/** The tenant's budget is spent, and nothing in flight will refund any of it: HTTP 402. */
export const BudgetExhaustedError = createError<[string]>('MARGINAL_BUDGET_EXHAUSTED', '%s', 402);

export interface MarginalError extends Error {
  code: string;
  statusCode?: number;
  /** The request field at fault, reported as OpenAI's `error.param`. */
  param?: string;
}

export function isMarginalError(e: unknown): e is MarginalError {
  return e instanceof Error && typeof (e as { code?: unknown }).code === 'string' && String((e as unknown as { code: string }).code).startsWith('MARGINAL_');
}
