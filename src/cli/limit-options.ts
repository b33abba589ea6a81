import { InvalidArgumentError as CommanderArgError, type Command } from 'commander';
import { InvalidArgumentError } from '../errors.js';
import { defaultLimits, resolveLimits, type ServerLimits } from '../server/limits.js';

/** `marginal serve`'s limit options as commander parses them (times in seconds). */
export interface LimitCliOptions {
  requestTimeout?: number;
  headersTimeout?: number;
  keepAliveTimeout?: number;
  drainTimeout?: number;
  maxConnections?: number;
  maxConnectionsPerAddress?: number;
  maxQueued?: number;
  tokenizerQueue?: number;
  tokenizerQueuePerClient?: number;
  maxBodyBytes?: number;
}

function seconds(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !(n >= 0 && n < 1e7)) throw new CommanderArgError(`${name} must be a number of seconds >= 0`);
    return n;
  };
}
function count(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!(Number.isSafeInteger(n) && n >= 1)) throw new CommanderArgError(`${name} must be an integer >= 1`);
    return n;
  };
}

/** Adds the limit options to `serve`, with the defaults shown in --help. */
export function limitOptions(c: Command): Command {
  const d = defaultLimits();
  return c
    .option('--request-timeout <s>', `a request's headers and body must arrive within this; 0 = no limit (default ${d.requestTimeoutMs / 1000})`, seconds('--request-timeout'))
    .option('--headers-timeout <s>', `a request's headers must arrive within this (default ${d.headersTimeoutMs / 1000})`, seconds('--headers-timeout'))
    .option('--keep-alive-timeout <s>', `idle keep-alive connections close after this (default ${d.keepAliveTimeoutMs / 1000})`, seconds('--keep-alive-timeout'))
    .option('--drain-timeout <s>', `after SIGTERM, in-flight requests may finish for this long, then are aborted (default ${d.drainTimeoutMs / 1000})`, seconds('--drain-timeout'))
    .option('--max-connections <n>', `connections held at once (default ${d.maxConnections}: below the descriptor limit)`, count('--max-connections'))
    .option('--max-connections-per-address <n>', `connections held at once from one client address (default ${d.maxConnectionsPerAddress}; raise it behind a gateway)`, count('--max-connections-per-address'))
    .option('--max-queued <n>', `requests waiting (tokenizing or queued) at once (default ${d.maxQueued})`, count('--max-queued'))
    .option('--tokenizer-queue <n>', `prompts waiting for the tokenizer pool (default ${d.tokenizerQueue})`, count('--tokenizer-queue'))
    .option('--tokenizer-queue-per-client <n>', `of which from one client (default ${d.tokenizerQueuePerClient})`, count('--tokenizer-queue-per-client'))
    .option('--max-body-bytes <n>', `largest request body (default ${d.bodyLimit})`, count('--max-body-bytes'));
}

export function limitsFromCli(o: LimitCliOptions): ServerLimits {
  const ms = (s: number | undefined) => (s === undefined ? undefined : Math.round(s * 1000));
  try {
    return resolveLimits({
      requestTimeoutMs: ms(o.requestTimeout),
      headersTimeoutMs: ms(o.headersTimeout),
      keepAliveTimeoutMs: ms(o.keepAliveTimeout),
      drainTimeoutMs: ms(o.drainTimeout),
      maxConnections: o.maxConnections,
      maxConnectionsPerAddress: o.maxConnectionsPerAddress,
      maxQueued: o.maxQueued,
      tokenizerQueue: o.tokenizerQueue,
      tokenizerQueuePerClient: o.tokenizerQueuePerClient,
      bodyLimit: o.maxBodyBytes,
    });
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}
