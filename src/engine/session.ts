import * as ort from 'onnxruntime-node';
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { ModelFormatError } from '../errors.js';
import type { ExecutionProvider } from './types.js';

export interface SessionConfig {
  /** Providers in order of preference; default CUDA then CPU. */
  providers?: ExecutionProvider[];
  intraOpThreads?: number;
  interOpThreads?: number;
  /**
   * Let ONNX Runtime's intra-op threads spin between parallel sections (its default). Off by
   * default here: the engine shares the cores with the server's own threads (HTTP, tokenizer
   * pool), and spinning threads that are oversubscribed wait out whole scheduler slices at every
   * barrier — on this project's shared 2-core machine a stories15M batch-32 step ran 1.5–2.5×
   * slower with spinning than without (BENCHMARKS.md).
   */
  spinning?: boolean;
  /** Where the one fallback line goes (default: stderr). */
  log?: (line: string) => void;
  /** Write ONNX Runtime's per-node profile (JSON) to files starting with this path, for benchmarks. */
  profilePrefix?: string;
}

export interface OpenedSession {
  session: ort.InferenceSession;
  provider: ExecutionProvider;
}

/**
 * Opens a session on the first provider that loads. onnxruntime-node throws, rather than
 * falling back, when asked for CUDA without the CUDA provider library, so each provider is
 * tried on its own and a failure to load CUDA costs one clear log line, not the server.
 */
export async function openSession(path: string, cfg: SessionConfig = {}): Promise<OpenedSession> {
  if (!existsSync(path)) throw new ModelFormatError(`graph file ${path} is missing`);
  const wanted = cfg.providers ?? envProviders() ?? ['cuda', 'cpu'];
  const log = cfg.log ?? ((line: string) => process.stderr.write(line + '\n'));
  const failures: string[] = [];
  for (const provider of wanted) {
    if (provider === 'cuda' && !cudaProviderInstalled()) {
      // Asking ONNX Runtime anyway would print its own multi-line error before ours.
      failures.push('CUDA execution provider not installed (on a GPU box: ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci)');
      continue;
    }
    const options: ort.InferenceSession.SessionOptions = {
      executionProviders: [provider],
      graphOptimizationLevel: 'all',
      logSeverityLevel: 3,
    };
    if (cfg.intraOpThreads !== undefined) options.intraOpNumThreads = cfg.intraOpThreads;
    if (cfg.spinning !== true) options.extra = { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } };
    if (cfg.interOpThreads !== undefined) options.interOpNumThreads = cfg.interOpThreads;
    if (cfg.profilePrefix !== undefined) {
      options.enableProfiling = true;
      options.profileFilePrefix = cfg.profilePrefix;
    }
    try {
      const session = await ort.InferenceSession.create(path, options);
      if (failures.length > 0) log(`marginal: ${failures.join('; ')}; running on ${provider.toUpperCase()}`);
      return { session, provider };
    } catch (e) {
      const msg = (e as Error).message.split('\n')[0] ?? String(e);
      if (provider === 'cpu' || !isProviderLoadFailure(msg)) {
        // A model the CPU provider rejects is a bad model, not a provider problem.
        throw new ModelFormatError(`cannot load ${path}: ${msg}`);
      }
      failures.push(`${provider.toUpperCase()} execution provider unavailable (${msg.slice(0, 160)})`);
    }
  }
  throw new ModelFormatError(`cannot load ${path}: ${failures.join('; ')}`);
}

function isProviderLoadFailure(msg: string): boolean {
  return !/protobuf|parse|invalid model|ModelProto|load model/i.test(msg) || /provider|cuda|libonnxruntime_providers/i.test(msg);
}

/** MARGINAL_PROVIDERS=cpu (or cuda,cpu) overrides the default order without a config file. */
export function envProviders(): ExecutionProvider[] | undefined {
  const v = process.env.MARGINAL_PROVIDERS;
  if (!v) return undefined;
  const list = v.split(',').map((s) => s.trim()).filter((s): s is ExecutionProvider => s === 'cuda' || s === 'cpu');
  return list.length > 0 ? list : undefined;
}

let cudaInstalled: boolean | undefined;

/** Whether onnxruntime-node's binary folder holds the CUDA provider library. */
export function cudaProviderInstalled(): boolean {
  if (cudaInstalled !== undefined) return cudaInstalled;
  try {
    const pkg = dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
    const bin = join(pkg, 'bin');
    const stack = [bin];
    cudaInstalled = false;
    while (stack.length > 0 && !cudaInstalled) {
      const dir = stack.pop() as string;
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        if (entry.isDirectory()) stack.push(join(dir, entry.name));
        else if (entry.name.startsWith('libonnxruntime_providers_cuda')) cudaInstalled = true;
      }
    }
  } catch {
    cudaInstalled = false;
  }
  return cudaInstalled;
}
