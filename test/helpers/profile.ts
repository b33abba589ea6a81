import type { StepProfile } from '../../src/engine/cost-model.js';

/** A fixed step-time model for tests of the scheduler, simulator and tuner (not a measurement). */
export const testProfile: StepProfile = {
  model: 'test',
  machine: 'test',
  flavour: 'fast',
  baseMs: 2,
  perTokenMs: 0.05,
  perContextMs: 0.5,
  perSequenceMs: 0.1,
  perRunMs: 1,
  maxSequences: 16,
  maxContext: 512,
  blockSize: 16,
};
