import { IoBindingUnavailableError, InvalidArgumentError, ModelFormatError } from '../errors.js';
import type { Flavour } from '../models/modeldir.js';
import { ortRunnerUnavailable } from '../native/ort-runner.js';
import { BoundKvBackend } from './bound-kv-backend.js';
import { JsKvBackend, type KvGeometry } from './js-kv-backend.js';
import type { KvBackend } from './kv-backend.js';
import { cudaProviderInstalled, envProviders, openSession, type SessionConfig } from './session.js';

/** true: I/O binding or an error; false: onnxruntime-node; undefined: I/O binding where it can open. */
export type KvBackendChoice = boolean | undefined;

export interface OpenKvBackendOptions extends SessionConfig {
  ioBinding?: KvBackendChoice;
  vocab: number;
  rankedLimit: (inputs: ReadonlySet<string>) => number;
}

/** MARGINAL_IO_BINDING=0 turns the I/O-binding path off, =1 makes it mandatory. */
function envIoBinding(): KvBackendChoice {
  const v = process.env.MARGINAL_IO_BINDING;
  if (v === '0') return false;
  if (v === '1') return true;
  return undefined;
}

const logged = new Set<string>();

/** The default log: stderr, each distinct line once per process (tests open many engines). */
function logOnce(line: string): void {
  if (logged.has(line)) return;
  logged.add(line);
  process.stderr.write(line + '\n');
}

/**
 * Opens the session that runs `graphPath` and holds the KV cache, trying providers in order
 * (CUDA, then CPU, unless configured), and logs one line saying which path runs and why:
 * the fast graph goes through the native addon's I/O-binding runner wherever it can open,
 * else — and for `hf` graphs — through onnxruntime-node's JavaScript session.
 */
export async function openKvBackend(graphPath: string, flavour: Flavour, g: KvGeometry, o: OpenKvBackendOptions): Promise<KvBackend> {
  const log = o.log ?? logOnce;
  const want = o.ioBinding ?? envIoBinding();
  if (want === true && flavour !== 'fast') throw new InvalidArgumentError(`I/O binding runs the fast graph only, not ${flavour}`);
  let why: string | undefined;
  if (flavour !== 'fast') why = `the ${flavour} graph always runs there`;
  else if (want === false) why = 'turned off';
  else why = ortRunnerUnavailable();

  if (why === undefined) {
    const providers = o.providers ?? envProviders() ?? ['cuda', 'cpu'];
    const failures: string[] = [];
    for (const provider of providers) {
      if (provider === 'cuda' && !cudaProviderInstalled()) {
        failures.push('CUDA execution provider not installed (on a GPU box: ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci)');
        continue;
      }
      try {
        const threads: { intraOpThreads?: number; interOpThreads?: number } = {};
        if (o.intraOpThreads !== undefined) threads.intraOpThreads = o.intraOpThreads;
        if (o.interOpThreads !== undefined) threads.interOpThreads = o.interOpThreads;
        const backend = await BoundKvBackend.open(graphPath, provider, g, { vocab: o.vocab, rankedLimit: o.rankedLimit }, threads);
        const fallback = failures.length > 0 ? ` (${failures.join('; ')})` : '';
        log(`marginal: engine: ${flavour} graph on ONNX Runtime ${backend.version}'s C API with I/O binding (native addon) on ${provider.toUpperCase()}; KV cache in ${backend.memory} memory, bound in place${fallback}`);
        return backend;
      } catch (e) {
        const err = e as Error & { code?: string };
        const msg = err.message.split('\n')[0] ?? String(e);
        if (err.code === 'ORT_PROVIDER' && provider !== 'cpu') {
          failures.push(`${provider.toUpperCase()} execution provider unavailable (${msg.slice(0, 200)})`);
          continue;
        }
        // A model the CPU provider rejects is a bad model, not a provider problem.
        if (err.code === 'ORT_SESSION' || err.code === 'ORT_PROVIDER' || err instanceof ModelFormatError) throw new ModelFormatError(`cannot load ${graphPath}: ${msg}`);
        // Anything else is the runner itself failing (its library, its memory): the
        // JavaScript session can still serve, unless I/O binding was demanded.
        why = `the runner failed: ${msg}`;
        break;
      }
    }
    if (why === undefined) throw new ModelFormatError(`cannot load ${graphPath}: ${failures.join('; ')}`);
  }
  if (want === true) throw new IoBindingUnavailableError(why);
  // openSession's own fallback line (CUDA unavailable) joins ours, so one line is logged.
  const notes: string[] = [];
  const { session, provider } = await openSession(graphPath, { ...o, log: (line) => notes.push(line.replace(/^marginal: /, '')) });
  const backend = new JsKvBackend(session, provider, g);
  const fallback = notes.length > 0 ? `; ${notes.join('; ')}` : '';
  log(`marginal: engine: ${flavour} graph on onnxruntime-node's JavaScript session on ${provider.toUpperCase()}; KV cache in host memory (I/O binding: ${why})${fallback}`);
  return backend;
}
