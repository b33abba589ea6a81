import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { InvalidArgumentError } from '../errors.js';
import { fitProfile, predictSampleMs, type StepProfile, type StepSample } from '../engine/cost-model.js';
import type { EngineInfo } from '../engine/types.js';
import type { Geometry } from '../geometry.js';
import type { StepRecord } from './generator.js';

/** The first line of a step log: what the steps ran on. */
export interface StepLogHeader {
  model: string;
  engine: EngineInfo;
  geometry: Geometry;
}

/**
 * A server's steps as JSON Lines (`marginal serve --step-log FILE`): a header, then one record
 * per step that ran requests. `marginal calibrate --from-steps FILE` fits the simulator's cost
 * model to them: the server's own pace, under whatever else the machine was doing.
 */
export function openStepLog(path: string, header: StepLogHeader): { write: (s: StepRecord) => void; close: () => Promise<void> } {
  const out = createWriteStream(path);
  out.write(JSON.stringify(header) + '\n');
  return {
    write: (s) => void out.write(JSON.stringify(s) + '\n'),
    close: () => new Promise<void>((resolve) => out.end(() => resolve())),
  };
}

export async function readStepLog(path: string): Promise<{ header: StepLogHeader; steps: StepRecord[] }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`cannot read step log ${path}: ${(e as Error).message}`);
  }
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  const parse = (l: string, i: number): unknown => {
    try {
      return JSON.parse(l);
    } catch {
      throw new InvalidArgumentError(`step log ${path} line ${i + 1} is not JSON`);
    }
  };
  const header = parse(lines[0] ?? '', 0) as Partial<StepLogHeader>;
  if (typeof header.model !== 'string' || typeof header.engine !== 'object' || typeof header.geometry !== 'object') {
    throw new InvalidArgumentError(`step log ${path} does not start with the header marginal serve --step-log writes`);
  }
  return { header: header as StepLogHeader, steps: lines.slice(1).map((l, i) => parse(l, i + 1) as StepRecord) };
}

/** The steps with a period (followed at once by another), as the cost model's samples. */
export function timedSteps(steps: readonly StepRecord[]): StepSample[] {
  return steps
    .filter((s) => s.periodMs !== null && s.periodMs > 0)
    .map((s) => ({
      shape: { tokens: s.tokens, contextTokens: s.contextTokens, sequences: s.sequences, runs: s.runs },
      ms: s.periodMs as number,
      ...(s.arrivals !== undefined ? { arrivals: s.arrivals } : {}),
      ...(s.finished !== undefined ? { finished: s.finished } : {}),
    }));
}

/**
 * How much slower than `profile` a served run went: its steps' total period over the total the
 * profile predicts for them (1 = at the profile's pace). Time-weighted, so that a run's many
 * small steps do not outvote the long ones that hold the time.
 */
export function paceOf(profile: StepProfile, steps: readonly StepRecord[]): number {
  let real = 0;
  let predicted = 0;
  for (const x of timedSteps(steps)) {
    real += x.ms;
    predicted += predictSampleMs(profile, x);
  }
  if (!(predicted > 0)) throw new InvalidArgumentError('no timed steps to measure a pace on');
  return real / predicted;
}

/**
 * The cost model fitted to a served run: each step's shape against the pace the server kept
 * (plan to next plan, steps followed by another at once), so that everything around the engine
 * that slows a step down on this machine — the HTTP side, other processes — is in the profile.
 */
export function profileFromSteps(log: { header: StepLogHeader; steps: readonly StepRecord[] }, machine: string): StepProfile {
  const samples = timedSteps(log.steps);
  if (samples.length < 10) throw new InvalidArgumentError(`the step log has ${samples.length} back-to-back steps; at least 10 are needed to fit a profile`);
  const { engine, geometry } = log.header;
  return {
    model: log.header.model,
    machine: `${machine}, served steps`,
    flavour: engine.flavour,
    ...fitProfile(samples),
    maxSequences: geometry.maxNumSeqs,
    maxContext: geometry.maxModelLen,
    blockSize: geometry.blockSize,
    swapMsPerToken: engine.swapSecondsPerToken * 1000,
    kvBytesPerToken: engine.blockBytes / engine.blockSize,
    contextTerm: 'attended',
    samples: samples.length,
  };
}
