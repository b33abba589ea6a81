import { createReadStream } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { basename, extname } from 'node:path';
import { createInterface } from 'node:readline';
import { Packr, unpackMultiple } from 'msgpackr';
import { InvalidArgumentError } from '../errors.js';
import { applyWorkload, type Workload } from './workload.js';

/**
 * One request of a serving trace, as the simulator and the benchmarks replay it. Field names
 * are camelCase here; on disk they follow the trace contract of DESIGN.md §5 (snake_case).
 */
export interface TraceRequest {
  /** The trace line's `id` if present, else the record's 0-based index in the file. */
  id: string;
  /** Arrival, seconds from the trace start (not shifted: the first request keeps its offset). */
  t: number;
  /** Integer >= 1. */
  promptTokens: number;
  /** Integer >= 1. */
  outputTokens: number;
  /** Value of the whole completion. */
  value?: number;
  /** Value per output token: a request with `bid` and no `value` realizes bid × outputTokens. */
  bid?: number;
  slo?: { ttftMs?: number; tpotMs?: number };
  deadlineMs?: number;
  /** "default" when the trace names none. */
  tenant: string;
  /** vLLM semantics: lower = more important. */
  priority?: number;
  /**
   * Content hashes of the prompt's leading blocks: two requests whose first k entries are equal
   * share their first k × prefixBlockTokens prompt tokens. [] when the trace carries none.
   * The last entry may name a partial block (Mooncake does), so the tokens an entry list covers
   * are min(prefix.length × prefixBlockTokens, promptTokens).
   */
  prefix: number[];
  /** Tokens each prefix entry covers (Mooncake: 512 × lengthScale; contract traces: option, default 16). */
  prefixBlockTokens: number;
  /**
   * The request's max_tokens, when it differs from its output length (an upper bound the client
   * sets; the output ends at `outputTokens` by itself, or is cut off here). Absent: the output
   * length, as benchmark clients set it.
   */
  maxTokens?: number;
  /**
   * What the client declares, when it differs from what the completion is truly worth (`value`
   * / `bid`, which realized value is judged by): a client that inflates its value.
   */
  claim?: { value?: number; bid?: number };
  /** How the client answers a 429 quote; absent: it gives up at once. */
  client?: ClientBehaviour;
}

/**
 * A client that answers to prices (trace field `client`): on a 429 whose quote says a retry can
 * clear, it waits the quoted time and retries — while the quote's minimum value is within what
 * the request is worth to it and it has retries left; otherwise it gives up. An `agent` first
 * lowers its max_tokens so that the quoted cost fits its value (a shorter answer is worth
 * proportionally less), then retries.
 */
export interface ClientBehaviour {
  mode: 'retry' | 'agent';
  /** Retries after the first attempt. */
  retries: number;
  /** The longest single wait it accepts, ms (default 60 000). */
  maxWaitMs?: number;
}

export type TraceFormat = 'jsonl' | 'msgpack' | 'azure' | 'mooncake';

export interface TraceOptions {
  /** Overrides detection (extension, then the first line's fields). */
  format?: TraceFormat;
  /** > 1 makes arrivals faster: t / rateScale. */
  rateScale?: number;
  /**
   * Multiplies prompt and output lengths (rounded, at least 1) and the prefix block size with
   * them, so a scaled-down trace keeps its length distributions' shape and its prefix sharing.
   */
  lengthScale?: number;
  /** Clamps applied after lengthScale. */
  maxOutputTokens?: number;
  maxPromptTokens?: number;
  /** Keep the first N records (after `start`), counted in file order; reading stops there. */
  limit?: number;
  /** Skip the first N records, counted in file order. */
  start?: number;
  /** Keep requests with t < duration, in seconds after rateScale. */
  duration?: number;
  /** Assigns tenants and economics to requests that lack them (see workload.ts). */
  workload?: Workload;
  /** Overrides the workload's seed. */
  seed?: number;
  /** Tokens per prefix entry for contract traces (JSONL, msgpack) whose lines don't say; default 16. */
  prefixBlockTokens?: number;
}

