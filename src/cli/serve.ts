import { loadCurveFile } from '../economy/curves.js';
import { Ledger } from '../economy/ledger.js';
import { Generator } from '../serving/generator.js';
import { createPolicy } from '../scheduler/policies/index.js';
import { buildServer } from '../server/app.js';
import { loadApiKeys, openDirectory } from '../server/tenants.js';
import { TokenizePool } from '../server/tokenize-pool.js';
import { openModelAndEngine, type EngineCliOptions } from './engine-options.js';
import { geometryFromCli, type GeometryCliOptions } from './geometry-options.js';
import { openStepLog } from '../serving/step-log.js';
import { economyFromCli } from './sim.js';

interface ServeOptions extends EngineCliOptions, GeometryCliOptions {
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
}

/** What one request may claim to be worth unless its tenant says otherwise: a few typical completions' worth. */
export const DEFAULT_MAX_VALUE = 10;

export async function runServe(o: ServeOptions): Promise<void> {
  // Everything that can be wrong with the command line fails before the model loads.
  createPolicy(o.policy);
  const curves = o.curve ? await loadCurveFile(o.curve) : undefined;
  const tenants = o.apiKeys ? await loadApiKeys(o.apiKeys) : openDirectory(o.defaultBid);
  const econ = economyFromCli(o);
  const ledger = new Ledger({ defaultMaxValue: econ.maxValue ?? DEFAULT_MAX_VALUE });
  for (const t of tenants.tenants()) {
    if (Number.isFinite(t.budget)) ledger.setBudget(t.name, t.budget);
    if (t.maxValue !== undefined) ledger.setMaxValue(t.name, t.maxValue);
  }
  const defaults = new Map(tenants.tenants().map((t) => [t.name, t.defaultBid ?? o.defaultBid]));

  const { model, engine, geometry } = await openModelAndEngine({ ...o, worker: true }, geometryFromCli(o));
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
    ...(curves ? { curves } : {}),
  });
  // Long prompts are tokenized on a worker pool: inline they would stall every stream's SSE.
  const pool = await TokenizePool.create(model.dir, { tokenizer: model.tokenizer });
  const server = buildServer({ model, generator, tenants, logger: true, tokenize: (text, bos) => pool.encode(text, bos) });
  const { app } = server;
  let closing = false;
  const shutdown = async (signal: string) => {
    if (closing) return;
    closing = true;
    app.log.info(`${signal}: no new requests; draining ${generator.inFlight} in flight`);
    await server.drain();
    await pool.close();
    await engine.dispose();
    await stepLog?.close();
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
  await app.listen({ host: o.host, port: o.port });
  app.log.info(`serving ${model.name} on ${engine.info.provider.toUpperCase()} (${engine.info.flavour} graph, ${o.policy} policy)`);
}
