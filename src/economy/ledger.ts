import { InvalidArgumentError } from '../errors.js';

/**
 * A finished request's itemized bill, sent on the wire as an extension of the OpenAI response
 * (hence snake_case). Every amount is in value units (the unit of `value`, `bid` and budgets).
 *
 * Each step charges the prices in force at that step (the clearing prices, see
 * `economy/clearing.ts`), so the prices shown are averages over the request. `subtotal` is what
 * those prices add up to; `total`, what is charged, is the subtotal capped at `cap`, the value the
 * request claimed and had escrowed: a client never pays more than it said the work was worth, and
 * a tenant's budget is never overdrawn.
 */
export interface Bill {
  prompt_tokens: number;
  cached_tokens: number;
  computed_prompt_tokens: number;
  completion_tokens: number;
  kv_block_seconds: number;
  prices: { token: number; cached_token: number; kv_block_second: number };
  amounts: { prompt: number; cached: number; completion: number; kv_rent: number };
  subtotal: number;
  /** The most this request could be charged: its claimed value after the tenant's caps (escrowed at admission). */
  cap: number;
  total: number;
  /** False when the server runs without payment (bills are itemized but nothing is charged). */
  charged: boolean;
  currency: 'value';
}

/** Several runs' bills as one (a request's n choices): quantities and amounts summed, the prices of the first. */
export function mergeBills(bills: (Bill | undefined)[]): Bill | null {
  const bs = bills.filter((b): b is Bill => b !== undefined);
  const first = bs[0];
  if (first === undefined) return null;
  const sum = (f: (b: Bill) => number) => bs.reduce((a, b) => a + f(b), 0);
  return {
    ...first,
    prompt_tokens: sum((b) => b.prompt_tokens),
    cached_tokens: sum((b) => b.cached_tokens),
    computed_prompt_tokens: sum((b) => b.computed_prompt_tokens),
    completion_tokens: sum((b) => b.completion_tokens),
    kv_block_seconds: sum((b) => b.kv_block_seconds),
    amounts: { prompt: sum((b) => b.amounts.prompt), cached: sum((b) => b.amounts.cached), completion: sum((b) => b.amounts.completion), kv_rent: sum((b) => b.amounts.kv_rent) },
    total: sum((b) => b.total),
  };
}

export interface BillOptions {
  /**
   * Fraction of the token price a prompt token served from the prefix cache pays, like the
   * providers' cached-input discount: the tokens still occupy the request's KV, but cost no
   * prefill compute.
   */
  cachedDiscount?: number;
}

function checkQuantity(what: string, quantity: number, price: number): void {
  // Written as negated comparisons so NaN fails too; no allocation unless it throws.
  if (!(quantity >= 0 && quantity < Infinity)) throw new InvalidArgumentError(`${what} must be a non-negative number (got ${quantity})`);
  if (!(price >= 0 && price < Infinity)) throw new InvalidArgumentError(`${what} price must be a non-negative number (got ${price})`);
}

/**
 * Accumulates one request's charges as the scheduler runs it, at each step's prices. A
 * recompute after preemption is whatever the scheduler chooses to add: this only sums.
 */
export class BillBuilder {
  readonly cachedDiscount: number;
  private computedPrompt = 0;
  private cached = 0;
  private completion = 0;
  private kvBlockSeconds = 0;
  private promptAmount = 0;
  private cachedAmount = 0;
  private completionAmount = 0;
  private kvAmount = 0;

  constructor(options: BillOptions = {}) {
    const d = options.cachedDiscount ?? 0.1;
    if (!(d >= 0 && d <= 1)) throw new InvalidArgumentError(`cachedDiscount must be a number in [0, 1] (got ${d})`);
    this.cachedDiscount = d;
  }

  addPrompt(computedTokens: number, cachedTokens: number, tokenPrice: number): void {
    checkQuantity('computed prompt tokens', computedTokens, tokenPrice);
    checkQuantity('cached prompt tokens', cachedTokens, tokenPrice);
    this.computedPrompt += computedTokens;
    this.cached += cachedTokens;
    this.promptAmount += computedTokens * tokenPrice;
    this.cachedAmount += cachedTokens * tokenPrice * this.cachedDiscount;
  }

