import createError from '@fastify/error';
import { InvalidArgumentError } from '../errors.js';

/** 402 Payment Required: the tenant's budget is spent (or would be by this request). */
export const BudgetExceededError = createError<[string]>('MARGINAL_BUDGET_EXCEEDED', '%s', 402);

/**
 * A finished request's itemized bill, sent on the wire as an extension of the OpenAI response
 * (hence snake_case). Prices are averages over the request: the prices in force moved from
 * step to step while it ran, and the bill charged each step at its own price.
 */
export interface Bill {
  prompt_tokens: number;
  cached_tokens: number;
  computed_prompt_tokens: number;
  completion_tokens: number;
  kv_block_seconds: number;
  prices: { token: number; cached_token: number; kv_block_second: number };
  amounts: { prompt: number; cached: number; completion: number; kv_rent: number };
  total: number;
  currency: 'value';
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

  /** The running total, for budget checks while the request is still going. */
  get total(): number {
    return this.promptAmount + this.cachedAmount + this.completionAmount + this.kvAmount;
  }

  bill(): Bill {
    const computed = this.computedPrompt + this.completion;
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
      total: this.total,
      currency: 'value',
    };
  }
}

export interface TenantAccount {
  /** Infinity means no budget. */
  budget: number;
  spent: number;
  /** Requests accounted for: charged (finished or not) plus rejected. */
  requests: number;
  /** Charged requests that finished normally (not cancelled or failed midway). */
  completed: number;
  rejected: number;
}

function checkBudget(budget: number): void {
  if (!(budget >= 0)) throw new InvalidArgumentError(`budget must be a non-negative number or Infinity (got ${budget})`);
}

/**
 * Per-tenant (API key) spending. A tenant may overdraw by the last request, whose true cost is
 * only known once it finishes; from then on spent >= budget and it is not admitted again.
 */
export class Ledger {
  private readonly accounts = new Map<string, TenantAccount>();
  private total = 0;
  readonly defaultBudget: number;

  constructor(options: { defaultBudget?: number } = {}) {
    const b = options.defaultBudget ?? Infinity;
    checkBudget(b);
    this.defaultBudget = b;
  }

  private get(tenant: string): TenantAccount {
    let a = this.accounts.get(tenant);
    if (a === undefined) {
      a = { budget: this.defaultBudget, spent: 0, requests: 0, completed: 0, rejected: 0 };
      this.accounts.set(tenant, a);
    }
    return a;
  }

  setBudget(tenant: string, budget: number): void {
    checkBudget(budget);
    this.get(tenant).budget = budget;
  }

  /** Admission check: the tenant has budget left and `amount` (an expected cost) fits in it. */
  canAfford(tenant: string, amount: number): boolean {
    if (!(amount >= 0)) throw new InvalidArgumentError(`amount must be a non-negative number (got ${amount})`);
    const a = this.accounts.get(tenant);
    const budget = a?.budget ?? this.defaultBudget;
    const spent = a?.spent ?? 0;
    return spent < budget && spent + amount <= budget;
  }

  /** Throws BudgetExceededError where canAfford is false, with a message for the client. */
  assertCanAfford(tenant: string, amount: number): void {
    if (this.canAfford(tenant, amount)) return;
    const a = this.account(tenant);
    throw new BudgetExceededError(
      `budget exceeded for tenant ${tenant}: spent ${a.spent} of ${a.budget}` + (amount > 0 ? `, this request is expected to cost ${amount}` : ''),
    );
  }

  /** Books a bill; `completed` is false for a request cancelled or failed after doing work. */
  charge(tenant: string, bill: Pick<Bill, 'total'>, completed = true): void {
    const amount = bill.total;
    if (!(amount >= 0 && amount < Infinity)) throw new InvalidArgumentError(`bill total must be a non-negative number (got ${amount})`);
    const a = this.get(tenant);
    a.spent += amount;
    a.requests++;
    if (completed) a.completed++;
    this.total += amount;
  }

  reject(tenant: string): void {
    const a = this.get(tenant);
    a.requests++;
    a.rejected++;
  }

  /** A copy of the tenant's account (a fresh one, not recorded, for an unknown tenant). */
  account(tenant: string): TenantAccount {
    const a = this.accounts.get(tenant);
    return a ? { ...a } : { budget: this.defaultBudget, spent: 0, requests: 0, completed: 0, rejected: 0 };
  }

  tenants(): string[] {
    return [...this.accounts.keys()];
  }

  /** Everything charged, over all tenants. */
  get revenue(): number {
    return this.total;
  }
}
