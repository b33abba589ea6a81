/**
 * Prompt tokenization off the event loop. Encoding is synchronous CPU work that grows with the
 * prompt (the Llama 2 tokenizer takes milliseconds for tens of kilobytes), so a burst of long
 * prompts encoded inline stalls every stream the server is writing. Long texts go to a piscina
 * pool whose workers each hold their own copy of the model's tokenizer; short ones stay inline,
 * where they cost less than a worker round trip. Thresholds and numbers: bench/eventloop.ts.
 *
 * Detokenization stays inline: the generator streams it a token at a time (StreamDetokenizer),
 * and even a whole completion decoded at once costs ~20 ns a token (bench/eventloop.ts: 18k
 * tokens in ~0.3 ms, against ~25 ms to encode them), about what posting the ids to a worker
 * and waiting for the text would cost.
 */
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { ClientQueueFullError, TokenizerBusyError } from '../errors.js';
import { loadModelDir } from '../models/modeldir.js';
import type { Tokenizer } from '../models/tokenizer/types.js';
import type { EncodeResult, EncodeTask, TokenizeWorkerData } from './tokenize-worker.js';

/**
 * Texts shorter than this (UTF-16 code units) are encoded inline. From bench/eventloop.ts with
 * the Llama 2 tokenizer on English prose (2-core EPYC VM, Node 20): a pooled prompt costs
 * ~0.03-0.1 ms more latency plus ~0.02-0.06 ms of main-thread time whatever its size, while
 * inline encoding costs ~0.28 µs a character, all of it a stall for every other stream. The two
 * meet at 250-500 characters across runs; 512 is the top of that band, so only prompts the pool
 * clearly wins go there and an inline one stalls the loop for at most ~0.15 ms. English is the
 * expensive case per character (the most merges): CJK, emoji and accented text encode 2-4×
 * faster per character, so for them the pool starts paying somewhat above 512.
 */
export const DEFAULT_INLINE_BELOW_CHARS = 512;

/**
 * Half the cores, 1 to 4: tokenization is a small share of a request's CPU next to the model,
 * whose ONNX Runtime threads want the rest of the machine.
 */
export function defaultTokenizeThreads(): number {
  return Math.max(1, Math.min(4, Math.floor(availableParallelism() / 2)));
}

export interface TokenizePoolOptions {
  /** Worker threads (default: defaultTokenizeThreads()). */
  threads?: number;
  /** Texts shorter than this are encoded on the calling thread (default DEFAULT_INLINE_BELOW_CHARS). */
  inlineBelowChars?: number;
  /**
   * The tokenizer already loaded from the same modelDir in this thread, used for inline encodes;
   * without it create() loads the directory itself.
   */
  tokenizer?: Tokenizer;
  /** Prompts that may wait for a worker, all clients together (default 512): TokenizerBusyError beyond. */
  maxQueued?: number;
  /** Prompts that may wait for a worker from one client (default 64): ClientQueueFullError beyond. */
  maxQueuedPerClient?: number;
}

/** Who is asking, and until when they care. */
export interface EncodeContext {
  /** Prompts are served round-robin across clients, so one client's flood delays no one else. */
  client?: string;
  /** Aborting drops the prompt from the queue (the client left); its promise rejects with the reason. */
  signal?: AbortSignal;
}

interface QueuedEncode {
  text: string;
  bos: boolean;
  client: string;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
  resolve: (ids: number[]) => void;
  reject: (e: unknown) => void;
}

/**
 * The worker next to this module: tokenize-worker.ts when this file runs from source under tsx
 * (workers inherit `--import tsx` through execArgv), tokenize-worker.js in dist/.
 */
function workerFile(): string {
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  return fileURLToPath(new URL(`./tokenize-worker${ext}`, import.meta.url));
}

