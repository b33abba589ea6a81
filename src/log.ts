import { pino, type DestinationStream, type Logger } from 'pino';
import { InvalidArgumentError } from './errors.js';

export type { Logger };

/** pino's levels, quietest last; `silent` prints nothing. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** `--log-level`, else `MARGINAL_LOG_LEVEL`, else info; anything else is a usage error. */
export function resolveLogLevel(option: string | undefined, env: string | undefined = process.env.MARGINAL_LOG_LEVEL): LogLevel {
  const [raw, from] = option !== undefined ? [option, '--log-level'] : env !== undefined && env !== '' ? [env, 'MARGINAL_LOG_LEVEL'] : ['info', 'default'];
  const level = raw.trim().toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new InvalidArgumentError(`${from} must be one of ${LOG_LEVELS.join(', ')} (got ${JSON.stringify(raw)})`);
  }
  return level as LogLevel;
}

/**
 * The server's one log format: pino's JSON lines (the logger fastify itself uses), with the
 * level as its name and the time in ISO 8601 so that a person and Loki/Elasticsearch read the
 * same line. Written to stderr (synchronously: a fatal line must not be lost to exit), like every
 * other diagnostic of the CLI; stdout stays for output.
 */
export function createLogger(level: LogLevel, destination: DestinationStream = pino.destination({ fd: 2, sync: true })): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}

/** A line-oriented `log(text)` callback (the engine's and importers') writing info lines to `logger`. */
export function lineLogger(logger: Logger): (line: string) => void {
  return (line) => logger.info(line.replace(/^marginal: /, ''));
}
