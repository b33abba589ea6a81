import type { Bill } from '../../src/economy/ledger.js';
import { readEventStream } from './events.js';
import { el, ms, num, price } from './format.js';

/** The quote of a 429 (or 402), inside `error` and beside it. */
interface Quote {
  reason: string;
  price_per_token: number;
  price_per_kv_block_second?: number;
  /** null when no value would clear now. */
  min_value: number | null;
  value_counted?: number;
  retryable?: boolean;
  expected_wait_ms: number | null;
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details?: { cached_tokens: number };
}

const field = (form: HTMLFormElement, name: string): string => ((form.elements.namedItem(name) as HTMLInputElement | null)?.value ?? '').trim();
const optionalNumber = (form: HTMLFormElement, name: string): number | undefined => {
  const v = field(form, name);
  return v === '' ? undefined : Number(v);
};

/** The request the form describes, in the OpenAI shape plus marginal's economic fields. */
export function requestBody(form: HTMLFormElement): { path: string; body: Record<string, unknown> } {
  const chat = field(form, 'mode') === 'chat';
  const prompt = (form.elements.namedItem('prompt') as HTMLTextAreaElement).value;
  const body: Record<string, unknown> = chat ? { messages: [{ role: 'user', content: prompt }] } : { prompt };
  body.max_tokens = optionalNumber(form, 'max_tokens') ?? 64;
  const temperature = optionalNumber(form, 'temperature');
  if (temperature !== undefined) body.temperature = temperature;
  const value = optionalNumber(form, 'value');
  const bid = optionalNumber(form, 'bid');
  if (value !== undefined) body.value = value;
  if (bid !== undefined) body.bid = bid;
  const ttft = optionalNumber(form, 'ttft_ms');
  const tpot = optionalNumber(form, 'tpot_ms');
  if (ttft !== undefined || tpot !== undefined) body.slo = { ...(ttft !== undefined ? { ttft_ms: ttft } : {}), ...(tpot !== undefined ? { tpot_ms: tpot } : {}) };
  const deadline = optionalNumber(form, 'deadline_ms');
  if (deadline !== undefined) body.deadline_ms = deadline;
  body.stream = true;
  body.stream_options = { include_usage: true };
  return { path: chat ? '/v1/chat/completions' : '/v1/completions', body };
}

function billTable(usage: Usage | undefined, bill: Bill | undefined, elapsedMs: number, firstTokenMs: number | null): HTMLElement {
  const rows: Array<[string, string, string]> = [];
  if (bill) {
    rows.push(['prompt tokens computed', num(bill.computed_prompt_tokens), price(bill.amounts.prompt)]);
    rows.push(['prompt tokens cached', num(bill.cached_tokens), price(bill.amounts.cached)]);
    rows.push(['completion tokens', num(bill.completion_tokens), price(bill.amounts.completion)]);
    rows.push(['KV block-seconds', num(bill.kv_block_seconds, 3), price(bill.amounts.kv_rent)]);
  }
  return el(
    'div',
    { class: 'bill', id: 'pg-bill' },
    el('h3', {}, 'Bill'),
    el(
      'table',
      {},
      el('thead', {}, el('tr', {}, el('th', {}, 'item'), el('th', { class: 'num' }, 'quantity'), el('th', { class: 'num' }, 'amount'))),
      el(
        'tbody',
        {},
        ...rows.map(([a, b, c]) => el('tr', {}, el('td', {}, a), el('td', { class: 'num' }, b), el('td', { class: 'num' }, c))),
        // The charge never exceeds the claim: past it, the bill is capped (and the cap was escrowed).
        ...(bill && bill.subtotal > bill.total
          ? [el('tr', {}, el('td', {}, 'subtotal'), el('td', {}, ''), el('td', { class: 'num' }, price(bill.subtotal))), el('tr', {}, el('td', {}, 'capped at the claim'), el('td', {}, ''), el('td', { class: 'num' }, price(bill.cap)))]
          : []),
        el('tr', { class: 'total' }, el('td', {}, 'total'), el('td', {}, ''), el('td', { class: 'num', 'data-total': String(bill?.total ?? '') }, bill ? price(bill.total) : '–')),
      ),
    ),
    el(
      'p',
      { class: 'muted' },
      `usage: ${usage?.prompt_tokens ?? '–'} prompt (${usage?.prompt_tokens_details?.cached_tokens ?? 0} cached) + ${usage?.completion_tokens ?? '–'} completion tokens · ` +
        (bill ? `prices: ${price(bill.prices.token)}/token, ${price(bill.prices.kv_block_second)}/KV block·s · ` : '') +
        (bill && bill.charged === false ? 'not charged (the server runs without payment) · ' : '') +
        `TTFT ${ms(firstTokenMs)} · total ${ms(elapsedMs)}`,
    ),
  );
}

