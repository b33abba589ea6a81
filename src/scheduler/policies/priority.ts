import { Heap } from '../deque.js';
import type { Policy, SchedulerView } from '../policy.js';
import type { SchedRequest } from '../request.js';
import { earlier, lastPreemptible } from './fcfs.js';

function higher(a: SchedRequest, b: SchedRequest): boolean {
  const pa = a.spec.priority ?? 0;
  const pb = b.spec.priority ?? 0;
  return pa < pb || (pa === pb && earlier(a, b));
}

/**
 * vLLM's priority policy: requests are served by (priority, arrival), lower priority values
 * first; the running request with the worst (priority, arrival) is preempted when memory is short.
 */
export class PriorityPolicy implements Policy {
  readonly name = 'priority';
  readonly eviction = undefined;
  private view!: SchedulerView;
  private readonly heap = new Heap<SchedRequest>(higher);
  private live = 0;

  attach(view: SchedulerView): void {
    this.view = view;
  }

  enqueue(r: SchedRequest): void {
    r.epoch++;
    this.heap.push(r);
    this.live++;
  }

  remove(r: SchedRequest): void {
    this.live--;
    if (this.heap.peek() === r) this.heap.pop();
  }

  waiting(): number {
    return this.live;
  }

  beginStep(): void {}

  admit(): void {
    for (;;) {
      let r = this.heap.peek();
      while (r !== undefined && r.state !== 'waiting') {
        this.heap.pop();
        r = this.heap.peek();
      }
      if (r === undefined || this.view.tryAdmit(r) !== 'admitted') return;
    }
  }

  before(a: SchedRequest, b: SchedRequest): boolean {
    return higher(a, b);
  }

  victim(): SchedRequest | undefined {
    return lastPreemptible(this.view);
  }

  served(): void {}
}
