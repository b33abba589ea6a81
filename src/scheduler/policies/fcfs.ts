import { Deque } from '../deque.js';
import type { Policy, SchedulerView } from '../policy.js';
import type { SchedRequest } from '../request.js';

/** Arrival order, then sequence number: the order every vLLM-like policy falls back to. */
export function earlier(a: SchedRequest, b: SchedRequest): boolean {
  return a.spec.arrival < b.spec.arrival || (a.spec.arrival === b.spec.arrival && a.seq < b.seq);
}

/** The newest preemptible running request (vLLM preempts from the back of the running queue). */
export function lastPreemptible(view: SchedulerView): SchedRequest | undefined {
  const running = view.running;
  for (let i = running.length - 1; i >= 0; i--) {
    const r = running[i] as SchedRequest;
    if (view.isPreemptible(r)) return r;
  }
  return undefined;
}

/**
 * vLLM's default: first come, first served; the head of the queue blocks those behind it; a
 * preempted request goes back to the front; when memory is short the newest running request
 * is preempted. Cached blocks are evicted least recently used first.
 */
export class FcfsPolicy implements Policy {
  readonly name: string = 'fcfs';
  readonly eviction = undefined;
  protected view!: SchedulerView;
  private readonly queue = new Deque<SchedRequest>();
  private live = 0;

  attach(view: SchedulerView): void {
    this.view = view;
  }

  enqueue(r: SchedRequest, resumed: boolean): void {
    r.epoch++;
    if (resumed) this.queue.unshift(r);
    else this.queue.push(r);
    this.live++;
  }

  remove(r: SchedRequest): void {
    this.live--;
    if (this.queue.peek() === r) this.queue.shift();
  }

  waiting(): number {
    return this.live;
  }

  beginStep(): void {}

  admit(): void {
    for (;;) {
      const r = this.head();
      if (r === undefined || this.view.tryAdmit(r) !== 'admitted') return;
    }
  }

  private head(): SchedRequest | undefined {
    let r = this.queue.peek();
    while (r !== undefined && r.state !== 'waiting') {
      this.queue.shift();
      r = this.queue.peek();
    }
    return r;
  }

  before(a: SchedRequest, b: SchedRequest): boolean {
    return earlier(a, b);
  }

  victim(): SchedRequest | undefined {
    return lastPreemptible(this.view);
  }

  served(): void {}
}