/** Mooncake's hash_ids name 512-token blocks. */
const MOONCAKE_BLOCK_TOKENS = 512;
/** vLLM's default KV block size, the natural unit for hand-written contract traces. */
const DEFAULT_PREFIX_BLOCK_TOKENS = 16;

/** Fails with the file, the line (or record) and the field at fault. */
class LineError extends Error {}

function bad(message: string): never {
  throw new LineError(message);
}

type Rec = Record<string, unknown>;

function positiveInt(r: Rec, key: string): number {
  const v = r[key];
  if (v === undefined || v === null) bad(`${key} is required`);
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) bad(`${key} must be a positive integer (got ${JSON.stringify(v)})`);
  return v;
}

function optNumber(r: Rec, key: string, check: (v: number) => boolean, what: string): number | undefined {
  const v = r[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) bad(`${key} must be ${what} (got ${JSON.stringify(v)})`);
  return v;
}

const nonNegative = (v: number): boolean => v >= 0;
const positive = (v: number): boolean => v > 0;

/** One record of the contract (JSONL or msgpack), validated. */
function fromContract(raw: unknown, index: number, defaultBlockTokens: number): TraceRequest {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad('a trace record must be a JSON object');
  const r = raw as Rec;
  const t = r.t;
  if (t === undefined || t === null) bad('t is required');
  if (typeof t !== 'number' || !Number.isFinite(t) || t < 0) bad(`t must be a non-negative number of seconds (got ${JSON.stringify(t)})`);
  const req: TraceRequest = {
    id: String(index),
    t,
    promptTokens: positiveInt(r, 'prompt_tokens'),
    outputTokens: positiveInt(r, 'output_tokens'),
    tenant: 'default',
    prefix: [],
    prefixBlockTokens: defaultBlockTokens,
  };
  if (r.id !== undefined && r.id !== null) {
    if (typeof r.id !== 'string' && typeof r.id !== 'number') bad(`id must be a string or a number (got ${JSON.stringify(r.id)})`);
    req.id = String(r.id);
  }
  const value = optNumber(r, 'value', nonNegative, 'a non-negative number');
  if (value !== undefined) req.value = value;
  const bid = optNumber(r, 'bid', nonNegative, 'a non-negative number');
  if (bid !== undefined) req.bid = bid;
  if (r.slo !== undefined && r.slo !== null) {
    if (typeof r.slo !== 'object' || Array.isArray(r.slo)) bad('slo must be an object with ttft_ms and/or tpot_ms');
    const s = r.slo as Rec;
    const slo: { ttftMs?: number; tpotMs?: number } = {};
    const ttft = optNumber(s, 'ttft_ms', positive, 'a positive number');
    const tpot = optNumber(s, 'tpot_ms', positive, 'a positive number');
    if (ttft !== undefined) slo.ttftMs = ttft;
    if (tpot !== undefined) slo.tpotMs = tpot;
    if (ttft !== undefined || tpot !== undefined) req.slo = slo;
  }
  const deadline = optNumber(r, 'deadline_ms', positive, 'a positive number');
  if (deadline !== undefined) req.deadlineMs = deadline;
  if (r.tenant !== undefined && r.tenant !== null) {
    if (typeof r.tenant !== 'string' || r.tenant === '') bad(`tenant must be a non-empty string (got ${JSON.stringify(r.tenant)})`);
    req.tenant = r.tenant;
  }
  const priority = optNumber(r, 'priority', Number.isInteger, 'an integer');
  if (priority !== undefined) req.priority = priority;
  if (r.prefix !== undefined && r.prefix !== null) req.prefix = hashList(r.prefix, 'prefix');
  const pbt = optNumber(r, 'prefix_block_tokens', (v) => Number.isInteger(v) && v >= 1, 'a positive integer');
  if (pbt !== undefined) req.prefixBlockTokens = pbt;
  const maxTokens = optNumber(r, 'max_tokens', (v) => Number.isInteger(v) && v >= 1, 'a positive integer');
  if (maxTokens !== undefined) req.maxTokens = maxTokens;
  if (r.claim !== undefined && r.claim !== null) {
    if (typeof r.claim !== 'object' || Array.isArray(r.claim)) bad('claim must be an object with value and/or bid');
    const c = r.claim as Rec;
    const claim: { value?: number; bid?: number } = {};
    const cv = optNumber(c, 'value', nonNegative, 'a non-negative number');
    const cb = optNumber(c, 'bid', nonNegative, 'a non-negative number');
    if (cv !== undefined) claim.value = cv;
    if (cb !== undefined) claim.bid = cb;
    req.claim = claim;
  }
  if (r.client !== undefined && r.client !== null) req.client = parseClient(r.client, 'client');
  return req;
}