  addCompletion(tokens: number, tokenPrice: number): void {
    checkQuantity('completion tokens', tokens, tokenPrice);
    this.completion += tokens;
    this.completionAmount += tokens * tokenPrice;
  }

  addKvRent(blockSeconds: number, price: number): void {
    checkQuantity('KV block-seconds', blockSeconds, price);
    this.kvBlockSeconds += blockSeconds;
    this.kvAmount += blockSeconds * price;
  }

  /** Adds another builder's charges (a request's streams billed as one). */
  absorb(other: BillBuilder): void {
    this.computedPrompt += other.computedPrompt;
    this.cached += other.cached;
    this.completion += other.completion;
    this.kvBlockSeconds += other.kvBlockSeconds;
    this.promptAmount += other.promptAmount;
    this.cachedAmount += other.cachedAmount;
    this.completionAmount += other.completionAmount;
    this.kvAmount += other.kvAmount;
  }

  /** What the prices so far add up to, before the cap. */
  get subtotal(): number {
    return this.promptAmount + this.cachedAmount + this.completionAmount + this.kvAmount;
  }

  /** The bill as charged: the subtotal capped at `cap`, or nothing when `charged` is false. */
  bill(cap = Infinity, charged = true): Bill {
    const computed = this.computedPrompt + this.completion;
    const subtotal = this.subtotal;
    return {
      prompt_tokens: this.computedPrompt + this.cached,
      cached_tokens: this.cached,
      computed_prompt_tokens: this.computedPrompt,
      completion_tokens: this.completion,
      kv_block_seconds: this.kvBlockSeconds,
      prices: {
        // Prompt and completion tokens both take batch compute at p_tok, so they share one average.
        token: computed > 0 ? (this.promptAmount + this.completionAmount) / computed : 0,
        cached_token: this.cached > 0 ? this.cachedAmount / this.cached : 0,
        kv_block_second: this.kvBlockSeconds > 0 ? this.kvAmount / this.kvBlockSeconds : 0,
      },
      amounts: {
        prompt: this.promptAmount,
        cached: this.cachedAmount,
        completion: this.completionAmount,
        kv_rent: this.kvAmount,
      },
      subtotal,
      cap,
      total: charged ? Math.min(subtotal, cap) : 0,
      charged,
      currency: 'value',
    };
  }
}

export interface TenantAccount {
  /** Infinity means no budget. */
  budget: number;
  spent: number;
  /** Held for requests in flight: their maximum charges, settled when they finish. */
  escrowed: number;
  /** The most one request of this tenant may claim to be worth (Infinity: only the budget caps it). */
  maxValue: number;
  /** Requests accounted for: settled (finished or not) plus rejected. */
  requests: number;
  /** Settled requests that finished normally (not cancelled or failed midway). */
  completed: number;
  rejected: number;
  /** Requests holding escrow now. */
  inFlight: number;
}

function checkBudget(what: string, budget: number): void {
  if (!(budget >= 0)) throw new InvalidArgumentError(`${what} must be a non-negative number or Infinity (got ${budget})`);
}

/**
 * Per-tenant (API key) money. A request's claim of value is backed by it: admission escrows the
 * request's maximum charge (its claimed value, capped by what the tenant has left and by its
 * `maxValue`), and the request settles at finish, paying its bill (never more than the escrow)
 * and getting the rest back. So spent + escrowed ≤ budget at all times: a budget is never
 * overdrawn, however many requests run at once.
 */
export class Ledger {
  private readonly accounts = new Map<string, TenantAccount>();
  private total = 0;
  readonly defaultBudget: number;
  readonly defaultMaxValue: number;

  constructor(options: { defaultBudget?: number; defaultMaxValue?: number } = {}) {
    const b = options.defaultBudget ?? Infinity;
    const m = options.defaultMaxValue ?? Infinity;
    checkBudget('budget', b);
    checkBudget('maxValue', m);
    this.defaultBudget = b;
    this.defaultMaxValue = m;
  }

