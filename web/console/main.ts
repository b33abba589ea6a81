import 'uplot/dist/uPlot.min.css';
import './style.css';
import type { ConsoleInfo, TenantState } from '../../src/server/console/market.js';
import type { CurvePoints, Sample, Tick } from '../../src/server/console/sampler.js';
import type { RequestRecord } from '../../src/server/journal.js';
import { CurveChart, TimeChart } from './charts.js';
import { readEventStream } from './events.js';
import { el, ms, num, pct, price } from './format.js';
import { setupPlayground } from './playground.js';
import { prependRequests, renderTenants } from './tables.js';

interface ConsoleState {
  info: ConsoleInfo;
  history: Sample[];
  curves: CurvePoints;
  tenants: TenantState[];
  requests: RequestRecord[];
}

const KEY = 'marginal.console.key';
const key = (): string | undefined => sessionStorage.getItem(KEY) ?? undefined;
const $ = <T extends HTMLElement>(sel: string): T => document.querySelector(sel) as T;
const plot = (name: string): HTMLElement => $(`[data-chart="${name}"] .plot`);

const percentFmt = (v: number) => `${Math.round(v * 100)}%`;
const rateFmt = (v: number) => num(v, v < 10 ? 2 : 0);
const msFmt = (v: number) => num(v, v < 10 ? 1 : 0);

const charts = {
  curveToken: new CurveChart(plot('curve-token'), '#2563eb', price),
  curveKv: new CurveChart(plot('curve-kv'), '#7c3aed', price),
  prices: new TimeChart(
    plot('prices'),
    [{ label: 'token' }, { label: 'token reserve', color: '#2563eb', dash: [4, 4] }, { label: 'KV block·s', color: '#7c3aed', right: true }, { label: 'KV reserve', color: '#7c3aed', right: true, dash: [4, 4] }],
    { format: price, formatRight: price },
  ),
  utilization: new TimeChart(plot('utilization'), [{ label: 'batch tokens' }, { label: 'KV blocks', color: '#7c3aed' }], { format: percentFmt, range: [0, 1] }),
  streams: new TimeChart(plot('streams'), [{ label: 'running', color: '#16a34a' }, { label: 'waiting', color: '#d97706' }, { label: 'swapped', color: '#7c3aed' }], { format: (v) => num(v, 0) }),
  throughput: new TimeChart(plot('throughput'), [{ label: 'generated' }, { label: 'prompt', color: '#0891b2' }], { format: rateFmt }),
  ttft: new TimeChart(plot('ttft'), [{ label: 'p50' }, { label: 'p90', color: '#d97706' }, { label: 'p99', color: '#dc2626' }], { format: msFmt }),
  tpot: new TimeChart(plot('tpot'), [{ label: 'p50' }, { label: 'p90', color: '#d97706' }, { label: 'p99', color: '#dc2626' }], { format: msFmt }),
  events: new TimeChart(plot('events'), [{ label: 'admitted', color: '#16a34a' }, { label: 'preempted', color: '#d97706' }, { label: 'swapped out', color: '#7c3aed' }], { format: rateFmt }),
  hits: new TimeChart(plot('hits'), [{ label: 'hit rate', color: '#0891b2' }], { format: percentFmt, range: [0, 1] }),
};
const timeCharts = [charts.prices, charts.utilization, charts.streams, charts.throughput, charts.ttft, charts.tpot, charts.events, charts.hits];
const REJECT_COLORS = ['#dc2626', '#db2777', '#ea580c', '#4b5563', '#65a30d'];

let history: Sample[] = [];
let ticks = 0;

function pushSample(s: Sample): void {
  charts.prices.push(s.t, { token: s.priceToken, 'token reserve': s.reserveToken, 'KV block·s': s.priceKv, 'KV reserve': s.reserveKv });
  charts.utilization.push(s.t, { 'batch tokens': s.utilTokens, 'KV blocks': s.utilKv });
  charts.streams.push(s.t, { running: s.running, waiting: s.waiting, swapped: s.swapped });
  charts.throughput.push(s.t, { generated: s.generationTps, prompt: s.promptTps });
  charts.ttft.push(s.t, { p50: s.ttftMs?.[0] ?? null, p90: s.ttftMs?.[1] ?? null, p99: s.ttftMs?.[2] ?? null });
  charts.tpot.push(s.t, { p50: s.tpotMs?.[0] ?? null, p90: s.tpotMs?.[1] ?? null, p99: s.tpotMs?.[2] ?? null });
  const events: Record<string, number> = { admitted: s.admittedPs, preempted: s.preemptedPs, 'swapped out': s.swapsPs };
  for (const [reason, rate] of Object.entries(s.rejectedPs)) {
    const label = `rejected ${reason}`;
    if (!charts.events.has(label)) {
      const n = Object.keys(s.rejectedPs).indexOf(reason);
      charts.events.ensureSeries({ label, color: REJECT_COLORS[n % REJECT_COLORS.length] as string });
    }
    events[label] = rate;
  }
  charts.events.push(s.t, events);
  charts.hits.push(s.t, { 'hit rate': s.hitRate });
  history.push(s);
  if (history.length > 900) history.splice(0, history.length - 900);
}

