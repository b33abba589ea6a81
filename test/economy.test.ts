import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { curveFileJson, defaultCurves, loadCurveFile, parseCurve, parseCurveFile, type PriceCurve } from '../src/economy/curves.js';
import { BillBuilder, Ledger } from '../src/economy/ledger.js';
import { InvalidArgumentError } from '../src/errors.js';
import { mulberry32 as prng } from '../src/random.js';


/** Positive magnitudes spread over many orders, like real price parameters. */
function magnitude(r: () => number): number {
  return Math.pow(10, -7 + 8 * r());
}

function randomSpec(r: () => number): Record<string, unknown> {
  const p0 = r() < 0.3 ? 0 : magnitude(r);
  switch (Math.floor(r() * 4)) {
    case 0:
      return { kind: 'linear', p0, slope: r() < 0.1 ? 0 : magnitude(r) };
    case 1:
      return { kind: 'power', p0, scale: magnitude(r), exponent: 0.1 + 8 * r() };
    case 2:
      return { kind: 'mm1', p0, scale: magnitude(r), max_utilization: 0.5 + 0.4999 * r() };
    default: {
      const n = 1 + Math.floor(r() * 8);
      const points: Array<[number, number]> = [];
      let u = r() * 0.2;
      let p = r() < 0.5 ? 0 : magnitude(r);
      for (let i = 0; i < n && u <= 1; i++) {
        points.push([u, p]);
        u += 1e-3 + r() * 0.3;
        p += r() < 0.2 ? 0 : magnitude(r);
      }
      return { kind: 'table', points };
    }
  }
}

