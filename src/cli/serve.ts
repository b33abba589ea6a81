import { loadCurveFile } from '../economy/curves.js';
import { Generator } from '../engine/generator.js';
import { createPolicy } from '../scheduler/policies/index.js';
import { buildServer } from '../server/app.js';
import { openModelAndEngine, type EngineCliOptions } from './engine-options.js';

interface ServeOptions extends EngineCliOptions {
  host: string;
  port: number;
  policy: string;
  curve?: string;
  defaultBid: number;
}

export async function runServe(o: ServeOptions): Promise<void> {
  createPolicy(o.policy);
  const curves = o.curve ? await loadCurveFile(o.curve) : undefined;
  const { model, engine } = await openModelAndEngine(o);
  const generator = new Generator(engine, model, { policy: o.policy, ...(curves ? { curves } : {}), defaultBid: () => o.defaultBid });
  const { app, loop } = buildServer({ model, generator, logger: true });
  let closing = false;
  const shutdown = async (signal: string) => {
    if (closing) return;
    closing = true;
    app.log.info(`${signal}: no new requests; draining ${generator.inFlight} in flight`);
    const closed = app.close();
    await loop.drain();
    await closed;
    await engine.dispose();
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
  await app.listen({ host: o.host, port: o.port });
  app.log.info(`serving ${model.name} on ${engine.info.provider.toUpperCase()} (${engine.info.flavour} graph)`);
}
