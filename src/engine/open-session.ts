import type * as ort from 'onnxruntime-node';
import { InvalidArgumentError, IoBindingUnavailableError, ModelFormatError } from '../errors.js';
import type { Flavour } from '../models/modeldir.js';
import { OrtRunner, ortRunnerUnavailable } from '../native/ort-runner.js';
import { cudaProviderInstalled, envProviders, openSession, type SessionConfig } from './session.js';
import type { ExecutionProvider } from './types.js';

/**
 * The session a graph runs on: the native addon's I/O-binding runner (ONNX Runtime's C API;
 * the KV pool in the session's memory, bound in place), or onnxruntime-node's JavaScript
 * session (the pool in host arrays handed over each run), the fallback.
 */
export type EngineSession =
  | { kind: 'io-binding'; runner: OrtRunner; provider: ExecutionProvider }
  | { kind: 'onnxruntime-node'; session: ort.InferenceSession; provider: ExecutionProvider };

export interface OpenEngineSessionOptions extends SessionConfig {
  /** true: the I/O-binding runner or an error; false: onnxruntime-node; default (or MARGINAL_IO_BINDING=1/0): the runner wherever it opens. */
  ioBinding?: boolean;
}

function envIoBinding(): boolean | undefined {
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
 * Opens `graphPath` on the first provider that loads (CUDA, then CPU, unless configured) and
 * logs one line saying which session path runs, on which provider, and why when it is the
 * fallback: the fast graph goes through the I/O-binding runner wherever the addon can open it;
 * `hf` graphs always run on onnxruntime-node.
 */
export async function openEngineSession(graphPath: string, flavour: Flavour, o: OpenEngineSessionOptions): Promise<EngineSession> {
  const log = o.log ?? logOnce;
  const want = o.ioBinding ?? envIoBinding();
  if (want === true && flavour !== 'fast') throw new InvalidArgumentError(`I/O binding runs the fast graph only, not ${flavour}`);
  let why: string | undefined;
  if (flavour !== 'fast') why = `the ${flavour} graph always runs there`;
  else if (want === false) why = 'turned off';
  else why = ortRunnerUnavailable();

  if (why === undefined) {
    const failures: string[] = [];
    for (const provider of o.providers ?? envProviders() ?? ['cuda', 'cpu']) {
      if (provider === 'cuda' && !cudaProviderInstalled()) {
        // Asking ONNX Runtime anyway would print its own multi-line error before ours.
        failures.push('CUDA execution provider not installed (on a GPU box: ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci)');
        continue;
      }
      try {
        const threads: { intraOpThreads?: number; interOpThreads?: number; spinning?: boolean } = {};
        if (o.intraOpThreads !== undefined) threads.intraOpThreads = o.intraOpThreads;
        if (o.interOpThreads !== undefined) threads.interOpThreads = o.interOpThreads;
        if (o.spinning !== undefined) threads.spinning = o.spinning;
        const runner = await OrtRunner.open(graphPath, { provider, ...threads });
        const fallback = failures.length > 0 ? `; ${failures.join('; ')}` : '';
        const memory = provider === 'cuda' ? 'device' : 'host';
        log(`marginal: engine: ${flavour} graph on ONNX Runtime ${runner.version}'s C API with I/O binding (native addon) on ${provider.toUpperCase()}; KV pool in ${memory} memory, bound in place${fallback}`);
        return { kind: 'io-binding', runner, provider };
      } catch (e) {
        const err = e as Error & { code?: string };
        const msg = err.message.split('\n')[0] ?? String(e);
        if (err.code === 'ORT_PROVIDER' && provider !== 'cpu') {
          failures.push(`${provider.toUpperCase()} execution provider unavailable (${msg.slice(0, 200)})`);
          continue;
        }
        // A model the CPU provider rejects is a bad model, not a provider problem.
        if (err.code === 'ORT_SESSION' || err.code === 'ORT_PROVIDER') throw new ModelFormatError(`cannot load ${graphPath}: ${msg}`);
        // Anything else is the runner itself failing (its library, its memory): the JavaScript
        // session can still serve, unless I/O binding was demanded.
        why = `the runner failed: ${msg}`;
        break;
      }
    }
    if (why === undefined) throw new ModelFormatError(`cannot load ${graphPath}: ${failures.join('; ')}`);
  }
  if (want === true) throw new IoBindingUnavailableError(why);
  // openSession's own fallback line (CUDA unavailable) joins ours, so one line is logged.
  const notes: string[] = [];
  const { session, provider } = await openSession(graphPath, { ...o, log: (line) => notes.push(line.replace(/^marginal: /, '').replace(/; running on \w+$/, '')) });
  const fallback = notes.length > 0 ? `; ${notes.join('; ')}` : '';
  log(`marginal: engine: ${flavour} graph on onnxruntime-node's JavaScript session on ${provider.toUpperCase()}; KV pool in host memory (I/O binding: ${why})${fallback}`);
  return { kind: 'onnxruntime-node', session, provider };
}
