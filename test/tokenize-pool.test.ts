import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadModelDir, type LoadedModel } from '../src/models/modeldir.js';
import { DEFAULT_INLINE_BELOW_CHARS, TokenizePool } from '../src/server/tokenize-pool.js';
import { cleanup, importStories260K, synthTiny } from './helpers/models.js';
import { sharedSkipReason } from './helpers/shared.js';

const PARAGRAPH =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park, ' +
  'and one day she saw a big, red ball. "Can I play?" she asked.\n\n';

const SHORT: Record<string, string> = {
  ascii: 'Hello, world!',
  accents: 'Café crème brûlée, naïve façade, Ærøskøbing, Ångström, ñ ß',
  cjk: '東京は日本の首都です。我爱北京天安门。한국어',
  emoji: '🦙🚀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ok',
  controls: 'tab\there\r\nNUL\u0000 nbsp\u00a0 lone\ud800surrogate',
  empty: '',
  space: ' ',
};

/** Every short text, also grown past any threshold so that it has to go to a worker. */
const TEXTS: [string, string][] = [
  ...Object.entries(SHORT),
  ...Object.entries(SHORT)
    .filter(([, t]) => t.length > 0)
    .map(([name, t]): [string, string] => [`${name} (long)`, (t + ' ').repeat(Math.ceil(4000 / (t.length + 1)))]),
  ['english paragraphs (long)', PARAGRAPH.repeat(40)],
  ['mixed (long)', Object.values(SHORT).join(' ').repeat(60) + PARAGRAPH.repeat(10)],
];

/**
 * The contract on one model directory: the pool's ids equal the in-process tokenizer's, through
 * the workers (threshold 0) and with the default threshold (short inline, long pooled).
 */
function suite(name: string, makeDir: () => string, opts: { skip?: string | false } = {}): void {
  describe(name, { skip: opts.skip ?? false }, () => {
    let dir = '';
    let model: LoadedModel;
    let pooled: TokenizePool;
    let split: TokenizePool;
    before(async () => {
      dir = makeDir();
      model = await loadModelDir(dir);
      pooled = await TokenizePool.create(dir, { threads: 2, inlineBelowChars: 0 });
      split = await TokenizePool.create(dir, { threads: 1, tokenizer: model.tokenizer });
    });
    after(async () => {
      await pooled?.close();
      await split?.close();
      if (dir) cleanup(dir);
    });

    it('workers give the in-process ids for every text, with and without BOS', async () => {
      for (const [label, text] of TEXTS) {
        for (const bos of [false, true]) {
          const want = model.tokenizer.encode(text, { bos });
          assert.deepEqual(await pooled.encode(text, bos), want, `${label}, bos=${bos}`);
        }
      }
      assert.equal(pooled.counts.inline, 0);
      assert.equal(pooled.counts.pooled, TEXTS.length * 2);
    });

    it('the default threshold keeps short texts inline and sends long ones to the pool, same ids', async () => {
      const before = split.counts;
      let long = 0;
      for (const [label, text] of TEXTS) {
        if (text.length >= DEFAULT_INLINE_BELOW_CHARS) long++;
        assert.deepEqual(await split.encode(text, model.addBos), model.tokenizer.encode(text, { bos: model.addBos }), label);
      }
      assert.ok(long > 0 && long < TEXTS.length, 'the texts straddle the threshold');
      assert.equal(split.counts.pooled - before.pooled, long);
      assert.equal(split.counts.inline - before.inline, TEXTS.length - long);
    });

    it('concurrent encodes each get their own ids', async () => {
      const texts = TEXTS.map(([, t]) => t);
      const got = await Promise.all(texts.map((t, i) => pooled.encode(t, i % 2 === 0)));
      got.forEach((ids, i) => assert.deepEqual(ids, model.tokenizer.encode(texts[i]!, { bos: i % 2 === 0 }), TEXTS[i]![0]));
    });
  });
}

suite('TokenizePool on a synthetic tiny model (marginal directory)', synthTiny);

suite('TokenizePool on a Hugging Face folder (tokenizer.json)', () => {
  const dir = synthTiny();
  // Without marginal.json the same directory loads as a foreign export: HfTokenizer.
  rmSync(join(dir, 'marginal.json'));
  return dir;
});

suite('TokenizePool on the stories260K tokenizer', importStories260K, { skip: sharedSkipReason() });

