/**
 * The reliability suite, short form (the long form: `npm run bench:chaos`, figures in
 * RELIABILITY.md). A real `marginal serve` process on stories260K takes 1,000+ generated hostile
 * requests with good ones alongside, huge prompts, a burst, aborts, slow clients and a short soak,
 * then SIGTERM with clients that never read.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { hostileCases } from '../bench/chaos/cases.js';
import { formatReport, runChaos } from '../bench/chaos/run.js';
import { cleanup, importStories260K } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';

describe('reliability: nothing a client sends breaks the server for others', { skip: sharedSkipReason() }, () => {
  test('the generator makes at least 1,000 distinct hostile cases, the issue-10 findings among them', () => {
    const cases = hostileCases(1000, 1);
    assert.ok(cases.length >= 1000);
    assert.ok(new Set(cases.map((c) => `${c.kind} ${c.method} ${c.path} ${String(c.body ?? c.chunks?.join(''))}`)).size >= 990, 'cases are not repeats');
    for (const f of ['finding 1', 'finding 2', 'finding 4', 'finding 5', 'headers too large', 'Content-Length with Transfer-Encoding', 'bad chunk size', 'LF-only line ends']) {
      assert.ok(cases.some((c) => c.name.includes(f)), f);
    }
    assert.deepEqual(hostileCases(1000, 1).map((c) => c.name), cases.map((c) => c.name), 'deterministic in the seed');
  });

  test('short campaign: no 500, nothing lost, every answer well-formed, no KV leaked, good outputs unchanged, SIGTERM bounded', async () => {
    const dir = importStories260K();
    try {
      const r = await runChaos({ modelDir: dir, hostile: 1000, seed: 1, good: 40, hugePrompts: 10, burst: 60, aborts: 20, slowClients: 4, soakSeconds: 5, concurrency: 8, unreadAtShutdown: 4 });
      const summary = formatReport(r);
      assert.ok((r.phases.hostile?.requests ?? 0) >= 1000, summary);
      assert.equal(r.internalErrors, 0, summary);
      assert.equal(r.fiveXx, r.byStatus['503'] ?? 0, `the only 5xx are limits and shutdown (503)\n${summary}`);
      assert.equal(r.lost, 0, summary);
      assert.equal(r.badShape, 0, summary);
      assert.equal(r.good.identical, r.good.sent, summary);
      assert.ok(r.good.sent >= 40, summary);
      assert.ok(r.hugePromptChatOk, summary);
      assert.equal(r.phases.huge?.byStatus['400'], 10, `every huge prompt refused: ${summary}`);
      assert.equal(r.phases.slow?.byStatus['408'], 4, `every slow body timed out with a 408: ${summary}`);
      assert.ok(r.metricsOk, summary);
      assert.equal(r.kvBlocksLeaked, 0, summary);
      assert.equal(r.requestsLeft, 0, summary);
      assert.equal(r.shutdown.exitCode, 0, summary);
      assert.ok(r.shutdown.readersWellFormed, summary);
    } finally {
      cleanup(dir);
    }
  });
});
