import type { Generator } from '../../serving/generator.js';
import type { MetricsTotals, ServerMetrics, TenantOutcome } from '../metrics.js';
import type { TenantDirectory } from '../tenants.js';

/** What the console shows of the server's configuration. */
export interface ConsoleInfo {
  model: string;
  synthetic: boolean;
  policy: string;
  provider: string;
  flavour: string;
  maxSequences: number;
  maxBatchTokens: number;
  maxContext: number;
  blockSize: number;
  totalBlocks: number;
  /** True when requests need an API key (a keys file is loaded); the console then needs an admin key. */
  keys: boolean;
}

/** The market's state at one instant. */
export interface MarketSnapshot {
  /** Prices in force: the reserve (the operator's curve) or the clearing price, whichever is higher. */
  priceToken: number;
  priceKv: number;
  /** The curves' reserve prices at the current utilization. */
  reserveToken: number;
  reserveKv: number;
  /** Fraction of the batch-token budget the last step used. */
  utilTokens: number;
  /** Fraction of KV blocks held by running streams. */
  utilKv: number;
  running: number;
  waiting: number;
  swapped: number;
}

export interface TenantState {
  tenant: string;
  /** null: no budget (unlimited). */
  budget: number | null;
  spent: number;
  /** Held for requests in flight (their maximum charges), settled when they finish. */
  escrowed: number;
  remaining: number | null;
  valueRealized: number;
  billed: number;
  requests: Record<TenantOutcome, number>;
}

/**
 * Everything the console reads, and the only seam between it and the server's internals: the
 * console never touches the scheduler, it samples this.
 */
export interface MarketView {
  readonly info: ConsoleInfo;
  snapshot(): MarketSnapshot;
  /** The operator's congestion curves (reserve prices) at utilization u. */
  reserveTokenPrice(u: number): number;
  reserveKvPrice(u: number): number;
  /** Cumulative counts, the same numbers /metrics reports. */
  totals(): MetricsTotals;
  tenants(): TenantState[];
}

/** The MarketView of a running server. */
export function serverMarket(generator: Generator, metrics: ServerMetrics, directory: TenantDirectory, modelName: string, synthetic: boolean): MarketView {
  const sched = generator.scheduler;
  const engine = generator.engine.info;
  const info: ConsoleInfo = {
    model: modelName,
    synthetic,
    policy: sched.policyName,
    provider: engine.provider,
    flavour: engine.flavour,
    maxSequences: sched.maxRunning,
    maxBatchTokens: sched.config.maxBatchTokens,
    maxContext: sched.config.maxContext,
    blockSize: sched.config.blockSize,
    totalBlocks: sched.config.totalBlocks,
    keys: !directory.open,
  };
  return {
    info,
    snapshot: () => ({
      priceToken: sched.prices.token,
      priceKv: sched.prices.kv,
      reserveToken: sched.reserve.token,
      reserveKv: sched.reserve.kv,
      utilTokens: sched.tokenUtilization,
      utilKv: sched.blocks.utilization,
      running: sched.running.length,
      waiting: sched.waiting,
      swapped: sched.swappedCount,
    }),
    reserveTokenPrice: (u) => sched.priceCurves.tokens.price(u),
    reserveKvPrice: (u) => sched.priceCurves.kv.price(u),
    totals: () => metrics.totals(),
    tenants: () => {
      const byTenant = new Map(metrics.tenantTotals().map((t) => [t.tenant, t]));
      const names = new Set<string>([...directory.tenants().map((t) => t.name), ...(sched.ledger?.tenants() ?? []), ...byTenant.keys()]);
      return [...names].sort().map((tenant) => {
        const account = sched.ledger?.account(tenant);
        const configured = directory.tenants().find((t) => t.name === tenant)?.budget ?? Infinity;
        const budget = account !== undefined && Number.isFinite(account.budget) ? account.budget : Number.isFinite(configured) ? configured : null;
        const t = byTenant.get(tenant);
        // Without a ledger nothing is charged against a budget, but bills are still sent.
        const spent = account?.spent ?? t?.billed ?? 0;
        const escrowed = account?.escrowed ?? 0;
        return {
          tenant,
          budget,
          spent,
          escrowed,
          // What is escrowed for requests still running is not available either.
          remaining: budget === null ? null : Math.max(0, budget - spent - escrowed),
          valueRealized: t?.valueRealized ?? 0,
          billed: t?.billed ?? 0,
          requests: t?.requests ?? { completed: 0, rejected: 0, aborted: 0, failed: 0 },
        };
      });
    },
  };
}
