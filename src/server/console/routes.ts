import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ServerResponse } from 'node:http';
import { checkAdmin } from '../auth.js';
import type { TenantDirectory } from '../tenants.js';
import { defaultAssetsDir, loadAssets } from './assets.js';
import type { MarketView } from './market.js';
import type { Sampler, Tick } from './sampler.js';

export interface ConsoleOptions {
  market: MarketView;
  sampler: Sampler;
  directory: TenantDirectory;
  /** The built page (default: dist/console of this package). */
  assetsDir?: string;
}

// The page loads nothing from elsewhere; its charts draw on canvas and set inline styles.
const CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/**
 * The live console: the page at `/console`, its state at `/console/api/state` and a server-sent
 * event stream of one tick a second at `/console/api/events`. The page itself holds no data, so
 * it is served to anyone; the state and events need an admin key when a keys file is loaded.
 */
export function registerConsole(app: FastifyInstance, o: ConsoleOptions): void {
  const assets = loadAssets(o.assetsDir ?? defaultAssetsDir);
  const streams = new Set<ServerResponse>();

  const page = (name: string) => async (req: FastifyRequest, reply: FastifyReply) => {
    const a = assets?.get(name);
    if (a === undefined) {
      return reply.code(503).type('text/plain; charset=utf-8').send('The console has not been built: run `npm run build`.\n');
    }
    reply.header('etag', a.etag).header('cache-control', 'no-cache').header('x-content-type-options', 'nosniff');
    if (name === 'index.html') reply.header('content-security-policy', CSP);
    if (req.headers['if-none-match'] === a.etag) return reply.code(304).send();
    return reply.type(a.type).send(a.body);
  };
  app.get('/console', page('index.html'));
  app.get('/console/', page('index.html'));
  app.get('/console/console.js', page('console.js'));
  app.get('/console/console.css', page('console.css'));

  const state = () => ({
    info: o.market.info,
    history: o.sampler.history,
    curves: o.sampler.curves(),
    tenants: o.market.tenants(),
    requests: o.sampler.recent,
  });

  app.get('/console/api/state', async (req) => {
    checkAdmin(req, o.directory);
    return state();
  });

  app.get('/console/api/events', async (req, reply) => {
    checkAdmin(req, o.directory);
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    const send = (event: string, data: unknown) => {
      // A client that stops reading loses ticks instead of growing our buffers.
      if (!res.writableEnded && !res.destroyed && !res.writableNeedDrain) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    res.write('retry: 2000\n\n');
    send('state', state());
    const unsubscribe = o.sampler.subscribe((t: Tick) => send('tick', t));
    streams.add(res);
    res.once('close', () => {
      unsubscribe();
      streams.delete(res);
    });
  });

  app.addHook('onReady', async () => o.sampler.start());
  // Open event streams would otherwise hold close() (and a drain) forever.
  app.addHook('preClose', async () => {
    o.sampler.stop();
    for (const res of streams) res.end();
    streams.clear();
  });
}
