#!/usr/bin/env node
import { Command } from 'commander';
import { isMarginalError } from './errors.js';
import { runGenerate } from './cli/generate.js';
import { runImportGguf, runImportHf, runImportLlama2c, runSynth } from './cli/models.js';
import { limitOptions } from './cli/limit-options.js';
import { ReportedError, runServe } from './cli/serve.js';
import { runCalibrate, runSim } from './cli/sim.js';
import { runTune } from './cli/tune.js';
import { runBenchServe } from './cli/bench-serve.js';
import { addGeometryOptions } from './cli/geometry-options.js';
import { intArg, numArg } from './cli/args.js';

const program = new Command();
program.name('marginal').description('An LLM inference server whose scheduler is an economy.').version('0.1.0');
// Before any subcommand exists: subcommands copy this setting when created.
program.exitOverride();

const engineOptions = (c: Command) =>
  c
    .option('--flavour <fast|hf>', 'graph flavour', 'fast')
    .option('--providers <list>', 'execution providers in order of preference', 'cuda,cpu')
    .option('--threads <n>', 'ONNX Runtime intra-op threads', intArg('--threads'))
    .option('--spinning', "let ONNX Runtime's threads spin between parallel sections (faster on an idle machine, slower on a shared one)");

/** Weight formats for everything that writes a model directory. */
const quantizeOptions = (c: Command) =>
  c
    .option('--quantize <q8|q4>', 'weight-only int8 or int4 projections in blocks of 32 (ONNX Runtime MatMulNBits)')
    .option('--classifier <fp32|q8|q4>', 'format of the output classifier (default: as --quantize)')
    .option('--embeddings <fp32|q8|q4>', 'format of the token embeddings (default: as --quantize)')
    .option('--block-size <n>', 'values per scale: 32 (llama.cpp\'s Q8_0/Q4_0, exported to GGUF exactly), 64, 128, 256 (faster); default: the largest dividing every row, up to 256 for q8 and 128 for q4 (a GGUF\'s blocks stay 32)', intArg('--block-size'));

/** The economy's settings, shared by serve, sim and tune. */
const economyOptions = (c: Command) =>
  c
    .option('--max-value <v>', 'the most one request may claim to be worth, for tenants without their own max_value', numArg('--max-value'))
    .option('--risk-price <rho>', 'ρ: value charged per value of expected waste (shadow policy)', numArg('--risk-price'))
    .option('--retention <kind>', 'cached KV blocks kept by keep-value | lru (shadow policy)')
    .option('--length-model <kind>', 'output-length predictor: learned | online-mean (default: learned; tune: online-mean)')
    .option('--no-clearing', 'prices from the curves alone, no clearing price (ablation)')
    .option('--no-payment', 'itemize bills but charge nothing (ablation)');

const imp = program.command('import').description('import a model into a model directory');
quantizeOptions(
  imp
    .command('llama2c')
    .description('import a llama2.c checkpoint and its tokenizer')
    .argument('<checkpoint>', 'llama2.c checkpoint (.bin)')
    .argument('<tokenizer>', 'llama2.c tokenizer (.bin)')
    .requiredOption('--out <dir>', 'output model directory'),
).action(runImportLlama2c);

quantizeOptions(
  imp
    .command('gguf')
    .description('import a GGUF file (llama, mistral, qwen2; F32, F16, BF16, Q8_0, Q4_0) with its tokenizer and chat template')
    .argument('<file>', 'GGUF file')
    .requiredOption('--out <dir>', 'output model directory')
    .option('--max-context <n>', 'context to keep (default: the model\'s, at most 4096)', intArg('--max-context')),
).action(runImportGguf);

quantizeOptions(
  imp
    .command('hf')
    .description('import a Hugging Face safetensors checkpoint (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)')
    .argument('<dir>', 'folder with config.json, *.safetensors and tokenizer.json')
    .requiredOption('--out <dir>', 'output model directory')
    .option('--max-context <n>', 'context to keep (default: the model\'s, at most 4096)', intArg('--max-context')),
).action(runImportHf);

quantizeOptions(
  program
    .command('synth')
    .description('write a model of a named shape with random deterministic weights')
    .requiredOption('--shape <name>', 'tiny | stories15m | stories110m | llama-1b')
    .requiredOption('--out <dir>', 'output model directory'),
).action(runSynth);

