import type { Generator } from './generator.js';

/**
 * Drives the generator while it has work and sleeps when it has none; `wake()` after each
 * submit. Steps are chained with setImmediate so I/O callbacks (new requests, disconnects)
 * run between steps.
 */
export class EngineLoop {
  private active = false;
  private stopped = false;
  private idle: Promise<void> = Promise.resolve();
  private settle: (() => void) | undefined;

  constructor(
    private readonly generator: Generator,
    private readonly onError: (e: unknown) => void,
    private readonly onStep: () => void = () => {},
  ) {}

  wake(): void {
    // Also while draining: a request accepted before the drain began must still run.
    if (this.active) return;
    this.active = true;
    this.idle = new Promise((r) => (this.settle = r));
    setImmediate(() => void this.run());
  }

  private async run(): Promise<void> {
    try {
      while (this.generator.inFlight > 0 || this.generator.engineWorkPending) {
        let ran = false;
        try {
          ran = await this.generator.step();
          if (ran) this.onStep();
        } catch (e) {
          this.onError(e);
        }
        // Nothing runnable (requests waiting for prices to fall): poll gently instead of spinning.
        await new Promise((r) => (ran ? setImmediate(r) : setTimeout(r, 2)));
      }
    } finally {
      this.generator.flush();
      this.active = false;
      this.settle?.();
    }
  }

  /** Resolves once everything submitted so far has finished. */
  async drain(): Promise<void> {
    this.stopped = true;
    // Requests still being tokenized when the drain began arrive later: wait for them too.
    for (let rounds = 0; rounds < 10_000 && (this.generator.inFlight > 0 || this.active); rounds++) {
      if (!this.active) this.wake();
      await this.idle;
      if (this.generator.inFlight === 0) await new Promise((r) => setTimeout(r, 5));
    }
  }
}
