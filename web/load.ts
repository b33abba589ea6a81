/**
 * Mixed traffic for watching the console move (the browser test, the README screenshots): a few
 * concurrent clients sending completions and chats with values, bids and SLOs spread so that
 * some clear, some wait and some are turned away. Bounded in requests and time; 127.0.0.1 only.
 */
export interface LoadOptions {
  base: string;
  /** Bearer keys to spread the traffic over (tenants); none when the server has no keys file. */
  keys?: string[];
  clients?: number;
  /** Longest max_tokens asked for (default 120): longer answers hold more KV. */
  longest?: number;
  /** Stops after this many requests in all, or at `until` (Date.now() ms), whichever first. */
  maxRequests?: number;
  until: number;
  signal?: AbortSignal;
}

export interface LoadResult {
  sent: number;
  byStatus: Record<number, number>;
}

const PROMPTS = ['Once upon a time', 'The little dog', 'Lily and Ben went to the park', 'One day, a cat', 'Tom had a red ball', 'The sun was hot and'];

/** A deterministic request mix: the i-th request of the run. */
export function loadRequest(i: number, longest = 120): { path: string; body: Record<string, unknown> } {
  const prompt = PROMPTS[i % PROMPTS.length] as string;
  const max = 24 + ((i * 37) % Math.max(1, longest - 24));
  const econ: Record<string, unknown>[] = [
    { value: 2 },
    { bid: 0.02, slo: { ttft_ms: 2000 } },
    { value: 0.5, slo: { ttft_ms: 800, tpot_ms: 200 } },
    { bid: 1e-9 },
    { value: 1, deadline_ms: 20_000 },
    {},
  ];
  const e = econ[i % econ.length] as Record<string, unknown>;
  if (i % 3 === 0) return { path: '/v1/chat/completions', body: { messages: [{ role: 'user', content: prompt }], max_tokens: max, temperature: 0.8, seed: i, stream: true, ...e } };
  return { path: '/v1/completions', body: { prompt, max_tokens: max, temperature: 0.8, seed: i, stream: i % 2 === 0, ...e } };
}

export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const result: LoadResult = { sent: 0, byStatus: {} };
  const max = o.maxRequests ?? 10_000;
  let next = 0;
  const client = async () => {
    while (next < max && Date.now() < o.until && !o.signal?.aborted) {
      const i = next++;
      const { path, body } = loadRequest(i, o.longest);
      const key = o.keys?.[i % o.keys.length];
      try {
        const res = await fetch(o.base + path, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
          body: JSON.stringify(body),
          ...(o.signal ? { signal: o.signal } : {}),
        });
        await res.arrayBuffer();
        result.byStatus[res.status] = (result.byStatus[res.status] ?? 0) + 1;
      } catch {
        result.byStatus[0] = (result.byStatus[0] ?? 0) + 1;
      }
      result.sent++;
    }
  };
  await Promise.all(Array.from({ length: o.clients ?? 6 }, client));
  return result;
}
