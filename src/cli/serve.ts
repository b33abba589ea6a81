import { loadCurveFile } from '../economy/curves.js';
import { Ledger } from '../economy/ledger.js';
import { Generator } from '../serving/generator.js';
import { isMarginalError } from '../errors.js';
import { createLogger, lineLogger, resolveLogLevel, type Logger } from '../log.js';
import { createPolicy } from '../scheduler/policies/index.js';
import { buildServer } from '../server/app.js';
import { limitsFromCli, type LimitCliOptions } from './limit-options.js';
import { loadApiKeys, openDirectory } from '../server/tenants.js';
import { TokenizePool } from '../server/tokenize-pool.js';
import { openModelAndEngine, type EngineCliOptions } from './engine-options.js';
import { geometryFromCli, type GeometryCliOptions } from './geometry-options.js';
import { openStepLog } from '../serving/step-log.js';
import { economyFromCli } from './sim.js';
import { createLengthPredictor } from '../economy/length-model.js';

interface ServeOptions extends EngineCliOptions, LimitCliOptions, GeometryCliOptions {
  host: string;
  port: number;
  policy: string;
  curve?: string;
  apiKeys?: string;
  defaultBid: number;
  maxValue?: number;
  riskPrice?: number;
  retention?: string;
  clearing?: boolean;
  payment?: boolean;
  stepLog?: string;
  logLevel?: string;
  metricsKey?: string;
}

/** An error the server has already logged; the CLI only sets the exit code. */
export class ReportedError extends Error {
  constructor(
    readonly original: unknown,
    readonly exitCode: number,
  ) {
    super((original as Error)?.message ?? String(original));
  }
}

/** What one request may claim to be worth unless its tenant says otherwise: a few typical completions' worth. */
export const DEFAULT_MAX_VALUE = 10;

export async function runServe(o: ServeOptions): Promise<void> {
  // From here on everything the server prints is one JSON line of the same logger.
  const logger = createLogger(resolveLogLevel(o.logLevel));
  // Node's own warnings (deprecations, listener leaks) too, instead of its plain-text lines.
  process.removeAllListeners('warning');
  process.on('warning', (w) => logger.warn({ warning: { name: w.name, code: (w as { code?: string }).code } }, w.message));
  try {
    await serve(o, logger);
  } catch (e) {
    const err = e as Error & { code?: string };
    logger.fatal({ err: { type: err.name, message: err.message, code: err.code, ...(isMarginalError(e) ? {} : { stack: err.stack }) } }, err.message);
    throw new ReportedError(e, isMarginalError(e) ? 2 : 1);
  }
}

async function serve(o: ServeOptions, logger: Logger): Promise<void> {
  // Everything that can be wrong with the command line fails before the model loads.
  createPolicy(o.policy);
  const limits = limitsFromCli(o);
  const curves = o.curve ? await loadCurveFile(o.curve) : undefined;
  const tenants = o.apiKeys ? await loadApiKeys(o.apiKeys) : openDirectory(o.defaultBid);
  const metricsKey = o.metricsKey ?? (process.env.MARGINAL_METRICS_KEY || undefined);
  const econ = economyFromCli(o);
  const ledger = new Ledger({ defaultMaxValue: econ.maxValue ?? DEFAULT_MAX_VALUE });
  for (const t of tenants.tenants()) {
    if (Number.isFinite(t.budget)) ledger.setBudget(t.name, t.budget);
    if (t.maxValue !== undefined) ledger.setMaxValue(t.name, t.maxValue);
  }
  const defaults = new Map(tenants.tenants().map((t) => [t.name, t.defaultBid ?? o.defaultBid]));

  const lengthModel = await createLengthPredictor(econ.lengthModel, { log: lineLogger(logger) });
  const { model, engine, geometry } = await openModelAndEngine({ ...o, worker: true, log: lineLogger(logger) }, geometryFromCli(o));
  const stepLog = o.stepLog ? openStepLog(o.stepLog, { model: model.name, engine: engine.info, geometry }) : undefined;
  const generator = new Generator(engine, model, {
    ...(stepLog ? { onStep: stepLog.write } : {}),
    geometry,
    policy: o.policy,
    ledger,
    defaultBid: (tenant) => defaults.get(tenant),
    shadow: econ.shadow,
    clearing: econ.clearing,
    payment: econ.payment,
    lengthModel,
    ...(curves ? { curves } : {}),
  });
  // Long prompts are tokenized on a worker pool: inline they would stall every stream's SSE.
  const pool = await TokenizePool.create(model.dir, { tokenizer: model.tokenizer, maxQueued: limits.tokenizerQueue, maxQueuedPerClient: limits.tokenizerQueuePerClient });
  const server = buildServer({ model, generator, tenants, logger, limits, tokenize: (text, bos, ctx) => pool.encode(text, bos, ctx), ...(metricsKey ? { metricsKey } : {}) });
  const { app } = server;
  let closing = false;
  const shutdown = async (signal: string) => {
    if (closing) return;
    closing = true;
    // Whatever hangs below, the process ends: a drain bounded by its timeout, then a little for the rest.
    setTimeout(() => {
      app.log.error(`${signal}: shutdown did not finish in time; exiting`);
      process.exit(1);
    }, limits.drainTimeoutMs + 10_000).unref();
    app.log.info(`${signal}: no new requests; draining ${generator.inFlight} in flight (at most ${limits.drainTimeoutMs} ms)`);
    await server.drain();
    await pool.close();
    await engine.dispose();
    await stepLog?.close();
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
  await app.listen({ host: o.host, port: o.port });
  const base = `http://${o.host.includes(':') ? `[${o.host}]` : o.host}:${(app.server.address() as { port: number }).port}`;
  app.log.info(`serving ${model.name} on ${engine.info.provider.toUpperCase()} (${engine.info.flavour} graph, ${o.policy} policy)`);
  app.log.info(
    { console: `${base}/console`, metrics: `${base}/metrics`, metrics_protected: metricsKey !== undefined },
    tenants.open ? `console at ${base}/console` : `console at ${base}/console (needs an admin key from the keys file)`,
  );
}