/** Validates a client behaviour (trace field or workload tenant field); `where` prefixes errors. */
export function parseClient(v: unknown, where: string, fail: (m: string) => never = bad): ClientBehaviour {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(`${where} must be an object with mode and retries`);
  const c = v as Rec;
  for (const k of Object.keys(c)) if (!['mode', 'retries', 'max_wait_ms', 'maxWaitMs'].includes(k)) fail(`${where}.${k} is not a client field (mode, retries, max_wait_ms)`);
  if (c.mode !== 'retry' && c.mode !== 'agent') fail(`${where}.mode must be "retry" or "agent" (got ${JSON.stringify(c.mode)})`);
  const retries = c.retries;
  if (typeof retries !== 'number' || !Number.isInteger(retries) || retries < 0 || retries > 100) fail(`${where}.retries must be an integer in [0, 100] (got ${JSON.stringify(retries)})`);
  const out: ClientBehaviour = { mode: c.mode, retries };
  const w = c.max_wait_ms ?? c.maxWaitMs;
  if (w !== undefined && w !== null) {
    if (typeof w !== 'number' || !(w > 0 && w < Infinity)) fail(`${where}.max_wait_ms must be a positive number (got ${JSON.stringify(w)})`);
    out.maxWaitMs = w;
  }
  return out;
}

function hashList(v: unknown, key: string): number[] {
  if (!Array.isArray(v)) bad(`${key} must be an array of block hashes`);
  for (let i = 0; i < v.length; i++) {
    const h: unknown = v[i];
    if (typeof h !== 'number' || !Number.isFinite(h)) bad(`${key}[${i}] must be a number (got ${JSON.stringify(h)})`);
  }
  return v as number[];
}

function fromMooncake(raw: unknown, index: number): TraceRequest {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad('a trace record must be a JSON object');
  const r = raw as Rec;
  const ts = r.timestamp;
  if (ts === undefined || ts === null) bad('timestamp is required');
  if (typeof ts !== 'number' || !Number.isFinite(ts) || ts < 0) bad(`timestamp must be a non-negative number of milliseconds (got ${JSON.stringify(ts)})`);
  return {
    id: String(index),
    t: ts / 1000,
    promptTokens: positiveInt(r, 'input_length'),
    outputTokens: positiveInt(r, 'output_length'),
    tenant: 'default',
    prefix: r.hash_ids === undefined || r.hash_ids === null ? [] : hashList(r.hash_ids, 'hash_ids'),
    prefixBlockTokens: MOONCAKE_BLOCK_TOKENS,
  };
}

/** Seconds since the epoch, split so that the 100 ns digits survive the subtraction of the first row. */
interface Stamp {
  whole: number;
  frac: number;
}

const STAMP = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]00:?00)?$/;

function parseStamp(s: string): Stamp {
  const m = STAMP.exec(s);
  if (m) {
    const [, y, mo, d, h, mi, sec, frac] = m;
    const whole = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(sec)) / 1000;
    if (Number.isFinite(whole)) return { whole, frac: frac ? Number(frac) : 0 };
  }
  // A bare number is taken as seconds, for CSVs exported with relative times.
  if (s !== '' && Number.isFinite(Number(s))) return { whole: 0, frac: Number(s) };
  bad(`TIMESTAMP must be a time like 2023-11-16 18:15:46.6805900 (got ${JSON.stringify(s)})`);
}

interface AzureColumns {
  ts: number;
  prompt: number;
  output: number;
}

