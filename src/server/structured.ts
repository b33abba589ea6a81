import { InvalidArgumentError } from '../errors.js';
import type { GrammarSpec } from '../sampling/grammar.js';

/** A grammar a request asks for, and the field that asked (errors name it). */
export interface RequestedGrammar {
  spec: GrammarSpec;
  param: string;
}

function bad(param: string, message: string): never {
  throw Object.assign(new InvalidArgumentError(message), { param });
}

function schemaOf(v: unknown, param: string): unknown {
  if (typeof v === 'string') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(v) as unknown;
    } catch {
      bad(param, `${param} must be a JSON schema (an object, or a string holding one)`);
    }
    return schemaOf(parsed, param);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(param, `${param} must be a JSON schema object`);
  checkEnforceable(v, param);
  return v;
}

/**
 * Keywords xgrammar (0.1.27) accepts but does not enforce exactly, found by validating its
 * outputs: bounds and multiples on non-integer numbers. A strict schema that uses them is
 * refused rather than answered with output that may not validate.
 */
export function checkSchema(schema: unknown, param: string): void {
  checkEnforceable(schema, param);
}

function checkEnforceable(schema: unknown, param: string, path = '#'): void {
  if (typeof schema !== 'object' || schema === null) return;
  if (Array.isArray(schema)) {
    schema.forEach((s, i) => checkEnforceable(s, param, `${path}/${i}`));
    return;
  }
  const o = schema as Record<string, unknown>;
  // Draft-4 tuples abort the engine's converter (it wants 2020-12's prefixItems).
  if (Array.isArray(o.items)) bad(param, `${param}: items as an array (${path}) is draft-4 tuple syntax; use prefixItems`);
  const types = Array.isArray(o.type) ? o.type : [o.type];
  if (types.includes('number')) {
    for (const k of ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'multipleOf']) {
      if (o[k] !== undefined) bad(param, `${param}: ${k} on a number (${path}) cannot be enforced by the grammar engine; use an integer, or drop it`);
    }
  }
  for (const [k, v] of Object.entries(o)) if (k !== 'enum' && k !== 'const' && k !== 'default' && k !== 'examples') checkEnforceable(v, param, `${path}/${k}`);
}

function nonEmptyString(v: unknown, param: string): string {
  if (typeof v !== 'string' || v.length === 0) bad(param, `${param} must be a non-empty string`);
  return v;
}

function choices(v: unknown, param: string): string[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((c) => typeof c === 'string' && c.length > 0)) bad(param, `${param} must be a non-empty array of non-empty strings`);
  return v as string[];
}

/**
 * The structured-output constraint of a request: OpenAI's `response_format` (json_object,
 * json_schema), vLLM's `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar`
 * and their newer `structured_outputs` object. At most one may be given.
 */
export function requestedGrammar(body: Record<string, unknown>): RequestedGrammar | undefined {
  const found: RequestedGrammar[] = [];
  const rf = body.response_format;
  if (rf !== undefined && rf !== null) {
    if (typeof rf !== 'object' || Array.isArray(rf)) bad('response_format', 'response_format must be an object');
    const r = rf as { type?: unknown; json_schema?: { schema?: unknown; name?: unknown; strict?: unknown } };
    if (r.type === 'json_object') found.push({ spec: { kind: 'json_object' }, param: 'response_format' });
    else if (r.type === 'json_schema') {
      const js = r.json_schema;
      if (typeof js !== 'object' || js === null || js.schema === undefined) bad('response_format', 'response_format.json_schema.schema is required');
      found.push({ spec: { kind: 'json_schema', schema: schemaOf(js.schema, 'response_format') }, param: 'response_format' });
    } else if (r.type !== 'text' && r.type !== undefined) bad('response_format', `response_format.type must be text, json_object or json_schema (got ${JSON.stringify(r.type)})`);
  }
  const present = (k: string) => body[k] !== undefined && body[k] !== null;
  if (present('guided_json')) found.push({ spec: { kind: 'json_schema', schema: schemaOf(body.guided_json, 'guided_json') }, param: 'guided_json' });
  if (present('guided_regex')) found.push({ spec: { kind: 'regex', pattern: nonEmptyString(body.guided_regex, 'guided_regex') }, param: 'guided_regex' });
  if (present('guided_choice')) found.push({ spec: { kind: 'choice', choices: choices(body.guided_choice, 'guided_choice') }, param: 'guided_choice' });
  if (present('guided_grammar')) found.push({ spec: { kind: 'ebnf', grammar: nonEmptyString(body.guided_grammar, 'guided_grammar') }, param: 'guided_grammar' });
  if (present('structured_outputs')) {
    const so = body.structured_outputs as Record<string, unknown>;
    if (typeof so !== 'object' || Array.isArray(so)) bad('structured_outputs', 'structured_outputs must be an object');
    for (const [k, v] of Object.entries(so)) {
      if (v === undefined || v === null) continue;
      const param = `structured_outputs.${k}`;
      if (k === 'json') found.push({ spec: { kind: 'json_schema', schema: schemaOf(v, param) }, param });
      else if (k === 'json_object') {
        if (v === true) found.push({ spec: { kind: 'json_object' }, param });
      } else if (k === 'regex') found.push({ spec: { kind: 'regex', pattern: nonEmptyString(v, param) }, param });
      else if (k === 'choice') found.push({ spec: { kind: 'choice', choices: choices(v, param) }, param });
      else if (k === 'grammar') found.push({ spec: { kind: 'ebnf', grammar: nonEmptyString(v, param) }, param });
      else bad(param, `${param} is not supported`);
    }
  }
  const backend = body.guided_decoding_backend;
  if (backend !== undefined && backend !== null && backend !== 'xgrammar' && backend !== 'auto') bad('guided_decoding_backend', 'the only grammar backend here is xgrammar');
  if (found.length > 1) bad(found[1]!.param, `only one structured-output constraint per request (got ${found.map((f) => f.param).join(' and ')})`);
  return found[0];
}