function drawCurves(curves: CurvePoints): void {
  const last = history[history.length - 1];
  if (last === undefined) return;
  const trail = history.slice(-61, -1);
  charts.curveToken.update(curves.u, curves.token, trail.map((s) => [s.utilTokens, s.priceToken]), [last.utilTokens, last.priceToken]);
  charts.curveKv.update(curves.u, curves.kv, trail.map((s) => [s.utilKv, s.priceKv]), [last.utilKv, last.priceKv]);
}

function tile(label: string, value: string, sub = ''): HTMLElement {
  return el('div', { class: 'tile', 'data-tile': label }, el('div', { class: 'label' }, label), el('div', { class: 'value' }, value), el('div', { class: 'sub' }, sub));
}

function drawTiles(): void {
  const s = history[history.length - 1];
  if (s === undefined) return;
  const rejected = Object.values(s.rejectedPs).reduce((a, b) => a + b, 0);
  $('#tiles').replaceChildren(
    tile('token price', price(s.priceToken), `reserve ${price(s.reserveToken)} · batch ${pct(s.utilTokens)} used`),
    tile('KV rent', price(s.priceKv), `reserve ${price(s.reserveKv)} · KV ${pct(s.utilKv)} held`),
    tile('streams', `${s.running} / ${s.waiting} / ${s.swapped}`, 'running / waiting / swapped'),
    tile('tokens/s', num(s.generationTps, 1), `prompt ${num(s.promptTps, 0)}/s`),
    tile('TTFT p50', ms(s.ttftMs?.[0]), `p99 ${ms(s.ttftMs?.[2])}`),
    tile('TPOT p50', ms(s.tpotMs?.[0]), `p99 ${ms(s.tpotMs?.[2])}`),
    tile('admitted/s', num(s.admittedPs, 2), `rejected ${num(rejected, 2)}/s`),
    tile('prefix hits', pct(s.hitRate), 'of prompt tokens, 30 s'),
  );
}

function renderAll(): void {
  for (const c of timeCharts) c.render();
  drawTiles();
}

function onState(state: ConsoleState): void {
  const i = state.info;
  $('#server-info').replaceChildren(
    el('span', {}, el('b', {}, i.model), i.synthetic ? ' (synthetic: meaningless text)' : ''),
    el('span', {}, `policy ${i.policy}`),
    el('span', {}, `${i.provider.toUpperCase()} · ${i.flavour} graph`),
    el('span', {}, `${i.maxSequences} sequences · ${i.maxBatchTokens} tokens/step · ${i.totalBlocks}×${i.blockSize}-token KV blocks`),
  );
  history = [];
  for (const c of timeCharts) c.clear();
  for (const s of state.history) pushSample(s);
  drawCurves(state.curves);
  renderTenants($('#tenants tbody'), state.tenants);
  const tbody = $<HTMLTableSectionElement>('#requests tbody');
  tbody.replaceChildren();
  prependRequests(tbody, state.requests);
  renderAll();
}

function onTick(t: Tick): void {
  pushSample(t.sample);
  drawCurves(t.curves);
  renderTenants($('#tenants tbody'), t.tenants);
  prependRequests($('#requests tbody'), t.requests);
  renderAll();
  ticks++;
  document.body.dataset.ticks = String(ticks);
}

function setStatus(state: 'connecting' | 'live' | 'offline' | 'locked', text: string): void {
  const s = $('#status');
  s.dataset.state = state;
  s.textContent = text;
}

function askForKey(message: string): void {
  const form = $<HTMLFormElement>('#auth');
  $('#auth-message').textContent = message;
  form.hidden = false;
  setStatus('locked', 'locked');
}

let connecting = false;
async function connect(): Promise<void> {
  if (connecting) return;
  connecting = true;
  setStatus('connecting', 'connecting');
  let retry = true;
  try {
    const k = key();
    const res = await fetch('/console/api/events', { headers: k ? { authorization: `Bearer ${k}` } : {}, cache: 'no-store' });
    if (res.status === 401 || res.status === 403) {
      const body = (await res.json().catch(() => ({}))) as { error?: { message?: string } };
      askForKey(body.error?.message ?? 'This console needs an admin key.');
      retry = false;
      return;
    }
    if (!res.ok || res.body === null) throw new Error(`HTTP ${res.status}`);
    $<HTMLFormElement>('#auth').hidden = true;
    setStatus('live', 'live');
    await readEventStream(res.body, (event, data) => {
      if (event === 'state') onState(JSON.parse(data) as ConsoleState);
      else if (event === 'tick') onTick(JSON.parse(data) as Tick);
    });
  } catch {
    // The server restarted or the network dropped: the next attempt says so if it persists.
  } finally {
    connecting = false;
    if (retry) {
      setStatus('offline', 'reconnecting');
      window.setTimeout(() => void connect(), 2000);
    }
  }
}

$<HTMLFormElement>('#auth').addEventListener('submit', (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $<HTMLInputElement>('#auth-key').value.trim());
  void connect();
});

$<HTMLSelectElement>('#window').addEventListener('change', (ev) => {
  const seconds = Number((ev.target as HTMLSelectElement).value);
  for (const c of timeCharts) c.setWindow(seconds);
});

setupPlayground($<HTMLFormElement>('#playground'), key);
void connect();