describe('TokenizePool lifecycle and errors', () => {
  let dir = '';
  let model: LoadedModel;
  before(async () => {
    dir = synthTiny();
    model = await loadModelDir(dir);
  });
  after(() => {
    if (dir) cleanup(dir);
  });

  it('close() lets in-flight encodes finish, then ends the workers', async () => {
    const pool = await TokenizePool.create(dir, { threads: 2, inlineBelowChars: 0, tokenizer: model.tokenizer });
    assert.equal(pool.liveWorkers, 2);
    const text = PARAGRAPH.repeat(200);
    const inFlight = [pool.encode(text, true), pool.encode(text, false), pool.encode(text, true)];
    const closed = pool.close();
    assert.deepEqual(await inFlight[0], model.tokenizer.encode(text, { bos: true }));
    assert.deepEqual(await inFlight[1], model.tokenizer.encode(text, { bos: false }));
    assert.deepEqual(await inFlight[2], model.tokenizer.encode(text, { bos: true }));
    await closed;
    assert.equal(pool.liveWorkers, 0);
    await assert.rejects(pool.encode(text, true), { message: /closed/ });
    await assert.rejects(pool.encode('short', true), { message: /closed/ }, 'inline encodes refuse too after close');
    await pool.close();
  });

  it('a failing encode inside a worker rejects that call and leaves the pool working', async () => {
    const pool = await TokenizePool.create(dir, { threads: 1, inlineBelowChars: 0, tokenizer: model.tokenizer });
    try {
      await assert.rejects(pool.encode(42 as unknown as string, false), (e: unknown) => {
        assert.ok(e instanceof TypeError, `a TypeError, got ${String(e)}`);
        assert.match(e.message, /text must be a string, got number/);
        return true;
      });
      assert.equal(pool.liveWorkers, 1);
      const text = PARAGRAPH.repeat(20);
      assert.deepEqual(await pool.encode(text, true), model.tokenizer.encode(text, { bos: true }));
    } finally {
      await pool.close();
    }
  });

  it('create() rejects a directory the workers cannot load instead of hanging', async () => {
    const missing = join(dir, 'no-such-model');
    await assert.rejects(TokenizePool.create(missing), { message: /does not exist/ });
    // With the tokenizer handed in, only the workers read the directory: their load error must
    // come back through create() rather than hang it or crash the process.
    await assert.rejects(TokenizePool.create(missing, { threads: 2, tokenizer: model.tokenizer }), { message: /does not exist/ });
  });

  it('create() rejects bad options', async () => {
    await assert.rejects(TokenizePool.create(dir, { threads: 0 }), RangeError);
    await assert.rejects(TokenizePool.create(dir, { threads: 1.5 }), RangeError);
    await assert.rejects(TokenizePool.create(dir, { inlineBelowChars: -1 }), RangeError);
  });
});

const distPool = fileURLToPath(new URL('../dist/server/tokenize-pool.js', import.meta.url));

describe('TokenizePool compiled (dist/, plain node)', { skip: existsSync(distPool) ? false : 'dist/ not built (npm run build)' }, () => {
  it('finds dist/server/tokenize-worker.js and gives the in-process ids', async () => {
    const dir = synthTiny();
    try {
      const script = `
        import { TokenizePool } from ${JSON.stringify(distPool)};
        import { loadModelDir } from ${JSON.stringify(fileURLToPath(new URL('../dist/models/modeldir.js', import.meta.url)))};
        const dir = process.argv[1];
        const model = await loadModelDir(dir);
        const pool = await TokenizePool.create(dir, { threads: 1, inlineBelowChars: 0 });
        const text = ${JSON.stringify(TEXTS.map(([, t]) => t).join('\n'))};
        const same = JSON.stringify(await pool.encode(text, true)) === JSON.stringify(model.tokenizer.encode(text, { bos: true }));
        await pool.close();
        console.log(JSON.stringify({ same, pooled: pool.counts.pooled }));
      `;
      // No tsx anywhere (flags or NODE_OPTIONS): the compiled pool must pick the .js worker itself.
      const env = { ...process.env };
      delete env.NODE_OPTIONS;
      const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script, dir], { env });
      assert.deepEqual(JSON.parse(stdout.trim()), { same: true, pooled: 1 });
    } finally {
      cleanup(dir);
    }
  });
});