function quoteBox(status: number, error: { message?: string; code?: string | null } | undefined, quote: Quote | undefined, headers: Headers): HTMLElement {
  const retry = headers.get('retry-after');
  const items: Array<[string, string]> = [];
  if (quote) {
    items.push(['reason', quote.reason]);
    items.push(['price per token', price(quote.price_per_token)]);
    if (quote.price_per_kv_block_second !== undefined) items.push(['price per KV block-second', price(quote.price_per_kv_block_second)]);
    items.push(['minimum value', quote.min_value === null ? 'none clears now' : price(quote.min_value)]);
    if (quote.value_counted !== undefined) items.push(['value counted', price(quote.value_counted)]);
    items.push(['expected wait', quote.retryable === false || quote.expected_wait_ms === null ? 'waiting will not help' : ms(quote.expected_wait_ms)]);
  }
  if (retry !== null) items.push(['retry-after', `${retry} s`]);
  else if (headers.get('x-should-retry') === 'false') items.push(['retry', 'no (x-should-retry: false)']);
  return el(
    'div',
    { class: 'quote', id: 'pg-quote', 'data-status': String(status) },
    el('h3', {}, `${status} ${error?.code ?? ''}`),
    el('p', {}, error?.message ?? ''),
    ...(items.length > 0 ? [el('dl', {}, ...items.flatMap(([k, v]) => [el('dt', {}, k), el('dd', { 'data-field': k }, v)]))] : []),
  );
}

/** The playground: one streamed request at a time, its tokens as they come, then its bill or quote. */
export function setupPlayground(form: HTMLFormElement, key: () => string | undefined): void {
  const output = document.getElementById('pg-output') as HTMLPreElement;
  const result = document.getElementById('pg-result') as HTMLDivElement;
  const status = document.getElementById('pg-status') as HTMLSpanElement;
  const send = document.getElementById('send') as HTMLButtonElement;
  const stop = document.getElementById('stop') as HTMLButtonElement;
  let controller: AbortController | undefined;

  stop.addEventListener('click', () => controller?.abort());
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void run();
  });

  async function run(): Promise<void> {
    const { path, body } = requestBody(form);
    controller = new AbortController();
    output.textContent = '';
    result.replaceChildren();
    status.textContent = 'sending…';
    send.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    let firstToken: number | null = null;
    let usage: Usage | undefined;
    let bill: Bill | undefined;
    try {
      const k = key();
      const res = await fetch(path, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(k ? { authorization: `Bearer ${k}` } : {}) },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!res.ok || res.body === null) {
        const json = (await res.json().catch(() => ({}))) as { error?: { message?: string; code?: string | null; quote?: Quote }; quote?: Quote };
        result.replaceChildren(quoteBox(res.status, json.error, json.quote ?? json.error?.quote, res.headers));
        status.textContent = res.status === 429 ? 'turned away: see the quote' : `error ${res.status}`;
        return;
      }
      status.textContent = 'streaming…';
      let failure: { message?: string; code?: string | null } | undefined;
      await readEventStream(res.body, (_event, data) => {
        if (data === '[DONE]') return;
        const chunk = JSON.parse(data) as {
          choices?: Array<{ text?: string; delta?: { content?: string } }>;
          usage?: Usage;
          bill?: Bill | null;
          error?: { message?: string; code?: string | null };
        };
        if (chunk.error) failure = chunk.error;
        const piece = chunk.choices?.[0]?.text ?? chunk.choices?.[0]?.delta?.content ?? '';
        if (piece.length > 0) {
          firstToken ??= performance.now() - started;
          output.textContent += piece;
        }
        if (chunk.usage) usage = chunk.usage;
        if (chunk.bill) bill = chunk.bill;
      });
      if (failure) {
        result.replaceChildren(quoteBox(500, failure, undefined, new Headers()));
        status.textContent = 'failed mid-stream';
        return;
      }
      result.replaceChildren(billTable(usage, bill, performance.now() - started, firstToken));
      status.textContent = 'done';
    } catch (e) {
      status.textContent = (e as Error).name === 'AbortError' ? 'stopped' : `error: ${(e as Error).message}`;
    } finally {
      send.disabled = false;
      stop.disabled = true;
      controller = undefined;
    }
  }
}