engineOptions(
  program
    .command('generate')
    .description('generate a completion; prints the completion text only')
    .option('--model <dir|file.gguf>', 'model directory, GGUF file or Hugging Face safetensors folder; default: the built-in synthetic model')
    .option('--prompt <text>', 'prompt text', '')
    .option('--max-tokens <n>', 'tokens to generate', intArg('--max-tokens'), 64)
    .option('--temperature <t>', 'sampling temperature (0 = greedy)', numArg('--temperature'), 1)
    .option('--top-p <p>', 'nucleus sampling mass', numArg('--top-p'), 1)
    .option('--top-k <k>', 'keep the k most likely tokens (0 = all)', intArg('--top-k'), 0)
    .option('--seed <s>', 'random seed', intArg('--seed'))
    .option('--stop <text...>', 'stop sequences'),
).action(runGenerate);

limitOptions(economyOptions(addGeometryOptions(engineOptions(
  program
    .command('serve')
    .description('serve the OpenAI-compatible HTTP API')
    .option('--model <dir|file.gguf>', 'model directory, GGUF file or Hugging Face safetensors folder (imported into models/ on first use); default: the built-in synthetic model')
    .option('--host <host>', 'listen address', '127.0.0.1')
    .option('--port <port>', 'listen port', intArg('--port'), 8000)
    .option('--policy <name>', 'shadow | fcfs | priority | vtc', 'shadow')
    .option('--curve <file>', 'price curve file')
    .option('--api-keys <file>', 'API keys with tenants, default bids and budgets (default: one anonymous tenant)')
    .option('--step-log <file>', 'write each step (its shape and how long it took) as JSON Lines, for marginal calibrate --from-steps')
    .option('--default-bid <v>', 'value per output token of requests that carry no value or bid', numArg('--default-bid'), 0.01)
    .option('--log-level <level>', 'trace | debug | info | warn | error | fatal | silent (default: MARGINAL_LOG_LEVEL, else info)')
    .option('--metrics-key <key>', '/metrics then needs Authorization: Bearer <key> (or an admin key); default: MARGINAL_METRICS_KEY, else open'),
)))).action(runServe);

/** Server geometry and welfare pricing, shared by everything that runs the simulator. */
const simulatorOptions = (c: Command) => addGeometryOptions(c).option('--base-price <p>', 'compute cost per token for welfare', numArg('--base-price'));

const traceOptions = (c: Command) =>
  c
    .requiredOption('--trace <file>', 'trace: JSON Lines contract, msgpack, Azure 2023 CSV or Mooncake JSONL')
    .option('--format <name>', 'jsonl | msgpack | azure | mooncake (default: detected)')
    .option('--rate-scale <x>', 'arrivals x times faster', numArg('--rate-scale'))
    .option('--length-scale <x>', 'multiply prompt and output lengths (and prefix blocks) by x', numArg('--length-scale'))
    .option('--limit <n>', 'first n requests', intArg('--limit'))
    .option('--start <n>', 'skip the first n requests', intArg('--start'))
    .option('--duration <s>', 'requests arriving in the first s seconds', numArg('--duration'))
    .option('--max-prompt-tokens <n>', 'clamp prompts', intArg('--max-prompt-tokens'))
    .option('--max-output-tokens <n>', 'clamp outputs', intArg('--max-output-tokens'))
    .option('--workload <file>', 'tenants, values and SLOs for traces that carry none (default: built-in three-tenant mix)')
    .option('--seed <n>', 'workload seed', intArg('--seed'));

economyOptions(simulatorOptions(
  traceOptions(
    program
      .command('sim')
      .description('replay a trace through the scheduler on the calibrated cost model')
      .option('--policy <name>', 'shadow | fcfs | priority | vtc', 'shadow')
      .option('--curve <file>', 'price curve file')
      .option('--profile <file>', 'step-time profile from marginal calibrate')
      .option('--json', 'print the summary as one JSON object')
      .option('--requests-out <file>', 'write one JSON line per request'),
  ),
)).action(runSim);

economyOptions(simulatorOptions(
  traceOptions(
    program
      .command('tune')
      .description('sweep price curves with the simulator on every core; write the frontier, plots and the best curve file')
      .option('--grid <file>', 'curve families and parameters to sweep (default: built-in grid over all five kinds)')
      .option('--out <dir>', 'where tune.json, best-curve.json and the SVG plots go', 'tune-out')
      .option('--profile <file>', 'step-time profile from marginal calibrate')
      .option('--loads <list>', 'offered loads as multiples of capacity (default: the grid\'s, else 1,2)')
      .option('--policy <name>', "overrides the grid's policy")
      .option('--threads <n>', 'worker threads (default: all cores)', intArg('--threads'))
      .option('--replicates <n>', 'replicates of the trace under consecutive workload seeds: the noise candidates must beat (default 3)', intArg('--replicates'))
      .option('--json', 'print the result summary as JSON')
      .option('--quiet', 'no progress bar'),
  ),
)).action(runTune);

