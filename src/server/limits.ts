/**
 * Limits that keep one client from taking what the others need: how long a request may take
 * to arrive, how many connections the server and each client address hold, and how many
 * requests may wait. Each has a default sensible for a single inference server and an option
 * of `marginal serve`; each rejection is an OpenAI-style error with a stable code.
 */
import { readFileSync } from 'node:fs';
import type { Server as HttpServer } from 'node:http';
import type { Socket } from 'node:net';
import { AddressConnectionLimitError, ConnectionLimitError, QueueFullError } from '../errors.js';
import { answerSocket, describeError } from './errors-http.js';

export interface ServerLimits {
  /** Largest request body, bytes (413 beyond). */
  bodyLimit: number;
  /** The whole request — headers and body — must arrive within this, ms (408 after; 0 = no limit). */
  requestTimeoutMs: number;
  /** The headers must arrive within this, ms (408 after). */
  headersTimeoutMs: number;
  /** An idle keep-alive connection is closed after this, ms. */
  keepAliveTimeoutMs: number;
  /** Connections held at once, all clients together (503 beyond). */
  maxConnections: number;
  /** Connections held at once from one client address (429 beyond). */
  maxConnectionsPerAddress: number;
  /** Requests accepted and not yet running — being tokenized or waiting for the scheduler (503 beyond). */
  maxQueued: number;
  /** Prompts waiting for the tokenizer pool, all clients together (503 beyond). */
  tokenizerQueue: number;
  /** Prompts waiting for the tokenizer pool from one client (429 beyond). */
  tokenizerQueuePerClient: number;
  /** After SIGTERM, how long in-flight requests may take before they are aborted, ms. */
  drainTimeoutMs: number;
}

/**
 * Connections the process can hold without running out of file descriptors: the soft limit
 * less room for the model, workers and logs. Past the descriptor limit `accept` fails and every
 * client, /health included, sees resets; below it, the ones over the cap get a 503 they can read.
 */
function descriptorBudget(): number {
  try {
    const m = readFileSync('/proc/self/limits', 'utf8').match(/^Max open files\s+(\d+)/m);
    if (m) return Math.max(64, Number(m[1]) - 128);
  } catch {
    /* not Linux: no way to ask */
  }
  return 1024 - 128;
}

export function defaultLimits(): ServerLimits {
  return {
    bodyLimit: 2 * 1024 * 1024,
    requestTimeoutMs: 30_000,
    headersTimeoutMs: 10_000,
    keepAliveTimeoutMs: 5_000,
    maxConnections: Math.min(4096, descriptorBudget()),
    maxConnectionsPerAddress: 256,
    maxQueued: 1024,
    tokenizerQueue: 512,
    tokenizerQueuePerClient: 64,
    drainTimeoutMs: 25_000,
  };
}

/** Defaults overridden by what is given; throws on values that cannot work. */
export function resolveLimits(given: Partial<ServerLimits> = {}): ServerLimits {
  const l = { ...defaultLimits() };
  for (const [k, v] of Object.entries(given) as [keyof ServerLimits, number | undefined][]) if (v !== undefined) l[k] = v;
  for (const [k, v] of Object.entries(l)) {
    if (!(Number.isInteger(v) && v >= 0)) throw new RangeError(`${k} must be a non-negative integer, got ${v}`);
  }
  for (const k of ['bodyLimit', 'headersTimeoutMs', 'maxConnections', 'maxConnectionsPerAddress', 'maxQueued', 'tokenizerQueue', 'tokenizerQueuePerClient'] as const) {
    if (l[k] < 1) throw new RangeError(`${k} must be at least 1, got ${l[k]}`);
  }
  // Node requires it, and a request that must arrive faster than its own headers makes no sense.
  if (l.requestTimeoutMs > 0 && l.headersTimeoutMs > l.requestTimeoutMs) l.headersTimeoutMs = l.requestTimeoutMs;
  return l;
}

/** fastify's (and node's http.Server's) options for these limits. */
export function fastifyServerOptions(l: ServerLimits) {
  const shortest = Math.min(l.headersTimeoutMs, l.requestTimeoutMs > 0 ? l.requestTimeoutMs : Infinity);
  return {
    bodyLimit: l.bodyLimit,
    requestTimeout: l.requestTimeoutMs,
    keepAliveTimeout: l.keepAliveTimeoutMs,
    // No idle timeout on a connection as such: a request waiting for its turn sends nothing, and
    // a slow stream is the server's doing. Slow clients are bounded by the request timeouts.
    connectionTimeout: 0,
    http: {
      headersTimeout: l.headersTimeoutMs,
      // Node checks request and header timeouts on this period (default 30 s, which would let a
      // 1 s timeout run 31 s).
      connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(shortest / 4))),
    },
  };
}

/**
 * Caps connections, in all and per client address. Node's own `maxConnections` drops the
 * connections over it without a word; here they get a response they can read (429 for an
 * address over its share, 503 for a full server) and the connection closes.
 */
export function limitConnections(server: HttpServer, l: Pick<ServerLimits, 'maxConnections' | 'maxConnectionsPerAddress'>): { open(): number } {
  const byAddress = new Map<string, number>();
  let open = 0;
  // The http.Server's own listener (it attaches the parser) runs only for admitted connections.
  const listeners = server.listeners('connection') as ((socket: Socket) => void)[];
  server.removeAllListeners('connection');
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress ?? '';
    const mine = byAddress.get(address) ?? 0;
    if (open >= l.maxConnections) {
      answerSocket(socket, describeError(new ConnectionLimitError(`the server holds its maximum of ${l.maxConnections} connections; retry shortly`)));
      return;
    }
    if (mine >= l.maxConnectionsPerAddress) {
      answerSocket(socket, describeError(new AddressConnectionLimitError(`this client address holds its maximum of ${l.maxConnectionsPerAddress} connections; reuse them or close some`)));
      return;
    }
    open++;
    byAddress.set(address, mine + 1);
    socket.once('close', () => {
      open--;
      const n = (byAddress.get(address) ?? 1) - 1;
      if (n > 0) byAddress.set(address, n);
      else byAddress.delete(address);
    });
    for (const f of listeners) f.call(server, socket);
  });
  return { open: () => open };
}

/**
 * Counts requests between entering a generation route and their response's end, and turns one
 * away (QueueFullError, 503) when as many as `maxQueued` of them are not yet running.
 */
export class RequestGate {
  private active = 0;

  constructor(
    private readonly maxQueued: number,
    private readonly running: () => number,
  ) {}

  /** Admits a request or throws; call the returned function exactly once when it is done. */
  enter(): () => void {
    if (this.active - this.running() >= this.maxQueued) {
      throw new QueueFullError(`${this.maxQueued} requests are already waiting; retry shortly`);
    }
    this.active++;
    let left = false;
    return () => {
      if (left) return;
      left = true;
      this.active--;
    };
  }

  get size(): number {
    return this.active;
  }
}