function azureHeader(line: string): AzureColumns {
  const cols = line.split(',').map((c) => c.trim().replace(/^"|"$/g, ''));
  const find = (name: string): number => {
    const i = cols.findIndex((c) => c.toLowerCase() === name.toLowerCase());
    if (i < 0) bad(`missing column ${name} (expected TIMESTAMP,ContextTokens,GeneratedTokens)`);
    return i;
  };
  return { ts: find('TIMESTAMP'), prompt: find('ContextTokens'), output: find('GeneratedTokens') };
}

function csvInt(cells: string[], i: number, name: string): number {
  const s = cells[i]?.trim() ?? '';
  if (s === '') bad(`${name} is required`);
  const v = Number(s);
  if (!Number.isInteger(v) || v < 1) bad(`${name} must be a positive integer (got ${JSON.stringify(s)})`);
  return v;
}

function detectByExtension(path: string): TraceFormat | undefined {
  const ext = extname(path).toLowerCase();
  if (ext === '.csv') return 'azure';
  if (ext === '.msgpack' || ext === '.mpk') return 'msgpack';
  return undefined;
}

/** A JSONL file is Mooncake's when its first record has Mooncake's fields. */
function detectByFirstLine(firstLine: string): TraceFormat {
  // An Azure CSV saved under another extension still announces itself in its header.
  if (!firstLine.startsWith('{') && /\bContextTokens\b/i.test(firstLine)) return 'azure';
  try {
    const r: unknown = JSON.parse(firstLine);
    if (typeof r === 'object' && r !== null && ('hash_ids' in r || 'input_length' in r)) return 'mooncake';
  } catch {
    // Left to the contract parser, which reports the line.
  }
  return 'jsonl';
}

function checkOptions(o: TraceOptions): void {
  const need = (ok: boolean, msg: string): void => {
    if (!ok) throw new InvalidArgumentError(`trace options: ${msg}`);
  };
  const posNum = (v: number | undefined): boolean => v === undefined || (Number.isFinite(v) && v > 0);
  const posInt = (v: number | undefined): boolean => v === undefined || (Number.isInteger(v) && v >= 1);
  const natInt = (v: number | undefined): boolean => v === undefined || (Number.isInteger(v) && v >= 0);
  need(o.format === undefined || ['jsonl', 'msgpack', 'azure', 'mooncake'].includes(o.format), `format must be jsonl, msgpack, azure or mooncake (got ${String(o.format)})`);
  need(posNum(o.rateScale), `rateScale must be a positive number (got ${String(o.rateScale)})`);
  need(posNum(o.lengthScale), `lengthScale must be a positive number (got ${String(o.lengthScale)})`);
  need(posInt(o.maxOutputTokens), `maxOutputTokens must be a positive integer (got ${String(o.maxOutputTokens)})`);
  need(posInt(o.maxPromptTokens), `maxPromptTokens must be a positive integer (got ${String(o.maxPromptTokens)})`);
  need(natInt(o.limit), `limit must be a non-negative integer (got ${String(o.limit)})`);
  need(natInt(o.start), `start must be a non-negative integer (got ${String(o.start)})`);
  need(posNum(o.duration), `duration must be a positive number of seconds (got ${String(o.duration)})`);
  need(o.seed === undefined || Number.isInteger(o.seed), `seed must be an integer (got ${String(o.seed)})`);
  need(posInt(o.prefixBlockTokens), `prefixBlockTokens must be a positive integer (got ${String(o.prefixBlockTokens)})`);
}

/** Scaling and clamps, applied to each record as it is read. */
function transform(r: TraceRequest, o: TraceOptions): TraceRequest {
  const ls = o.lengthScale ?? 1;
  if (o.rateScale !== undefined) r.t /= o.rateScale;
  if (ls !== 1) {
    r.promptTokens = Math.max(1, Math.round(r.promptTokens * ls));
    r.outputTokens = Math.max(1, Math.round(r.outputTokens * ls));
    r.prefixBlockTokens = Math.max(1, Math.round(r.prefixBlockTokens * ls));
  }
  if (o.maxPromptTokens !== undefined) r.promptTokens = Math.min(r.promptTokens, o.maxPromptTokens);
  if (o.maxOutputTokens !== undefined) r.outputTokens = Math.min(r.outputTokens, o.maxOutputTokens);
  // Rounding and clamping can leave entries naming blocks past the prompt's end; a prefix
  // cache must not count them as hits, so drop them here once for every consumer.
  if (ls !== 1 || o.maxPromptTokens !== undefined) {
    const blocks = Math.ceil(r.promptTokens / r.prefixBlockTokens);
    if (r.prefix.length > blocks) r.prefix = r.prefix.slice(0, blocks);
  }
  return r;
}

