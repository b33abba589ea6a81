/**
 * TensorFlow.js for the learned estimators: @tensorflow/tfjs-node-gpu (TensorFlow's native
 * kernels, CUDA where present) when it loads, else @tensorflow/tfjs on its pure-JavaScript CPU
 * backend. The GPU package is an optional dependency whose install script downloads
 * libtensorflow, so on an offline or CPU-only machine it is absent or fails to load; that is
 * expected and reported in one line, once per process.
 */
export type Tf = typeof import('@tensorflow/tfjs');

export interface LoadedTf {
  tf: Tf;
  /** The package that supplied the kernels. */
  package: '@tensorflow/tfjs-node-gpu' | '@tensorflow/tfjs';
  /** tf.getBackend() after loading: 'tensorflow' (native) or 'cpu' (JavaScript). */
  backend: string;
}

/** A variable, so that TypeScript does not try to resolve a package that may not be installed. */
const NATIVE_PACKAGE: string = '@tensorflow/tfjs-node-gpu';

let loading: Promise<LoadedTf> | undefined;
let loaded: LoadedTf | undefined;

async function load(log: (line: string) => void): Promise<LoadedTf> {
  let tf: Tf;
  let pkg: LoadedTf['package'];
  let why = '';
  try {
    tf = (await import(NATIVE_PACKAGE)) as Tf;
    pkg = '@tensorflow/tfjs-node-gpu';
  } catch (e) {
    why = ` (${NATIVE_PACKAGE} did not load: ${firstLine(e)})`;
    tf = await import('@tensorflow/tfjs');
    pkg = '@tensorflow/tfjs';
    await tf.setBackend('cpu');
  }
  // Production mode skips per-op NaN checks and silences tfjs's own "install tfjs-node" banner,
  // so that the line below is the only one.
  tf.enableProdMode();
  await tf.ready();
  const backend = tf.getBackend();
  log(`marginal: length model on ${pkg} ${tf.version.tfjs}, backend ${backend}${why}`);
  loaded = { tf, package: pkg, backend };
  return loaded;
}

function firstLine(e: unknown): string {
  const m = e instanceof Error ? e.message : String(e);
  return m.split('\n', 1)[0] ?? m;
}

/**
 * Loads TensorFlow.js once per process; later calls share the first one's result (and its
 * log line went to the first caller's `log`).
 */
export function loadTf(log: (line: string) => void = (line) => process.stderr.write(line + '\n')): Promise<LoadedTf> {
  loading ??= load(log);
  return loading;
}

/** TensorFlow.js if loadTf has finished, for synchronous callers (the simulator builds a predictor per run). */
export function loadedTf(): LoadedTf | undefined {
  return loaded;
}
