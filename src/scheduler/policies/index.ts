import { InvalidArgumentError } from '../../errors.js';
import type { Policy } from '../policy.js';
import { FcfsPolicy } from './fcfs.js';
import { PriorityPolicy } from './priority.js';
import { ShadowPolicy, type ShadowOptions } from './shadow.js';
import { VtcPolicy } from './vtc.js';

export const POLICIES = ['shadow', 'fcfs', 'priority', 'vtc'] as const;
export type PolicyName = (typeof POLICIES)[number];

export function createPolicy(name: string, shadow: ShadowOptions = {}): Policy {
  switch (name) {
    case 'fcfs':
      return new FcfsPolicy();
    case 'priority':
      return new PriorityPolicy();
    case 'vtc':
      return new VtcPolicy();
    case 'shadow':
      return new ShadowPolicy(shadow);
    default:
      throw new InvalidArgumentError(`unknown policy "${name}"; known policies: ${POLICIES.join(', ')}`);
  }
}

export { FcfsPolicy, PriorityPolicy, ShadowPolicy, VtcPolicy };