/**
 * Reads a trace: the contract JSONL of DESIGN.md §5, msgpack of the same records (one packed
 * array, or a stream of packed records), the Azure 2023 CSV or the Mooncake JSONL. Text formats
 * are streamed line by line. The result is sorted by t (stable, so equal arrivals keep file
 * order). A bad record fails the whole read with InvalidArgumentError naming the file, the
 * line (1-based; `record` for msgpack, 0-based like ids) and the field.
 */
export async function readTrace(path: string, opts: TraceOptions = {}): Promise<TraceRequest[]> {
  checkOptions(opts);
  const file = basename(path);
  const format = opts.format ?? detectByExtension(path);
  const start = opts.start ?? 0;
  const end = opts.limit === undefined ? Infinity : start + opts.limit;
  const blockTokens = opts.prefixBlockTokens ?? DEFAULT_PREFIX_BLOCK_TOKENS;
  const out: TraceRequest[] = [];
  const keep = (r: TraceRequest): void => {
    transform(r, opts);
    if (opts.duration === undefined || r.t < opts.duration) out.push(r);
  };

  if (format === 'msgpack') {
    let buf: Buffer;
    try {
      buf = await readFile(path);
    } catch (e) {
      throw new InvalidArgumentError(`${file}: cannot read trace: ${(e as Error).message}`);
    }
    let records: unknown[];
    try {
      const values = buf.length === 0 ? [] : (unpackMultiple(buf) as unknown[]);
      records = values.length === 1 && Array.isArray(values[0]) ? (values[0] as unknown[]) : values;
    } catch (e) {
      throw new InvalidArgumentError(`${file}: invalid msgpack: ${(e as Error).message}`);
    }
    for (let i = start; i < Math.min(records.length, end); i++) {
      try {
        keep(fromContract(records[i], i, blockTokens));
      } catch (e) {
        if (e instanceof LineError) throw new InvalidArgumentError(`${file} record ${i}: ${e.message}`);
        throw e;
      }
    }
  } else {
    const stream = createReadStream(path, { encoding: 'utf8' });
    const lines = createInterface({ input: stream, crlfDelay: Infinity });
    let lineNo = 0;
    let index = 0;
    let fmt: TraceFormat | undefined = format;
    let azure: AzureColumns | undefined;
    let first: Stamp | undefined;
    try {
      for await (const raw of lines) {
        lineNo++;
        const line = raw.trim();
        if (line === '') continue;
        if (index >= end) break;
        try {
          fmt ??= detectByFirstLine(line);
          if (fmt === 'azure' && azure === undefined) {
            azure = azureHeader(line);
            continue;
          }
          // Azure times count from the file's first row even when `start` skips it.
          let cells: string[] | undefined;
          if (fmt === 'azure' && first === undefined) {
            cells = line.split(',');
            first = parseStamp(cells[azure!.ts]?.trim() ?? '');
          }
          if (index++ < start) continue;
          const i = index - 1;
          let req: TraceRequest;
          if (fmt === 'azure') {
            const c = cells ?? line.split(',');
            const stamp = parseStamp(c[azure!.ts]?.trim() ?? '');
            req = {
              id: String(i),
              // The CSV's resolution is 100 ns; rounding to it drops the float noise of the subtraction.
              t: Math.round((stamp.whole - first!.whole + (stamp.frac - first!.frac)) * 1e7) / 1e7,
              promptTokens: csvInt(c, azure!.prompt, 'ContextTokens'),
              outputTokens: csvInt(c, azure!.output, 'GeneratedTokens'),
              tenant: 'default',
              prefix: [],
              prefixBlockTokens: blockTokens,
            };
          } else {
            let rec: unknown;
            try {
              rec = JSON.parse(line);
            } catch (e) {
              bad(`invalid JSON (${(e as Error).message})`);
            }
            req = fmt === 'mooncake' ? fromMooncake(rec, i) : fromContract(rec, i, blockTokens);
          }
          keep(req);
        } catch (e) {
          if (e instanceof LineError) throw new InvalidArgumentError(`${file} line ${lineNo}: ${e.message}`);
          throw e;
        }
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'EISDIR' || (e as NodeJS.ErrnoException).code === 'EACCES') {
        throw new InvalidArgumentError(`${file}: cannot read trace: ${(e as Error).message}`);
      }
      throw e;
    } finally {
      lines.close();
      stream.destroy();
    }
    if (fmt === 'azure' && azure === undefined) throw new InvalidArgumentError(`${file}: empty CSV (expected a TIMESTAMP,ContextTokens,GeneratedTokens header)`);
  }

  // Array.prototype.sort is stable, so equal arrivals keep their file order.
  out.sort((a, b) => a.t - b.t);
  if (opts.workload !== undefined) {
    const w = opts.seed === undefined ? opts.workload : { ...opts.workload, seed: opts.seed };
    return applyWorkload(out, w);
  }
  return out;
}