program
  .command('bench')
  .description('benchmarks against a running server')
  .command('serve')
  .description("serving benchmark with vLLM's metric definitions (TTFT, TPOT, ITL, E2EL, goodput) plus value, welfare and quotes")
  .requiredOption('--url <url>', 'server base URL, e.g. http://127.0.0.1:8000')
  .option('--endpoint <path>', '/v1/completions or /v1/chat/completions')
  .option('--model <name>', 'model name to send (default: the server\'s)')
  .option('--rate <r>', 'open-loop request rate, req/s (inf: all at once)')
  .option('--burstiness <k>', 'gamma shape of the gaps (1 = Poisson)')
  .option('--max-concurrency <n>', 'closed loop: at most n requests in flight')
  .option('--requests <n>', 'number of requests')
  .option('--input-len <n>', 'random prompts: tokens in')
  .option('--output-len <n>', 'random prompts: tokens out (max_tokens)')
  .option('--range-ratio <r>', 'random lengths vary by ±r')
  .option('--seed <n>', 'random prompts and arrivals seed')
  .option('--temperature <t>', 'sampling temperature (default 0)')
  .option('--slo <pairs...>', 'goodput SLOs: ttft:MS tpot:MS e2el:MS')
  .option('--percentiles <list>', 'e.g. 50,90,99')
  .option('--trace <file>', 'replay a trace (any format marginal sim reads)')
  .option('--format <name>', 'trace format')
  .option('--rate-scale <x>', 'trace arrivals x times faster')
  .option('--length-scale <x>', 'trace lengths × x')
  .option('--limit <n>', 'first n trace requests')
  .option('--start <n>', 'skip the first n trace requests')
  .option('--duration <s>', 'trace requests arriving in the first s seconds')
  .option('--max-prompt-tokens <n>', 'clamp trace prompts')
  .option('--max-output-tokens <n>', 'clamp trace outputs')
  .option('--workload <file>', 'tenants, values and SLOs for traces that carry none')
  .option('--json', 'print the summary as JSON (vLLM key names plus ours)')
  .option('--requests-out <file>', 'one JSON line per request')
  .option('--api-key <key>', 'bearer key (default: OPENAI_API_KEY)')
  .option('--api-keys <file>', "the server's keys file: each tenant sends with its own key")
  .option('--base-price <p>', 'compute cost per token for welfare')
  .option('--default-bid <v>', 'value per output token of requests with no value or bid, where the server gives no verdict')
  .option('--client-retries <n>', 'answer 429 quotes: retry after the quoted wait up to n times while it can clear')
  .option('--client-mode <mode>', 'retry | agent (an agent lowers max_tokens to fit its value)', 'retry')
  .option('--timeout <s>', 'per-request timeout, seconds')
  .option('--quiet', 'no progress bar')
  .action(runBenchServe);

program
  .command('calibrate')
  .description("fit the simulator's step-time model: to the engine measured on a grid of step shapes, or to a served run's steps")
  .option('--model <dir>', 'model directory: measure its engine (in its worker thread) on a grid of step shapes')
  .option('--from-steps <files>', 'fit instead to the steps a server logged (marginal serve --step-log); several files comma-separated')
  .requiredOption('--out <file>', 'profile JSON to write')
  .option('--providers <list>', 'execution providers', 'cpu')
  .option('--threads <n>', 'ONNX Runtime intra-op threads', intArg('--threads'))
  .option('--repeats <n>', 'measurements per shape', intArg('--repeats'))
  .option('--block-size <n>', 'positions per KV block (default 16)', intArg('--block-size'))
  .option('--max-model-len <n>', "positions per sequence (default: the model's context)", intArg('--max-model-len'))
  .action(runCalibrate);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  const err = e as Error & { code?: string; exitCode?: number };
  if (e instanceof ReportedError) {
    // The server has logged it already, as one of its JSON lines.
    process.exitCode = e.exitCode;
  } else if (err.code?.startsWith('commander.')) {
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
