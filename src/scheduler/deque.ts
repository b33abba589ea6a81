/**
 * A growable ring buffer with O(1) push, unshift and shift: the waiting queue. Like undici's
 * fixed-queue it never shifts an array; unlike it, it also takes items at the front, because a
 * preempted request goes back ahead of newer arrivals.
 */
export class Deque<T> {
  private buf: (T | undefined)[];
  private head = 0;
  private count = 0;

  constructor(capacity = 64) {
    let c = 1;
    while (c < capacity) c <<= 1;
    this.buf = new Array(c);
  }

  get length(): number {
    return this.count;
  }

  push(x: T): void {
    if (this.count === this.buf.length) this.grow();
    this.buf[(this.head + this.count) & (this.buf.length - 1)] = x;
    this.count++;
  }

  unshift(x: T): void {
    if (this.count === this.buf.length) this.grow();
    this.head = (this.head - 1) & (this.buf.length - 1);
    this.buf[this.head] = x;
    this.count++;
  }

  peek(): T | undefined {
    return this.count === 0 ? undefined : this.buf[this.head];
  }

  shift(): T | undefined {
    if (this.count === 0) return undefined;
    const x = this.buf[this.head];
    this.buf[this.head] = undefined;
    this.head = (this.head + 1) & (this.buf.length - 1);
    this.count--;
    return x;
  }

  at(i: number): T | undefined {
    return i < 0 || i >= this.count ? undefined : this.buf[(this.head + i) & (this.buf.length - 1)];
  }

  private grow(): void {
    const next = new Array<T | undefined>(this.buf.length * 2);
    for (let i = 0; i < this.count; i++) next[i] = this.buf[(this.head + i) & (this.buf.length - 1)];
    this.buf = next;
    this.head = 0;
  }
}

/** A binary min-heap over a comparison; `better(a, b)` is true when a should come out first. */
export class Heap<T> {
  private readonly items: T[] = [];

  constructor(private readonly better: (a: T, b: T) => boolean) {}

  get length(): number {
    return this.items.length;
  }

  peek(): T | undefined {
    return this.items[0];
  }

  push(x: T): void {
    const a = this.items;
    a.push(x);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.better(a[i] as T, a[p] as T)) break;
      [a[i], a[p]] = [a[p] as T, a[i] as T];
      i = p;
    }
  }

  pop(): T | undefined {
    const a = this.items;
    if (a.length === 0) return undefined;
    const top = a[0];
    const last = a.pop() as T;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.better(a[l] as T, a[m] as T)) m = l;
        if (r < a.length && this.better(a[r] as T, a[m] as T)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m] as T, a[i] as T];
        i = m;
      }
    }
    return top;
  }

  /** Visits every entry, in no particular order. */
  forEach(fn: (x: T) => void): void {
    for (const x of this.items) fn(x);
  }

  /** Keeps the entries `keep` accepts and restores heap order: O(n), for lazily deleted heaps that must not grow without bound. */
  retain(keep: (x: T) => boolean): void {
    const a = this.items;
    let n = 0;
    for (let i = 0; i < a.length; i++) if (keep(a[i] as T)) a[n++] = a[i] as T;
    a.length = n;
    for (let i = (n >> 1) - 1; i >= 0; i--) this.siftDown(i);
  }

  private siftDown(start: number): void {
    const a = this.items;
    let i = start;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < a.length && this.better(a[l] as T, a[m] as T)) m = l;
      if (r < a.length && this.better(a[r] as T, a[m] as T)) m = r;
      if (m === i) return;
      [a[i], a[m]] = [a[m] as T, a[i] as T];
      i = m;
    }
  }
}
