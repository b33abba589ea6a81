import { Deque } from '../deque.js';
import type { Policy, SchedulerView } from '../policy.js';
import type { SchedRequest } from '../request.js';
import { earlier, lastPreemptible } from './fcfs.js';

interface Tenant {
  counter: number;
  queue: Deque<SchedRequest>;
  live: number;
}

/**
 * Virtual Token Counter fair sharing (Sheng et al., "Fairness in Serving Large Language
 * Models", OSDI 2024): each tenant's counter grows with the service it receives (prompt tokens
 * weigh 1, output tokens 2); the backlogged tenant with the smallest counter is served next. A
 * tenant that becomes backlogged has its counter lifted to the smallest counter among those
 * already backlogged, so idle time banks no credit; that bounds the service gap between any
 * two backlogged tenants.
 */
export class VtcPolicy implements Policy {
  readonly name = 'vtc';
  readonly eviction = undefined;
  private view!: SchedulerView;
  private readonly tenants = new Map<string, Tenant>();
  private live = 0;
  static readonly PROMPT_WEIGHT = 1;
  static readonly OUTPUT_WEIGHT = 2;

  attach(view: SchedulerView): void {
    this.view = view;
  }

  counter(tenant: string): number {
    return this.tenants.get(tenant)?.counter ?? 0;
  }

  private tenant(name: string): Tenant {
    let t = this.tenants.get(name);
    if (t === undefined) {
      t = { counter: 0, queue: new Deque(), live: 0 };
      this.tenants.set(name, t);
    }
    return t;
  }

  enqueue(r: SchedRequest, resumed: boolean): void {
    const t = this.tenant(r.tenant);
    if (t.live === 0) {
      let min = Infinity;
      for (const o of this.tenants.values()) if (o !== t && o.live > 0 && o.counter < min) min = o.counter;
      if (min !== Infinity && t.counter < min) t.counter = min;
    }
    r.epoch++;
    if (resumed) t.queue.unshift(r);
    else t.queue.push(r);
    t.live++;
    this.live++;
  }

  remove(r: SchedRequest): void {
    const t = this.tenant(r.tenant);
    t.live--;
    this.live--;
    if (t.queue.peek() === r) t.queue.shift();
  }

  waiting(): number {
    return this.live;
  }

  beginStep(): void {}

  admit(): void {
    for (;;) {
      let best: Tenant | undefined;
      for (const t of this.tenants.values()) {
        if (t.live === 0) continue;
        if (best === undefined || t.counter < best.counter) best = t;
      }
      if (best === undefined) return;
      let r = best.queue.peek();
      while (r !== undefined && r.state !== 'waiting') {
        best.queue.shift();
        r = best.queue.peek();
      }
      if (r === undefined || this.view.tryAdmit(r) !== 'admitted') return;
    }
  }

  before(a: SchedRequest, b: SchedRequest): boolean {
    return earlier(a, b);
  }

  victim(): SchedRequest | undefined {
    return lastPreemptible(this.view);
  }

  served(r: SchedRequest, promptTokens: number, outputTokens: number): void {
    this.tenant(r.tenant).counter += VtcPolicy.PROMPT_WEIGHT * promptTokens + VtcPolicy.OUTPUT_WEIGHT * outputTokens;
  }
}
