/**
 * The reliability campaign against a real `marginal serve` process on 127.0.0.1: hostile inputs,
 * huge prompts, a burst, aborts, slow clients, a soak with everything mixed, then SIGTERM with
 * clients that never read. Good requests run alongside throughout and must come back identical
 * to the baseline. Bounded in time (every wait has a limit). Reports counts by status, 5xx,
 * lost requests, malformed answers, KV blocks leaked and RSS drift.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { hostileCases, type HostileCase } from './cases.js';
import { mulberry32 as prng } from '../../src/random.js';
import { pooled, send, sendRaw, type Outcome } from './client.js';

export interface ChaosOptions {
  /** Model directory to serve (stories260K in CI). */
  modelDir: string;
  /** Generated hostile requests (the raw HTTP cases and the issue's findings included). */
  hostile: number;
  seed: number;
  /** Good greedy requests interleaved with the hostile ones (each must equal the baseline). */
  good: number;
  /** Concurrent huge (1.5 MB) prompts. */
  hugePrompts: number;
  /** Concurrent streams in the burst. */
  burst: number;
  /** Streams the client abandons mid-answer. */
  aborts: number;
  /** Slow-body connections (a byte now and then, past the request timeout). */
  slowClients: number;
  /** Seconds of mixed traffic. */
  soakSeconds: number;
  /** Requests in flight at once in the hostile and soak phases. */
  concurrency: number;
  /** Streams open at SIGTERM that the client never reads. */
  unreadAtShutdown: number;
  /** Extra `marginal serve` arguments. */
  serverArgs?: string[];
  log?: (line: string) => void;
}

export interface PhaseReport {
  requests: number;
  byStatus: Record<string, number>;
  lost: number;
  badShape: number;
}

export interface ChaosReport {
  phases: Record<string, PhaseReport>;
  /** Over all phases. */
  requests: number;
  byStatus: Record<string, number>;
  fiveXx: number;
  /** 500s: the server's own failures (503s are limits and shutdown, by design). */
  internalErrors: number;
  lost: number;
  badShape: number;
  /** A few examples of what went wrong, for the log. */
  problems: string[];
  good: { sent: number; identical: number; rejected: number };
  hugePromptChatOk: boolean;
  metricsOk: boolean;
  kvBlocksLeaked: number;
  requestsLeft: number;
  /** RSS after warm-up, its peak, at the end, end − after warm-up, and sampled through the soak (a leak climbs; a heap that found its size does not). */
  rssMiB: { afterWarmup: number | null; peak: number | null; end: number | null; drift: number | null; soak: number[] };
  shutdown: { exitCode: number | null; signal: string | null; ms: number; abortedWithShutdown: number; readersWellFormed: boolean };
  seconds: number;
}

