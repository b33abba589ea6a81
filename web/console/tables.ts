import type { RequestRecord } from '../../src/server/journal.js';
import type { TenantState } from '../../src/server/console/market.js';
import { clock, el, ms, num, price } from './format.js';

const MAX_ROWS = 60;

export function renderTenants(tbody: HTMLTableSectionElement, tenants: TenantState[]): void {
  const rows = tenants.map((t) =>
    el(
      'tr',
      { 'data-tenant': t.tenant },
      el('td', {}, t.tenant),
      el('td', { class: 'num' }, price(t.spent)),
      el('td', { class: 'num' }, price(t.escrowed)),
      el('td', { class: 'num' }, t.remaining === null ? 'unlimited' : price(t.remaining)),
      el('td', { class: 'num' }, price(t.valueRealized)),
      el('td', { class: 'num' }, num(t.requests.completed)),
      el('td', { class: 'num' }, num(t.requests.rejected)),
      el('td', { class: 'num' }, num(t.requests.aborted)),
      el('td', { class: 'num' }, num(t.requests.failed)),
    ),
  );
  tbody.replaceChildren(...rows);
}

/** What the bill charged, item by item; or the quote a rejected request left with. */
export function describeRecord(r: RequestRecord): string {
  if (r.quote) {
    const q = r.quote;
    const clears = q.min_value === null ? 'nothing clears now' : `needs value ≥ ${price(q.min_value)}`;
    const wait = q.retryable && q.expected_wait_ms !== null ? `retry in ~${ms(q.expected_wait_ms)}` : 'waiting will not help';
    return `${q.reason}: ${clears} (counted ${price(q.value_counted)}; ${price(q.price_per_token)}/token), ${wait} — ${q.message}`;
  }
  if (r.bill) {
    const b = r.bill;
    return `prompt ${price(b.amounts.prompt)} · cached ${price(b.amounts.cached)} · completion ${price(b.amounts.completion)} · KV ${price(b.amounts.kv_rent)} (${num(b.kv_block_seconds, 2)} block·s) @ ${price(b.prices.token)}/token`;
  }
  return r.error_code ?? '';
}

export function prependRequests(tbody: HTMLTableSectionElement, records: RequestRecord[]): void {
  for (const r of records) {
    const route = r.path.replace('/v1/', '').replace('chat/completions', 'chat');
    const tokens = r.prompt_tokens === undefined ? '–' : `${r.prompt_tokens} / ${r.cached_tokens ?? 0} / ${r.completion_tokens ?? 0}`;
    const row = el(
      'tr',
      { 'data-outcome': r.outcome, 'data-id': r.id },
      el('td', {}, clock(r.time)),
      el('td', {}, r.tenant ?? '–'),
      el('td', {}, route),
      el('td', {}, el('span', { class: `badge ${r.outcome}` }, `${r.outcome} ${r.status}`)),
      el('td', { class: 'num' }, tokens),
      el('td', { class: 'num' }, ms(r.ttft_ms)),
      el('td', { class: 'num' }, ms(r.tpot_ms)),
      el('td', { class: 'num' }, ms(r.e2e_ms)),
      el('td', { class: 'num' }, r.bill ? price(r.bill.total) : '–'),
      el('td', { class: 'detail' }, describeRecord(r)),
    );
    tbody.prepend(row);
  }
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(tbody.rows.length - 1);
}