function assertInvalid(fn: () => unknown, field: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(e)}`);
    assert.equal((e as { code: string }).code, 'MARGINAL_INVALID_ARGUMENT');
    assert.match((e as Error).message, field);
    return true;
  });
}

describe('price curves', () => {
  it('stateless curves are non-negative, finite and non-decreasing in u (random parameters)', () => {
    const r = prng(20240611);
    const kinds = new Set<string>();
    for (let trial = 0; trial < 400; trial++) {
      const spec = randomSpec(r);
      const c = parseCurve(spec, 'test');
      kinds.add(c.kind);
      let prev = -Infinity;
      // Past both ends, to check the clamping keeps the order.
      for (let i = -200; i <= 2200; i++) {
        const u = i / 2000;
        const p = c.price(u);
        assert.ok(Number.isFinite(p) && p >= 0, `${JSON.stringify(spec)} at u=${u}: ${p}`);
        assert.ok(p >= prev, `${JSON.stringify(spec)} decreases at u=${u}: ${prev} -> ${p}`);
        prev = p;
      }
      c.observe(0.9);
      assert.equal(c.price(0.3), parseCurve(spec, 'test').price(0.3), 'stateless curves ignore observe');
    }
    assert.deepEqual([...kinds].sort(), ['linear', 'mm1', 'power', 'table']);
  });

  it('is ~p0 when idle, and treats NaN as idle', () => {
    for (const spec of [
      { kind: 'linear', p0: 0.5, slope: 2 },
      { kind: 'power', p0: 0.5, scale: 2, exponent: 3 },
      { kind: 'mm1', p0: 0.5, scale: 2 },
    ]) {
      const c = parseCurve(spec, 'test');
      assert.equal(c.price(0), 0.5);
      assert.equal(c.price(-1), 0.5);
      assert.equal(c.price(Number.NaN), 0.5);
    }
  });

  it('evaluates each kind', () => {
    assert.equal(parseCurve({ kind: 'linear', p0: 1, slope: 2 }, 't').price(0.25), 1.5);
    assert.equal(parseCurve({ kind: 'linear', p0: 1, slope: 2 }, 't').price(5), 3);
    assert.equal(parseCurve({ kind: 'power', p0: 1, scale: 16, exponent: 2 }, 't').price(0.5), 5);
    const mm1 = parseCurve({ kind: 'mm1', p0: 0, scale: 1 }, 't');
    assert.equal(mm1.price(0.5), 1);
    assert.ok(Math.abs(mm1.price(1) - 99) < 1e-9, 'capped at the default max_utilization 0.99');
    assert.equal(mm1.price(1), mm1.price(7));
    assert.ok(Number.isFinite(parseCurve({ kind: 'mm1', p0: 0, scale: 1, max_utilization: 0.999999 }, 't').price(1)));
  });

  it('interpolates tables exactly at and between points, flat beyond the ends', () => {
    const c = parseCurve({ kind: 'table', points: [[0.2, 1], [0.5, 1], [0.6, 3], [0.9, 9]] }, 't');
    for (const [u, p] of [[0.2, 1], [0.5, 1], [0.6, 3], [0.9, 9]] as const) assert.equal(c.price(u), p);
    assert.equal(c.price(0), 1);
    assert.equal(c.price(0.35), 1);
    assert.ok(Math.abs(c.price(0.55) - 2) < 1e-12);
    assert.ok(Math.abs(c.price(0.7) - 5) < 1e-12);
    assert.equal(c.price(1), 9);
    assert.equal(c.price(3), 9);
    const one = parseCurve({ kind: 'table', points: [[0.5, 4]] }, 't');
    assert.equal(one.price(0), 4);
    assert.equal(one.price(1), 4);
  });

  it('rejects invalid specs, naming the field', () => {
    assertInvalid(() => parseCurve(null, 'curve file tokens'), /^curve file tokens must be an object/);
    assertInvalid(() => parseCurve([1, 2], 'curve file tokens'), /^curve file tokens must be an object/);
    assertInvalid(() => parseCurve({ kind: 'cubic' }, 'curve file tokens'), /^curve file tokens\.kind must be one of .*got "cubic"/);
    assertInvalid(() => parseCurve({ p0: 0 }, 'curve file tokens'), /^curve file tokens\.kind must be one of .*missing/);
    assertInvalid(() => parseCurve({ kind: 'toString' }, 'x'), /x\.kind must be one of/);
    assertInvalid(() => parseCurve({ kind: 'power', p0: 0, scale: 1, exponent: 0 }, 'curve file tokens'), /^curve file tokens\.exponent must be a positive number$/);
    assertInvalid(() => parseCurve({ kind: 'power', p0: 0, scale: -1, exponent: 2 }, 'k'), /^k\.scale must be a non-negative number$/);
    assertInvalid(() => parseCurve({ kind: 'power', p0: 0, exponent: 2 }, 'k'), /^k\.scale must be a non-negative number \(missing\)$/);
    assertInvalid(() => parseCurve({ kind: 'linear', p0: '1', slope: 1 }, 'k'), /^k\.p0 must be/);
    assertInvalid(() => parseCurve({ kind: 'linear', p0: 0, slope: Infinity }, 'k'), /^k\.slope must be/);
    assertInvalid(() => parseCurve({ kind: 'linear', p0: 0, slope: 1, slop: 1 }, 'k'), /^k\.slop is not a field of a linear curve/);
    assertInvalid(() => parseCurve({ kind: 'mm1', p0: 0, scale: 1, max_utilization: 1 }, 'k'), /^k\.max_utilization must be a number in \(0, 1\)/);
    assertInvalid(() => parseCurve({ kind: 'table', points: [] }, 'k'), /^k\.points must be a non-empty array/);
    assertInvalid(() => parseCurve({ kind: 'table', points: [[0, 1], [0.5]] }, 'k'), /^k\.points\[1\] must be a \[u, price\] pair/);
    assertInvalid(() => parseCurve({ kind: 'table', points: [[0, 1], [0, 2]] }, 'k'), /^k\.points\[1\]\[0\] \(u\) must be greater/);
    assertInvalid(() => parseCurve({ kind: 'table', points: [[0, 2], [0.5, 1]] }, 'k'), /^k\.points\[1\]\[1\] \(price\) must be at least/);
    assertInvalid(() => parseCurve({ kind: 'table', points: [[0, 1], [50, 2]] }, 'k'), /^k\.points\[1\]\[0\] \(u\) must be a number in \[0, 1\]/);
    assertInvalid(() => parseCurve({ kind: 'dual', p0: 0, step: 1 }, 'k'), /^k\.target must be a number in \[0, 1\] \(missing\)/);
    assertInvalid(() => parseCurve({ kind: 'dual', p0: 0, step: 1, target: 0.8, min: 2, max: 1 }, 'k'), /^k\.max must be at least/);
    assertInvalid(() => parseCurve({ kind: 'dual', p0: 5, step: 1, target: 0.8, max: 1 }, 'k'), /^k\.p0 must lie in \[min, max\]/);
  });

  it('dual ascent rises above target, falls below, clamped to [min, max]', () => {
    const c = parseCurve({ kind: 'dual', p0: 1, step: 0.5, target: 0.8, min: 0.25, max: 2 }, 't');
    assert.equal(c.price(0), 1);
    assert.equal(c.price(1), 1, 'constant within a step');
    c.observe(1);
    assert.ok(Math.abs(c.price(0) - 1.1) < 1e-12);
    c.observe(0.8);
    assert.ok(Math.abs(c.price(0) - 1.1) < 1e-12, 'at target the price holds');
    for (let i = 0; i < 100; i++) c.observe(1);
    assert.equal(c.price(0), 2);
    c.observe(0.4);
    assert.ok(Math.abs(c.price(0) - 1.8) < 1e-12);
    for (let i = 0; i < 100; i++) c.observe(0);
    assert.equal(c.price(0), 0.25);
    c.observe(Number.NaN);
    assert.equal(c.price(0), 0.25);
    c.reset();
    assert.equal(c.price(0), 1);
    const unbounded = parseCurve({ kind: 'dual', p0: 0, step: 1, target: 0.5 }, 't');
    unbounded.observe(0);
    assert.equal(unbounded.price(0), 0, 'min defaults to 0');
    for (let i = 0; i < 10; i++) unbounded.observe(7);
    assert.equal(unbounded.price(0), 5, 'u above 1 counts as full');
  });

  it('round-trips curveFileJson through JSON and parseCurveFile', () => {
    const curves = {
      tokens: parseCurve({ kind: 'table', points: [[0, 0], [0.5, 1e-4], [1, 2e-3]] }, 't'),
      kv: parseCurve({ kind: 'dual', p0: 1e-5, step: 1e-6, target: 0.9 }, 'k'),
    };
    const sets: Array<{ tokens: PriceCurve; kv: PriceCurve }> = [curves, defaultCurves()];
    const r = prng(7);
    for (let i = 0; i < 50; i++) sets.push({ tokens: parseCurve(randomSpec(r), 't'), kv: parseCurve(randomSpec(r), 'k') });
    for (const c of sets) {
      const back = parseCurveFile(JSON.parse(JSON.stringify(curveFileJson(c))));
      assert.equal(back.tokens.kind, c.tokens.kind);
      assert.equal(back.kv.kind, c.kv.kind);
      for (let u = 0; u <= 1; u += 0.01) {
        assert.equal(back.tokens.price(u), c.tokens.price(u));
        assert.equal(back.kv.price(u), c.kv.price(u));
      }
    }
  });

  it('reads curve files, defaulting an omitted resource and naming the file in errors', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'marginal-curves-'));
    try {
      const good = join(dir, 'good.json');
      await writeFile(good, JSON.stringify({ tokens: { kind: 'linear', p0: 0, slope: 1 } }));
      const c = await loadCurveFile(good);
      assert.equal(c.tokens.price(0.5), 0.5);
      assert.equal(c.kv.price(0.5), defaultCurves().kv.price(0.5));

      const bad = join(dir, 'bad.json');
      await writeFile(bad, JSON.stringify({ tokens: { kind: 'power', p0: 0, scale: 1, exponent: -2 } }));
      await assert.rejects(loadCurveFile(bad), (e: Error) => e instanceof InvalidArgumentError && e.message === `curve file ${bad} tokens.exponent must be a positive number`);

      const garbled = join(dir, 'garbled.json');
      await writeFile(garbled, '{ "tokens": ');
      await assert.rejects(loadCurveFile(garbled), (e: Error) => e instanceof InvalidArgumentError && e.message.startsWith(`curve file ${garbled} is not valid JSON`));

      await assert.rejects(loadCurveFile(join(dir, 'missing.json')), (e: Error) => e instanceof InvalidArgumentError && /cannot read curve file .*missing\.json/.test(e.message));
      assertInvalid(() => parseCurveFile({ token: {} }), /^curve file: unknown field "token"/);
      assertInvalid(() => parseCurveFile('x'), /^curve file must be a JSON object/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('defaults are ~0 when idle and rise steeply near full', () => {
    const { tokens, kv } = defaultCurves();
    assert.equal(tokens.price(0), 0);
    assert.equal(kv.price(0), 0);
    assert.ok(tokens.price(0.5) < tokens.price(1) / 10);
    assert.ok(kv.price(0.5) < kv.price(1) / 50);
    assert.ok(tokens.price(1) >= 1e-4 && tokens.price(1) <= 1e-2);
  });
});

describe('billing', () => {
  it('itemizes a request at the prices of each step', () => {
    const b = new BillBuilder();
    b.addPrompt(60, 40, 1e-3); // 40 cached tokens at 10% of the price
    b.addPrompt(20, 0, 2e-3); // a second prefill chunk at a higher price
    b.addCompletion(5, 2e-3);
    b.addCompletion(15, 4e-3);
    b.addKvRent(10, 1e-5);
    b.addKvRent(30, 5e-5);
    const bill = b.bill();
    assert.equal(bill.prompt_tokens, 120);
    assert.equal(bill.cached_tokens, 40);
    assert.equal(bill.computed_prompt_tokens, 80);
    assert.equal(bill.completion_tokens, 20);
    assert.equal(bill.kv_block_seconds, 40);
    const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-12, `${a} != ${b}`);
    close(bill.amounts.prompt, 0.06 + 0.04);
    close(bill.amounts.cached, 0.004);
    close(bill.amounts.completion, 0.01 + 0.06);
    close(bill.amounts.kv_rent, 1e-4 + 1.5e-3);
    close(bill.total, 0.1 + 0.004 + 0.07 + 0.0016);
    close(bill.total, bill.amounts.prompt + bill.amounts.cached + bill.amounts.completion + bill.amounts.kv_rent);
    close(b.subtotal, bill.total);
    close(bill.subtotal, bill.total);
    assert.equal(bill.cap, Infinity);
    assert.equal(bill.charged, true);
    close(bill.prices.token, 0.17 / 100);
    close(bill.prices.cached_token, 1e-4);
    close(bill.prices.kv_block_second, 0.0016 / 40);
    assert.equal(bill.currency, 'value');
  });

  it('honours a custom cached discount and reports zero prices for unused items', () => {
    const b = new BillBuilder({ cachedDiscount: 0.5 });
    b.addPrompt(0, 10, 0.2);
    const out = b.bill();
    assert.equal(out.amounts.cached, 1);
    assert.equal(out.prices.cached_token, 0.1);
    assert.equal(out.prices.token, 0);
    assert.equal(out.prices.kv_block_second, 0);
    assert.equal(out.total, 1);
    assert.equal(new BillBuilder().bill().total, 0);
  });

  it('rejects bad quantities and discounts', () => {
    assertInvalid(() => new BillBuilder({ cachedDiscount: 1.5 }), /cachedDiscount/);
    const b = new BillBuilder();
    assertInvalid(() => b.addCompletion(-1, 1), /completion tokens/);
    assertInvalid(() => b.addCompletion(1, Number.NaN), /completion tokens price/);
    assertInvalid(() => b.addKvRent(1, Infinity), /KV block-seconds price/);
  });
});

describe('billing caps', () => {
  it('charges the subtotal up to the cap, and nothing without payment', () => {
    const b = new BillBuilder();
    b.addCompletion(100, 0.01);
    const close = (a: number, x: number) => assert.ok(Math.abs(a - x) < 1e-12, `${a} != ${x}`);
    close(b.bill().total, 1);
    close(b.bill(0.4).total, 0.4);
    close(b.bill(0.4).subtotal, 1);
    assert.equal(b.bill(0.4).cap, 0.4);
    const free = b.bill(5, false);
    assert.equal(free.total, 0);
    assert.equal(free.charged, false);
    close(free.subtotal, 1);
  });
});

describe('ledger', () => {
  it('escrows claims, settles bills, refunds the rest and never overdraws', () => {
    const l = new Ledger();
    l.setBudget('a', 1);
    assert.equal(l.available('a'), 1);
    l.escrow('a', 0.6);
    assert.equal(l.available('a'), 0.4);
    assert.equal(l.valueCap('a'), 0.4);
    assertInvalid(() => l.escrow('a', 0.5), /exceeds/);
    l.escrow('a', 0.4);
    assert.equal(l.available('a'), 0);
    assert.equal(l.exhausted('a'), false, 'money in flight may come back');
    l.settle('a', 0.6, 0.25);
    assert.ok(Math.abs(l.available('a') - 0.35) < 1e-12, 'the unused 0.35 of the escrow came back');
    // A bill above its escrow is charged the escrow only.
    l.settle('a', 0.4, 9);
    const a = l.account('a');
    assert.ok(Math.abs(a.spent - 0.65) < 1e-12);
    assert.equal(a.escrowed, 0);
    assert.equal(a.inFlight, 0);
    assert.ok(a.spent + a.escrowed <= a.budget);
    l.escrow('a', 0.35);
    l.reject('a', 0.35);
    assert.ok(Math.abs(l.available('a') - 0.35) < 1e-12, 'a rejection refunds its escrow whole');
    l.reject('a');
    assert.deepEqual({ ...l.account('a'), spent: 0 }, { budget: 1, spent: 0, escrowed: 0, maxValue: Infinity, requests: 4, completed: 2, rejected: 2, inFlight: 0 });
    assert.ok(Math.abs(l.revenue - 0.65) < 1e-12);
    assert.deepEqual(l.tenants(), ['a']);
  });

  it('is exhausted only when spent and nothing is in flight; caps claims by maxValue and what is left', () => {
    const l = new Ledger({ defaultBudget: 2, defaultMaxValue: 0.5 });
    assert.equal(l.valueCap('new'), 0.5);
    assert.deepEqual(l.tenants(), [], 'looking does not open an account');
    l.setMaxValue('rich', 100);
    l.setBudget('rich', Infinity);
    assert.equal(l.valueCap('rich'), 100);
    l.setBudget('zero', 0);
    assert.equal(l.exhausted('zero'), true);
    assert.equal(l.valueCap('zero'), 0);
    l.setBudget('b', 1);
    l.escrow('b', 0.5);
    l.settle('b', 0.5, 0.5);
    l.escrow('b', 0.5);
    assert.equal(l.exhausted('b'), false);
    l.settle('b', 0.5, 0.5);
    assert.equal(l.exhausted('b'), true);
    assertInvalid(() => l.setBudget('x', -1), /budget/);
    assertInvalid(() => l.setMaxValue('x', Number.NaN), /maxValue/);
    assertInvalid(() => l.escrow('x', Number.NaN), /escrow/);
    assertInvalid(() => l.settle('x', 0, -1), /charge/);
  });
});
