#!/usr/bin/env node
import { Command, InvalidArgumentError as CommanderArgError } from 'commander';
import { isMarginalError } from './errors.js';
import { runGenerate } from './cli/generate.js';
import { runImportLlama2c, runSynth } from './cli/models.js';
import { runServe } from './cli/serve.js';

function intArg(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n)) throw new CommanderArgError(`${name} must be an integer`);
    return n;
  };
}
function numArg(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) throw new CommanderArgError(`${name} must be a number`);
    return n;
  };
}

const program = new Command();
program.name('marginal').description('An LLM inference server whose scheduler is an economy.').version('0.1.0');
// Before any subcommand exists: subcommands copy this setting when created.
program.exitOverride();

const engineOptions = (c: Command) =>
  c
    .option('--flavour <fast|hf>', 'graph flavour', 'fast')
    .option('--providers <list>', 'execution providers in order of preference', 'cuda,cpu')
    .option('--threads <n>', 'ONNX Runtime intra-op threads', intArg('--threads'));

const imp = program.command('import').description('import a model into a model directory');
imp
  .command('llama2c')
  .description('import a llama2.c checkpoint and its tokenizer')
  .argument('<checkpoint>', 'llama2.c checkpoint (.bin)')
  .argument('<tokenizer>', 'llama2.c tokenizer (.bin)')
  .requiredOption('--out <dir>', 'output model directory')
  .action(runImportLlama2c);

program
  .command('synth')
  .description('write a model of a named shape with random deterministic weights')
  .requiredOption('--shape <name>', 'tiny | stories15m | stories110m | llama-1b')
  .requiredOption('--out <dir>', 'output model directory')
  .action(runSynth);

engineOptions(
  program
    .command('generate')
    .description('generate a completion; prints the completion text only')
    .option('--model <dir>', 'model directory (default: the built-in synthetic model)')
    .option('--prompt <text>', 'prompt text', '')
    .option('--max-tokens <n>', 'tokens to generate', intArg('--max-tokens'), 64)
    .option('--temperature <t>', 'sampling temperature (0 = greedy)', numArg('--temperature'), 1)
    .option('--top-p <p>', 'nucleus sampling mass', numArg('--top-p'), 1)
    .option('--top-k <k>', 'keep the k most likely tokens (0 = all)', intArg('--top-k'), 0)
    .option('--seed <s>', 'random seed', intArg('--seed'))
    .option('--stop <text...>', 'stop sequences'),
).action(runGenerate);

engineOptions(
  program
    .command('serve')
    .description('serve the OpenAI-compatible HTTP API')
    .option('--model <dir>', 'model directory (default: the built-in synthetic model)')
    .option('--host <host>', 'listen address', '127.0.0.1')
    .option('--port <port>', 'listen port', intArg('--port'), 8000)
    .option('--max-sequences <n>', 'sequences resident at once', intArg('--max-sequences'), 32),
).action(runServe);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  const err = e as Error & { code?: string; exitCode?: number };
  if (err.code?.startsWith('commander.')) {
    // Commander already printed the message; help and version exit 0, usage errors 2.
    process.exitCode = err.exitCode === 0 ? 0 : 2;
  } else if (isMarginalError(e)) {
    process.stderr.write(`marginal: ${err.message}\n`);
    process.exitCode = 2;
  } else {
    process.stderr.write(`marginal: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  }
}
