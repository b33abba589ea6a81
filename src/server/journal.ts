import type { FastifyInstance, FastifyRequest } from 'fastify';
import { mergeBills, type Bill } from '../economy/ledger.js';
import type { Logger } from '../log.js';
import type { QuoteBody } from './quote.js';

/** How an API request ended. `invalid`: answered 4xx before reaching the market. */
export type RequestOutcome = 'completed' | 'rejected' | 'aborted' | 'failed' | 'invalid';

/** What the scheduler knows of a request once it is done (snake_case: it goes on the wire). */
export interface MarketPart {
  outcome: 'completed' | 'rejected' | 'aborted';
  finish_reason: string | null;
  prompt_tokens: number;
  cached_tokens: number;
  completion_tokens: number;
  preemptions: number;
  ttft_ms: number | null;
  tpot_ms: number | null;
  queue_ms: number | null;
  /** The value the client declared (`value`), or its bid per token. */
  value: number | null;
  bid: number | null;
  value_realized: number;
  bill: Bill | null;
  /** For a rejection: the quote the client got, and its message. */
  quote: (QuoteBody & { message: string }) | null;
}

/** One finished API request: the log line's fields and a row of the console's requests table. */
export interface RequestRecord extends Partial<Omit<MarketPart, 'outcome'>> {
  id: string;
  /** Unix ms when it ended. */
  time: number;
  method: string;
  path: string;
  /** HTTP status sent; 499 when the client left before any response. */
  status: number;
  outcome: RequestOutcome;
  tenant: string | null;
  /** The OpenAI error code of an error response. */
  error_code: string | null;
  e2e_ms: number;
}

/** A request in flight: done once its HTTP exchange has closed and any generation has settled. */
class Exchange {
  readonly start = performance.now();
  id: string;
  tenant: string | null = null;
  errorCode: string | null = null;
  market: MarketPart | undefined;
  generating = false;
  httpClosed = false;
  status = 0;
  constructor(
    readonly method: string,
    readonly path: string,
    reqId: string,
  ) {
    this.id = reqId;
  }
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set for API routes: the journal's record of this request. */
    exchange: Exchange | null;
  }
}

/**
 * One record per finished API request, written when both its HTTP exchange has closed and its
 * generation (if any) has settled, whichever is last: a client that disconnects mid-stream is
 * recorded once the scheduler has freed its request, with the scheduler's view of it. Each
 * record is logged as one `info` line and handed to subscribers (the console).
 */
export class RequestJournal {
  private readonly live = new Map<string, Exchange>();
  private readonly subscribers: Array<(r: RequestRecord) => void> = [];

  constructor(private readonly log: Logger | undefined) {}

  /** Opens an exchange for each request to an API route (`POST /v1/…`). */
  install(app: FastifyInstance): void {
    app.decorateRequest('exchange', null);
    app.addHook('onRequest', async (req, reply) => {
      if (req.method !== 'POST' || !req.url.startsWith('/v1/')) return;
      req.exchange = new Exchange(req.method, req.url.split('?')[0] ?? req.url, String(req.id));
      const res = reply.raw;
      // 'close' comes after 'finish' for a complete response, alone when the client went first.
      res.once('close', () => this.closed(req, res.headersSent ? res.statusCode : 499));
    });
  }

  subscribe(fn: (r: RequestRecord) => void): void {
    this.subscribers.push(fn);
  }

  /** Called when the request is handed to the generator under `id`, for `tenant`. */
  generating(req: FastifyRequest, id: string, tenant: string): void {
    const ex = req.exchange;
    if (ex === null) return;
    ex.id = id;
    ex.tenant = tenant;
    ex.generating = true;
    this.live.set(id, ex);
  }

  /** The scheduler finished (or turned away) a run of the request submitted under `id` (one per choice). */
  marketDone(id: string, part: MarketPart): void {
    const ex = this.live.get(id);
    if (ex !== undefined) ex.market = ex.market === undefined ? part : combine(ex.market, part);
  }

  /** The generation promise settled: nothing more will come from the scheduler. */
  settled(req: FastifyRequest): void {
    const ex = req.exchange;
    if (ex === null || !ex.generating) return;
    ex.generating = false;
    this.live.delete(ex.id);
    if (ex.httpClosed) this.complete(ex);
  }

  noteError(req: FastifyRequest, code: string | null): void {
    if (req.exchange !== null) req.exchange.errorCode = code;
  }

  /** The response is finished or the connection is gone. */
  closed(req: FastifyRequest, status: number): void {
    const ex = req.exchange;
    if (ex === null || ex.httpClosed) return;
    ex.httpClosed = true;
    ex.status = status;
    if (!ex.generating) this.complete(ex);
  }

  private complete(ex: Exchange): void {
    const m = ex.market;
    const s = ex.status;
    const outcome: RequestOutcome = s >= 500 ? 'failed' : m !== undefined ? m.outcome : s === 499 ? 'aborted' : s >= 400 ? 'invalid' : 'completed';
    const record: RequestRecord = {
      id: ex.id,
      time: Date.now(),
      method: ex.method,
      path: ex.path,
      status: s,
      tenant: ex.tenant,
      ...m,
      outcome,
      error_code: ex.errorCode ?? m?.quote?.reason ?? null,
      e2e_ms: round(performance.now() - ex.start),
    };
    this.log?.info(logFields(record), 'request');
    for (const fn of this.subscribers) fn(record);
  }
}

const WORST: Record<MarketPart['outcome'], number> = { completed: 0, aborted: 1, rejected: 2 };

/** Two runs (choices) of one request as one: the prompt once, completions, waste and value summed. */
function combine(a: MarketPart, b: MarketPart): MarketPart {
  const min = (x: number | null, y: number | null) => (x === null ? y : y === null ? x : Math.min(x, y));
  const max = (x: number | null, y: number | null) => (x === null ? y : y === null ? x : Math.max(x, y));
  return {
    ...a,
    // One run turned away or cut short is what the client saw.
    outcome: WORST[b.outcome] > WORST[a.outcome] ? b.outcome : a.outcome,
    quote: a.quote ?? b.quote,
    completion_tokens: a.completion_tokens + b.completion_tokens,
    preemptions: a.preemptions + b.preemptions,
    ttft_ms: min(a.ttft_ms, b.ttft_ms),
    tpot_ms: max(a.tpot_ms, b.tpot_ms),
    queue_ms: min(a.queue_ms, b.queue_ms),
    value: a.value === null && b.value === null ? null : (a.value ?? 0) + (b.value ?? 0),
    value_realized: a.value_realized + b.value_realized,
    bill: a.bill === null ? b.bill : b.bill === null ? a.bill : mergeBills([a.bill, b.bill]),
  };
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** The log line: the record flattened, the bill reduced to its total (the itemized bill is in the response). */
function logFields(r: RequestRecord): Record<string, unknown> {
  // pino stamps the line's own time.
  const { bill, quote, time: _time, ...rest } = r;
  const out: Record<string, unknown> = { ...rest, bill_total: bill?.total ?? null };
  if (quote) out.quote = quote;
  return out;
}
