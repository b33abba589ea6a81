import { InvalidArgumentError } from '../errors.js';
import { OnnxEngine, type OnnxEngineOptions } from '../engine/onnx-engine.js';
import type { Engine, ExecutionProvider } from '../engine/types.js';
import { WorkerEngine } from '../engine/worker-engine.js';
import { describeGeometry, resolveGeometry, type Geometry, type GeometryOptions } from '../geometry.js';
import { nativeStatus } from '../native/index.js';
import { cudaFreeMemory } from '../native/ort-runner.js';
import { cudaProviderInstalled } from '../engine/session.js';
import { describeModel, loadModelDir, type Flavour, type LoadedModel } from '../models/modeldir.js';
import { defaultModelDir } from '../models/importers.js';
import { resolveModel } from '../models/store.js';
import { weightProgress } from './progress.js';

export interface EngineCliOptions {
  model?: string;
  flavour: string;
  providers: string;
  threads?: number;
  spinning?: boolean;
  /** Run the engine in a worker thread (the server: its event loop must never wait on a step). */
  worker?: boolean;
  /** Where start-up lines go (the server's logger); default stderr. */
  log?: (line: string) => void;
}

const stderrLog = (s: string) => process.stderr.write(s + '\n');

/** Bytes one token's keys and values take in the model's KV pool (float32, every layer). */
export function kvBytesPerToken(model: LoadedModel): number {
  return model.kv.layers * 2 * model.kv.kvHeads * model.kv.headDim * 4;
}

/** The engine options that build the pool and sequence limits a geometry describes. */
export function engineGeometry(g: Geometry): Pick<OnnxEngineOptions, 'maxSequences' | 'maxContext' | 'blockSize' | 'kvBlocks' | 'hostBlocks'> {
  return { maxSequences: g.maxNumSeqs, maxContext: g.maxModelLen, blockSize: g.blockSize, kvBlocks: g.kvBlocks, hostBlocks: g.swapBlocks };
}

export async function openModelAndEngine(o: EngineCliOptions, geometry: GeometryOptions = {}): Promise<{ model: LoadedModel; engine: Engine; geometry: Geometry }> {
  if (o.flavour !== 'fast' && o.flavour !== 'hf') throw new InvalidArgumentError(`--flavour must be fast or hf, got ${o.flavour}`);
  const providers = o.providers.split(',').map((p) => p.trim());
  for (const p of providers) if (p !== 'cuda' && p !== 'cpu') throw new InvalidArgumentError(`unknown execution provider ${p} (cuda, cpu)`);
  const log = o.log ?? stderrLog;
  let dir: string;
  if (o.model === undefined) {
    dir = defaultModelDir(log);
  } else {
    // A GGUF file or a safetensors folder is imported into the model store on first use.
    const progress = weightProgress('importing');
    try {
      dir = await resolveModel(o.model, { log, onProgress: progress.onProgress });
    } finally {
      progress.stop();
    }
  }
  const model = await loadModelDir(dir);
  // A pool sized as a share of free memory takes it from where the pool will live.
  const deviceFree = providers[0] === 'cuda' && cudaProviderInstalled() ? cudaFreeMemory() : undefined;
  const g = resolveGeometry(geometry, { maxContext: model.kv.maxContext, kvBytesPerToken: kvBytesPerToken(model), ...(deviceFree !== undefined ? { freeMemory: deviceFree } : {}) });
  if (model.synthetic) log(`marginal: ${describeModel(model)}`);
  log(`marginal: ${nativeStatus()}`);
  log(`marginal: ${describeGeometry(g, kvBytesPerToken(model))}`);
  const engineOpts: OnnxEngineOptions = {
    flavour: (model.flavours.includes(o.flavour as Flavour) ? o.flavour : model.flavours[0]) as Flavour,
    providers: providers as ExecutionProvider[],
    log,
    ...engineGeometry(g),
  };
  if (o.threads !== undefined) engineOpts.intraOpThreads = o.threads;
  if (o.spinning === true) engineOpts.spinning = true;
  const engine = o.worker ? await WorkerEngine.create(model.dir, engineOpts) : await OnnxEngine.create(model, engineOpts);
  return { model, engine, geometry: g };
}