const cli = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));
const GOOD = { prompt: 'Once upon a time', max_tokens: 24, temperature: 0, value: 5 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

function rssMiB(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB/m);
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

function tally(outs: Outcome[]): PhaseReport {
  const byStatus: Record<string, number> = {};
  for (const o of outs) byStatus[String(o.status)] = (byStatus[String(o.status)] ?? 0) + 1;
  return { requests: outs.length, byStatus, lost: outs.filter((o) => o.lost).length, badShape: outs.filter((o) => o.badShape !== undefined).length };
}

function post(name: string, path: string, body: object): HostileCase {
  return { name, kind: 'http', method: 'POST', path, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
}

function completionText(o: Outcome): string | undefined {
  try {
    return (JSON.parse(o.body) as { choices: { text: string }[] }).choices[0]?.text;
  } catch {
    return undefined;
  }
}

async function metricsText(port: number): Promise<{ status: number; text: string }> {
  const r = await fetch(`http://127.0.0.1:${port}/metrics`);
  return { status: r.status, text: await r.text() };
}

function metric(text: string, name: string): number {
  let sum = 0;
  for (const l of text.split('\n')) if (l.startsWith(name + '{') || l.startsWith(name + ' ')) sum += Number(l.slice(l.lastIndexOf(' ') + 1));
  return sum;
}

export async function runChaos(o: ChaosOptions): Promise<ChaosReport> {
  const log = o.log ?? (() => {});
  const t0 = performance.now();
  const port = await freePort();
  const rand = prng(o.seed);
  const args = [cli, 'serve', '--model', o.modelDir, '--port', String(port), '--providers', 'cpu', '--max-sequences', '8', '--request-timeout', '5', '--headers-timeout', '2', '--drain-timeout', '3', '--max-connections-per-address', '2048', '--threads', '1', ...(o.serverArgs ?? [])];
  const child: ChildProcess = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const phases: Record<string, Outcome[]> = {};
  const record = (phase: string, outs: Outcome[]) => (phases[phase] = [...(phases[phase] ?? []), ...outs]);
  const opts = { port, timeoutMs: 60_000 };
  let peak = 0;
  const sampleRss = () => {
    const r = rssMiB(child.pid);
    if (r !== null) peak = Math.max(peak, r);
  };
  const rssTimer = setInterval(sampleRss, 250);
  try {
    for (let i = 0; ; i++) {
      if (i > 1200) throw new Error(`the server did not start: ${stderr}`);
      try {
        if ((await fetch(`http://127.0.0.1:${port}/health`)).status === 200) break;
      } catch {
        /* not yet */
      }
      await sleep(50);
    }

    // --- warm-up and baseline
    const baseline = await send(post('baseline', '/v1/completions', GOOD), opts);
    const want = completionText(baseline);
    if (baseline.status !== 200 || want === undefined) throw new Error(`baseline failed: ${baseline.status} ${baseline.body.slice(0, 200)}`);
    for (let i = 0; i < 5; i++) await send(post('warm-up', '/v1/completions', GOOD), opts);
    const afterWarmup = rssMiB(child.pid);
    const good: Outcome[] = [];
    const goodTask = () => async () => {
      const out = await send(post('good', '/v1/completions', GOOD), opts);
      good.push(out);
      return out;
    };

    // --- hostile inputs, good requests alongside
    const cases = hostileCases(o.hostile, o.seed);
    log(`hostile: ${cases.length} cases, ${o.good} good alongside`);
    const tasks: (() => Promise<Outcome>)[] = cases.map((c) => () => send(c, opts));
    const spacing = Math.max(1, Math.floor(tasks.length / Math.max(1, o.good)));
    for (let i = 0, g = 0; g < o.good; i += spacing + 1, g++) tasks.splice(Math.min(i, tasks.length), 0, goodTask());
    record('hostile', await pooled(tasks, o.concurrency));

    // --- huge prompts: none may delay another client's chat by more than its own tokenization
    log(`huge prompts: ${o.hugePrompts}`);
    const huge = 'Once upon a time there was a little cat who liked to play. '.repeat(25_000);
    const flood = Array.from({ length: o.hugePrompts }, () => send(post('huge prompt', '/v1/completions', { prompt: huge, max_tokens: 8 }), opts));
    const chat = send(post('chat beside huge prompts', '/v1/chat/completions', { messages: [{ role: 'user', content: 'Tell me a story about a dog. '.repeat(30) }], max_tokens: 8, temperature: 0 }), { ...opts, localAddress: '127.0.0.2' });
    const hugeOuts = await Promise.all(flood);
    const chatOut = await chat;
    record('huge', [...hugeOuts, chatOut]);

    // --- burst
    log(`burst: ${o.burst} streams`);
    record(
      'burst',
      await Promise.all(
        Array.from({ length: o.burst }, (_, i) =>
          send(post('burst stream', '/v1/completions', { prompt: 'Once upon a time', max_tokens: 16 + (i % 32), temperature: 0.8, stream: true, ...(i % 3 === 0 ? { value: 0.5 + (i % 7) } : {}), ...(i % 5 === 0 ? { slo: { ttft_ms: 500 + 100 * (i % 10) } } : {}) }), opts),
        ),
      ),
    );

    // --- aborts mid-stream
    log(`aborts: ${o.aborts}`);
    record(
      'aborts',
      await Promise.all(Array.from({ length: o.aborts }, (_, i) => send({ ...post('abort mid-stream', '/v1/completions', { prompt: 'Once upon a time', max_tokens: 200, temperature: 0.8, stream: true }), clientAborts: true }, { ...opts, abortAfterBytes: 200 + 97 * (i % 20) }))),
    );

    // --- slow clients: bodies that dribble past the request timeout, from their own address
    log(`slow clients: ${o.slowClients}`);
    const head = 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n';
    const slow = Array.from({ length: o.slowClients }, () => sendRaw({ name: 'slow body', kind: 'raw', chunks: [head, ...'{"prompt": "a slow client"'.split('')] }, { port, gapMs: 300, timeoutMs: 15_000, localAddress: '127.0.0.3' }));
    // Meanwhile everyone else is served.
    const during = await pooled(Array.from({ length: Math.min(o.good, 8) }, goodTask), 4);
    record('slow', [...(await Promise.all(slow)), ...during]);

    // --- soak: everything mixed
    log(`soak: ${o.soakSeconds} s`);
    const soakCases = hostileCases(400, o.seed + 1);
    const soakEnd = performance.now() + o.soakSeconds * 1000;
    const soakOuts: Outcome[] = [];
    const soakRss: number[] = [];
    const every = Math.max(1000, (o.soakSeconds * 1000) / 10);
    const soakSampler = setInterval(() => {
      const r = rssMiB(child.pid);
      if (r !== null) soakRss.push(Math.round(r));
    }, every);
    await Promise.all(
      Array.from({ length: o.concurrency }, async () => {
        while (performance.now() < soakEnd) {
          const r = rand();
          let out: Outcome;
          if (r < 0.25) out = await goodTask()();
          else if (r < 0.55) out = await send(soakCases[Math.floor(rand() * soakCases.length)] as HostileCase, opts);
          else if (r < 0.7) out = await send({ ...post('soak abort', '/v1/completions', { prompt: 'Once upon a time', max_tokens: 100, stream: true }), clientAborts: true }, { ...opts, abortAfterBytes: 100 + Math.floor(rand() * 2000) });
          else if (r < 0.9) out = await send(post('soak stream', '/v1/chat/completions', { messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 8 + Math.floor(rand() * 40), stream: true, ...(rand() < 0.3 ? { slo: { ttft_ms: 200 + rand() * 2000 } } : {}) }), opts);
          else out = await send(post('soak huge', '/v1/completions', { prompt: huge, max_tokens: 4 }), opts);
          soakOuts.push(out);
        }
      }),
    );
    clearInterval(soakSampler);
    record('soak', soakOuts);

    // --- settle, then the books: nothing running, nothing held, metrics readable
    let m = await metricsText(port);
    for (let i = 0; i < 300 && (metric(m.text, 'vllm:num_requests_running') > 0 || metric(m.text, 'vllm:num_requests_waiting') > 0 || metric(m.text, 'vllm:kv_cache_usage_perc') > 0); i++) {
      await sleep(100);
      m = await metricsText(port);
    }
    const numBlocks = Number(m.text.match(/num_gpu_blocks="(\d+)"/)?.[1] ?? 0);
    const kvBlocksLeaked = Math.round(metric(m.text, 'vllm:kv_cache_usage_perc') * numBlocks);
    const requestsLeft = metric(m.text, 'vllm:num_requests_running') + metric(m.text, 'vllm:num_requests_waiting');
    const metricsOk = m.status === 200 && m.text.split('\n').every((l) => l.startsWith('#') || l.length === 0 || Number.isFinite(Number(l.slice(l.lastIndexOf(' ') + 1))) || l.includes('le="+Inf"'));
    const end = rssMiB(child.pid);

    // --- shutdown with clients that never read their streams
    log(`shutdown: SIGTERM with ${o.unreadAtShutdown} unread streams`);
    const sockets: Socket[] = [];
    const body = JSON.stringify({ prompt: 'Once upon a time', max_tokens: 400, temperature: 0.8, stream: true });
    for (let i = 0; i < o.unreadAtShutdown; i++) {
      const s = connect(port, '127.0.0.1');
      s.on('error', () => {});
      s.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      s.pause();
      sockets.push(s);
    }
    const readers = Array.from(
      { length: 12 },
      () =>
        new Promise<string>((resolve) => {
          const req = request({ host: '127.0.0.1', port, path: '/v1/completions', method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
            let t = '';
            res.on('data', (d) => (t += d));
            res.on('end', () => resolve(`${res.statusCode} ${t}`));
            res.on('error', () => resolve(`${res.statusCode} ${t} [broken]`));
          });
          req.on('error', (e) => resolve(`error ${e.message}`));
          req.end(body);
        }),
    );
    await sleep(500);
    const tStop = performance.now();
    child.kill('SIGTERM');
    const exit = await Promise.race([exited, sleep(30_000).then(() => ({ code: null, signal: 'still running after 30 s' }))]);
    const stopMs = performance.now() - tStop;
    for (const s of sockets) s.destroy();
    const readerOuts = await Promise.all(readers);

    const all = Object.values(phases).flat();
    const byStatus = tally(all).byStatus;
    const problems = all
      .filter((x) => x.lost || x.badShape !== undefined || x.status === 500)
      .slice(0, 20)
      .map((x) => `${x.name}: status ${x.status}${x.lost ? ' (lost)' : ''}${x.badShape ? ` (${x.badShape})` : ''} ${x.body.slice(0, 120)}`);
    return {
      phases: Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, tally(v)])),
      requests: all.length,
      byStatus,
      fiveXx: all.filter((x) => x.status >= 500).length,
      internalErrors: all.filter((x) => x.status === 500).length,
      lost: all.filter((x) => x.lost).length,
      badShape: all.filter((x) => x.badShape !== undefined).length,
      problems,
      good: { sent: good.length, identical: good.filter((g) => g.status === 200 && completionText(g) === want).length, rejected: good.filter((g) => g.status !== 200).length },
      hugePromptChatOk: chatOut.status === 200,
      metricsOk,
      kvBlocksLeaked,
      requestsLeft,
      rssMiB: { afterWarmup, peak: peak || null, end, drift: afterWarmup !== null && end !== null ? end - afterWarmup : null, soak: soakRss },
      shutdown: {
        exitCode: exit.code,
        signal: exit.signal,
        ms: Math.round(stopMs),
        abortedWithShutdown: readerOuts.filter((r) => r.includes('"code":"shutdown"')).length,
        readersWellFormed: readerOuts.every((r) => /^(200|503) /.test(r) && !r.includes('[broken]')),
      },
      seconds: Math.round((performance.now() - t0) / 100) / 10,
    };
  } finally {
    clearInterval(rssTimer);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

/** The report as a few Markdown lines. */
export function formatReport(r: ChaosReport): string {
  const lines = [
    `requests: ${r.requests} in ${r.seconds} s; by status: ${Object.entries(r.byStatus).map(([k, v]) => `${k}: ${v}`).join(', ')}`,
    `5xx: ${r.fiveXx} (500: ${r.internalErrors}); lost: ${r.lost}; malformed answers: ${r.badShape}`,
    `good requests: ${r.good.identical}/${r.good.sent} identical to the baseline (${r.good.rejected} not served)`,
    `KV blocks leaked: ${r.kvBlocksLeaked}; requests left: ${r.requestsLeft}; /metrics readable and finite: ${r.metricsOk}`,
    `RSS MiB: after warm-up ${r.rssMiB.afterWarmup?.toFixed(0)}, peak ${r.rssMiB.peak?.toFixed(0)}, end ${r.rssMiB.end?.toFixed(0)} (drift ${r.rssMiB.drift?.toFixed(0)}); through the soak: ${r.rssMiB.soak.join(' ')}`,
    `SIGTERM: exit ${r.shutdown.exitCode ?? r.shutdown.signal} after ${r.shutdown.ms} ms; ${r.shutdown.abortedWithShutdown} streams ended with "shutdown"; readers well-formed: ${r.shutdown.readersWellFormed}`,
    ...Object.entries(r.phases).map(([k, p]) => `  ${k}: ${p.requests} requests; ${Object.entries(p.byStatus).map(([s, n]) => `${s}: ${n}`).join(', ')}; lost ${p.lost}; malformed ${p.badShape}`),
    ...r.problems.map((p) => `  problem: ${p}`),
  ];
  return lines.join('\n');
}