function positiveInt(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${v}`);
  return v;
}

/**
 * An indexed loop, not Array.from: ~2.5× cheaper on the main thread for large results
 * (bench/eventloop.ts, transport table), and this copy is most of what a pooled prompt costs it.
 */
function toNumberArray(a: Int32Array): number[] {
  const out = new Array<number>(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]!;
  return out;
}

/**
 * Long prompts wait in one FIFO per client, and a free worker takes the head of the FIFO of the
 * client served least recently: a client's prompt never waits for more than the prompts already
 * running plus one prompt of each other waiting client, however many a flooding client queued.
 * Never more than `threads` tasks are handed to piscina, whose own queue is first come, first
 * served. The queues are bounded, in all and per client, and a prompt whose client has left is
 * dropped before it costs a worker.
 */
export class TokenizePool {
  readonly threads: number;
  readonly inlineBelowChars: number;
  readonly maxQueued: number;
  readonly maxQueuedPerClient: number;
  private closing: Promise<void> | undefined;
  private inlineCount = 0;
  private pooledCount = 0;
  private readonly inFlight = new Set<Promise<unknown>>();
  /** Waiting prompts by client. */
  private readonly waiting = new Map<string, QueuedEncode[]>();
  /** When each client was last served (a dispatch count), remembered after its queue empties. */
  private readonly lastServed = new Map<string, number>();
  private dispatched = 0;
  private waitingCount = 0;
  private running = 0;
  private idle: (() => void) | undefined;

  private constructor(
    private readonly pool: Piscina<EncodeTask, EncodeResult>,
    private readonly tokenizer: Tokenizer,
    threads: number,
    inlineBelowChars: number,
    maxQueued: number,
    maxQueuedPerClient: number,
  ) {
    this.threads = threads;
    this.inlineBelowChars = inlineBelowChars;
    this.maxQueued = maxQueued;
    this.maxQueuedPerClient = maxQueuedPerClient;
  }

  static async create(modelDir: string, opts: TokenizePoolOptions = {}): Promise<TokenizePool> {
    const threads = positiveInt('threads', opts.threads ?? defaultTokenizeThreads());
    const inlineBelowChars = opts.inlineBelowChars ?? DEFAULT_INLINE_BELOW_CHARS;
    const maxQueued = positiveInt('maxQueued', opts.maxQueued ?? 512);
    const maxQueuedPerClient = positiveInt('maxQueuedPerClient', opts.maxQueuedPerClient ?? 64);
    if (!(inlineBelowChars >= 0)) throw new RangeError(`inlineBelowChars must be >= 0, got ${inlineBelowChars}`);
    const dir = resolve(modelDir);
    const tokenizer = opts.tokenizer ?? (await loadModelDir(dir)).tokenizer;
    const workerData: TokenizeWorkerData = { modelDir: dir };
    const pool = new Piscina<EncodeTask, EncodeResult>({
      filename: workerFile(),
      name: 'default',
      workerData,
      // A fixed set of threads: each loads a tokenizer (tens of ms for Llama 2's with its merge
      // table), which would be paid again whenever a reaped idle thread came back.
      minThreads: threads,
      maxThreads: threads,
      idleTimeout: Infinity,
    });
    // Piscina emits 'error' for a worker that dies with no task to reject, and replaces it; an
    // unheard 'error' event would take the whole server down instead.
    let bootstrapFailed: (e: unknown) => void = () => {};
    const failed = new Promise<never>((_, reject) => (bootstrapFailed = reject));
    failed.catch(() => {});
    pool.on('error', (e: unknown) => bootstrapFailed(e));
    try {
      // Warm-up tasks, one per thread: create() normally returns with the tokenizers loaded,
      // and a directory the workers cannot load fails here (the worker rethrows its load error
      // for every task) rather than on a request. A worker that cannot even start leaves the
      // tasks queued forever, hence the race with 'error'.
      const warm = Promise.all(Array.from({ length: threads }, () => pool.run({ text: 'warm up', bos: true })));
      await Promise.race([warm, failed]);
    } catch (e) {
      await pool.destroy();
      throw e;
    } finally {
      bootstrapFailed = () => {};
    }
    return new TokenizePool(pool, tokenizer, threads, inlineBelowChars, maxQueued, maxQueuedPerClient);
  }

  /** Worker threads currently alive (threads until close(), then 0). */
  get liveWorkers(): number {
    return this.pool.threads.length;
  }

  /** Prompts waiting for a free worker. */
  get queued(): number {
    return this.waitingCount + this.pool.queueSize;
  }

  /** Encodes done on the calling thread and in the pool so far. */
  get counts(): { inline: number; pooled: number } {
    return { inline: this.inlineCount, pooled: this.pooledCount };
  }

  /** The same ids as tokenizer.encode(text, { bos }); from a worker, in the client's turn, when the text is long. */
  async encode(text: string, bos: boolean, ctx: EncodeContext = {}): Promise<number[]> {
    if (this.closing) throw new Error('TokenizePool is closed');
    ctx.signal?.throwIfAborted();
    if (typeof text === 'string' && text.length < this.inlineBelowChars) {
      this.inlineCount++;
      return this.tokenizer.encode(text, { bos });
    }
    const client = ctx.client ?? '';
    const mine = this.waiting.get(client);
    if (this.waitingCount >= this.maxQueued) throw new TokenizerBusyError(`${this.maxQueued} prompts are already waiting for the tokenizer; retry shortly`);
    if ((mine?.length ?? 0) >= this.maxQueuedPerClient) throw new ClientQueueFullError(`this client already has ${this.maxQueuedPerClient} prompts waiting for the tokenizer`);
    return new Promise<number[]>((resolve, reject) => {
      const task: QueuedEncode = { text, bos, client, signal: ctx.signal, onAbort: undefined, resolve, reject };
      if (ctx.signal) {
        task.onAbort = () => this.drop(task);
        ctx.signal.addEventListener('abort', task.onAbort, { once: true });
      }
      if (mine) mine.push(task);
      else this.waiting.set(client, [task]);
      this.waitingCount++;
      this.dispatch();
    });
  }

  /** A queued prompt whose client left: out of the queue, its promise rejected with the abort reason. */
  private drop(task: QueuedEncode): void {
    const q = this.waiting.get(task.client);
    const i = q === undefined ? -1 : q.indexOf(task);
    if (q === undefined || i < 0) return;
    q.splice(i, 1);
    if (q.length === 0) this.waiting.delete(task.client);
    this.waitingCount--;
    task.reject(task.signal?.reason ?? new Error('aborted'));
    this.settled();
  }

  /** Hands waiting prompts to free workers, the least recently served client first. */
  private dispatch(): void {
    while (this.running < this.threads && this.waitingCount > 0) {
      let client = '';
      let q: QueuedEncode[] | undefined;
      let oldest = Infinity;
      for (const [c, tasks] of this.waiting) {
        const at = this.lastServed.get(c) ?? -1;
        if (at < oldest) {
          oldest = at;
          client = c;
          q = tasks;
        }
      }
      const task = (q as QueuedEncode[]).shift() as QueuedEncode;
      if ((q as QueuedEncode[]).length === 0) this.waiting.delete(client);
      this.waitingCount--;
      this.lastServed.delete(client);
      this.lastServed.set(client, this.dispatched++);
      // Remembering every client ever seen would grow without end; the oldest matter least.
      if (this.lastServed.size > 4096) this.lastServed.delete(this.lastServed.keys().next().value as string);
      if (task.onAbort) task.signal?.removeEventListener('abort', task.onAbort);
      this.run(task);
    }
  }

  private run(task: QueuedEncode): void {
    this.running++;
    this.pooledCount++;
    const job = this.pool.run({ text: task.text, bos: task.bos });
    this.inFlight.add(job);
    job.then(
      (ids) => (task.signal?.aborted ? task.reject(task.signal.reason) : task.resolve(toNumberArray(ids))),
      (e: unknown) => task.reject(e),
    ).finally(() => {
      this.inFlight.delete(job);
      this.running--;
      this.dispatch();
      this.settled();
    });
  }

  private settled(): void {
    if (this.running === 0 && this.waitingCount === 0) this.idle?.();
  }

  /** Lets queued and running encodes finish, then ends the workers. Idempotent. */
  close(): Promise<void> {
    // Not piscina's close(): it aborts queued tasks, and (5.x) can count a busy worker as done
    // and terminate it mid-task. Waiting for our own tasks, then destroying, loses none.
    this.closing ??= (async () => {
      if (this.running > 0 || this.waitingCount > 0) await new Promise<void>((r) => (this.idle = r));
      await Promise.allSettled([...this.inFlight]);
      await this.pool.destroy();
    })();
    return this.closing;
  }
}
