import { InvalidArgumentError as CommanderArgError } from 'commander';

/** Commander parsers that refuse what is not a number (an empty string included) with the flag's name. */
export function intArg(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isInteger(n)) throw new CommanderArgError(`${name} must be an integer`);
    return n;
  };
}

export function numArg(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) throw new CommanderArgError(`${name} must be a number`);
    return n;
  };
}