/** The contract record of one request, keys in the order of DESIGN.md §5's example. */
export function toContractRecord(r: TraceRequest): Record<string, unknown> {
  const rec: Record<string, unknown> = { id: r.id, t: r.t, prompt_tokens: r.promptTokens, output_tokens: r.outputTokens };
  if (r.value !== undefined) rec.value = r.value;
  if (r.bid !== undefined) rec.bid = r.bid;
  if (r.slo !== undefined) {
    const slo: Record<string, number> = {};
    if (r.slo.ttftMs !== undefined) slo.ttft_ms = r.slo.ttftMs;
    if (r.slo.tpotMs !== undefined) slo.tpot_ms = r.slo.tpotMs;
    rec.slo = slo;
  }
  if (r.deadlineMs !== undefined) rec.deadline_ms = r.deadlineMs;
  rec.tenant = r.tenant;
  if (r.priority !== undefined) rec.priority = r.priority;
  rec.prefix = r.prefix;
  // An extension to the contract: without it a Mooncake-derived trace written out and read
  // back would have its 512-token blocks taken for 16-token ones.
  if (r.prefix.length > 0 || r.prefixBlockTokens !== DEFAULT_PREFIX_BLOCK_TOKENS) rec.prefix_block_tokens = r.prefixBlockTokens;
  if (r.maxTokens !== undefined) rec.max_tokens = r.maxTokens;
  if (r.claim !== undefined) rec.claim = { ...r.claim };
  if (r.client !== undefined) rec.client = { mode: r.client.mode, retries: r.client.retries, ...(r.client.maxWaitMs !== undefined ? { max_wait_ms: r.client.maxWaitMs } : {}) };
  return rec;
}

/**
 * Writes the contract JSONL, or msgpack (one packed array of records, as plain maps so that
 * other msgpack readers can read it) when the path ends in .msgpack or .mpk.
 */
export async function writeTrace(path: string, reqs: readonly TraceRequest[]): Promise<void> {
  const records = reqs.map(toContractRecord);
  if (detectByExtension(path) === 'msgpack') {
    await writeFile(path, new Packr({ useRecords: false }).pack(records));
    return;
  }
  await writeFile(path, records.map((r) => JSON.stringify(r) + '\n').join(''));
}

/** What a request is worth if it meets its SLO: its value, else bid × output tokens, else 0. */
export function completionValue(r: TraceRequest): number {
  if (r.value !== undefined) return r.value;
  if (r.bid !== undefined) return r.bid * r.outputTokens;
  return 0;
}

/** What the client declares: its claim where it has one, else its true value or bid. */
export function declared(r: TraceRequest): { value?: number; bid?: number } {
  if (r.claim !== undefined) return r.claim;
  return { ...(r.value !== undefined ? { value: r.value } : {}), ...(r.bid !== undefined ? { bid: r.bid } : {}) };
}
