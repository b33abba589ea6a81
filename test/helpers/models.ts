import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { importLlama2c, synthesize } from '../../src/models/importers.js';
import { sharedDir } from './shared.js';

export const stories260K = {
  checkpoint: join(sharedDir, 'models', 'stories260K', 'stories260K.bin'),
  tokenizer: join(sharedDir, 'models', 'stories260K', 'tok512.bin'),
  /** llama2.c `run stories260K.bin -z tok512.bin -t 0.0 -n 200` (DESIGN.md §4). */
  reference200:
    'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n' +
    "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't find it.\"\n" +
    "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\n" +
    "Lily didn't want to help her mom, so she",
  /** The same with `-i "Zoo" -n 60`: llama2.c prints the prompt too. */
  referenceZoo:
    "Zoo was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but she didn't want to play with",
};

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `marginal-${prefix}-`));
}

export function importStories260K(): string {
  const dir = join(tempDir('s260k'), 'model');
  importLlama2c(stories260K.checkpoint, stories260K.tokenizer, dir);
  return dir;
}

export function synthTiny(): string {
  const dir = join(tempDir('tiny'), 'model');
  synthesize('tiny', dir);
  return dir;
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
