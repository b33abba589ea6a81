import type { ExecutionProvider } from '../../src/engine/types.js';

/**
 * The execution providers tests open engines on: MARGINAL_PROVIDERS (e.g. `cuda` on a GPU box,
 * which bench/gpu-check.sh sets so the suite fails where CUDA does not load), else the CPU.
 */
export function testProviders(): ExecutionProvider[] {
  const list = (process.env.MARGINAL_PROVIDERS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s): s is ExecutionProvider => s === 'cuda' || s === 'cpu');
  return list.length > 0 ? list : ['cpu'];
}