  private get(tenant: string): TenantAccount {
    let a = this.accounts.get(tenant);
    if (a === undefined) {
      a = { budget: this.defaultBudget, spent: 0, escrowed: 0, maxValue: this.defaultMaxValue, requests: 0, completed: 0, rejected: 0, inFlight: 0 };
      this.accounts.set(tenant, a);
    }
    return a;
  }

  setBudget(tenant: string, budget: number): void {
    checkBudget('budget', budget);
    this.get(tenant).budget = budget;
  }

  setMaxValue(tenant: string, maxValue: number): void {
    checkBudget('maxValue', maxValue);
    this.get(tenant).maxValue = maxValue;
  }

  /** What the tenant can still commit: budget − spent − escrowed (Infinity without a budget). */
  available(tenant: string): number {
    const a = this.accounts.get(tenant);
    if (a === undefined) return this.defaultBudget;
    return Math.max(0, a.budget - a.spent - a.escrowed);
  }

  /** The most one request of `tenant` may be worth: min(its per-request cap, what it can still commit). */
  valueCap(tenant: string): number {
    const a = this.accounts.get(tenant);
    return Math.min(a?.maxValue ?? this.defaultMaxValue, this.available(tenant));
  }

  /** True when the budget is spent for good: nothing left and nothing in flight to refund. */
  exhausted(tenant: string): boolean {
    const a = this.accounts.get(tenant);
    const budget = a?.budget ?? this.defaultBudget;
    if (budget === Infinity) return false;
    return (a?.inFlight ?? 0) === 0 && (a?.spent ?? 0) >= budget;
  }

  /** Holds `amount` for a request entering the queue; throws if it exceeds what is available. */
  escrow(tenant: string, amount: number): void {
    if (!(amount >= 0 && amount < Infinity)) throw new InvalidArgumentError(`escrow must be a non-negative finite number (got ${amount})`);
    const a = this.get(tenant);
    if (amount > this.available(tenant) * (1 + 1e-12)) throw new InvalidArgumentError(`escrow ${amount} exceeds tenant ${tenant}'s available ${this.available(tenant)}`);
    a.escrowed += amount;
    a.inFlight++;
  }

  /**
   * Settles a request: it pays `charge` (at most its escrow) and the rest of the escrow returns.
   * `completed` is false for a request cancelled or failed after doing work.
   */
  settle(tenant: string, escrowed: number, charge: number, completed = true): void {
    if (!(charge >= 0 && charge < Infinity)) throw new InvalidArgumentError(`charge must be a non-negative finite number (got ${charge})`);
    const a = this.get(tenant);
    const paid = Math.min(charge, escrowed);
    this.release(a, escrowed);
    a.spent += paid;
    a.requests++;
    if (completed) a.completed++;
    this.total += paid;
  }

  /** A request turned away: its escrow (undefined when it never held one) returns whole. */
  reject(tenant: string, escrowed?: number): void {
    const a = this.get(tenant);
    if (escrowed !== undefined) this.release(a, escrowed);
    a.requests++;
    a.rejected++;
  }

  private release(a: TenantAccount, escrowed: number): void {
    a.inFlight = Math.max(0, a.inFlight - 1);
    // Sums of floats drift: with nothing in flight the escrow is exactly zero.
    a.escrowed = a.inFlight === 0 ? 0 : Math.max(0, a.escrowed - escrowed);
  }

  /** A copy of the tenant's account (a fresh one, not recorded, for an unknown tenant). */
  account(tenant: string): TenantAccount {
    const a = this.accounts.get(tenant);
    return a ? { ...a } : { budget: this.defaultBudget, spent: 0, escrowed: 0, maxValue: this.defaultMaxValue, requests: 0, completed: 0, rejected: 0, inFlight: 0 };
  }

  tenants(): string[] {
    return [...this.accounts.keys()];
  }

  /** Everything charged, over all tenants. */
  get revenue(): number {
    return this.total;
  }
}
