import { InvalidArgumentError } from '../errors.js';
import { OnnxEngine, type OnnxEngineOptions } from '../engine/onnx-engine.js';
import type { Engine, ExecutionProvider } from '../engine/types.js';
import { WorkerEngine } from '../engine/worker-engine.js';
import { nativeStatus } from '../native/index.js';
import { describeModel, loadModelDir, type Flavour, type LoadedModel } from '../models/modeldir.js';
import { defaultModelDir } from '../models/importers.js';

export interface EngineCliOptions {
  model?: string;
  flavour: string;
  providers: string;
  threads?: number;
  maxSequences?: number;
  /** Run the engine in a worker thread (the server: its event loop must never wait on a step). */
  worker?: boolean;
  /** Where start-up lines go (the server's logger); default stderr. */
  log?: (line: string) => void;
}

const stderrLog = (s: string) => process.stderr.write(s + '\n');

export async function openModelAndEngine(o: EngineCliOptions): Promise<{ model: LoadedModel; engine: Engine }> {
  if (o.flavour !== 'fast' && o.flavour !== 'hf') throw new InvalidArgumentError(`--flavour must be fast or hf, got ${o.flavour}`);
  const providers = o.providers.split(',').map((p) => p.trim());
  for (const p of providers) if (p !== 'cuda' && p !== 'cpu') throw new InvalidArgumentError(`unknown execution provider ${p} (cuda, cpu)`);
  const log = o.log ?? stderrLog;
  const model = await loadModelDir(o.model ?? defaultModelDir(log));
  if (model.synthetic) log(`marginal: ${describeModel(model)}`);
  log(`marginal: ${nativeStatus()}`);
  const engineOpts: OnnxEngineOptions = {
    flavour: (model.flavours.includes(o.flavour as Flavour) ? o.flavour : model.flavours[0]) as Flavour,
    providers: providers as ExecutionProvider[],
    log,
  };
  if (o.threads !== undefined) engineOpts.intraOpThreads = o.threads;
  if (o.maxSequences !== undefined) engineOpts.maxSequences = o.maxSequences;
  const engine = o.worker ? await WorkerEngine.create(model.dir, engineOpts) : await OnnxEngine.create(model, engineOpts);
  return { model, engine };
}
