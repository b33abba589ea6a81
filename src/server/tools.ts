import { randomUUID } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';
import type { GrammarSpec } from '../sampling/grammar.js';
import { checkSchema } from './structured.js';

/**
 * Tool calling. A model whose chat template takes `tools` gets them through it; any other (the
 * plain template) gets them in a system message in this generic format, and answers a call as
 *
 *     <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>
 *
 * (Hermes' and Qwen's format; a bare {"name", "arguments"} object is read as a call too).
 * `tool_choice` "auto" lets the model choose between text and calls; "required" and a named
 * function constrain the output with a grammar to exactly one call, `{"name": …, "arguments": …}`,
 * whose arguments validate against the function's parameters schema.
 */

export interface ToolFunction {
  name: string;
  description?: string;
  parameters?: Record<string, unknown>;
}

export type ToolMode = { kind: 'none' } | { kind: 'auto' } | { kind: 'required' } | { kind: 'named'; name: string };

export interface RequestedTools {
  functions: ToolFunction[];
  mode: ToolMode;
  /** parallel_tool_calls (default true): false keeps an auto answer to its first call. */
  parallel: boolean;
}

export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

function bad(param: string, message: string): never {
  throw Object.assign(new InvalidArgumentError(message), { param });
}

/** The request's tools and tool_choice, validated; undefined when it has no tools. */
export function requestedTools(body: { tools?: unknown; tool_choice?: unknown; parallel_tool_calls?: unknown }): RequestedTools | undefined {
  const { tools, tool_choice: choice } = body;
  if (tools === undefined || tools === null || (Array.isArray(tools) && tools.length === 0)) {
    if (choice !== undefined && choice !== null && choice !== 'none' && choice !== 'auto') bad('tool_choice', 'tool_choice needs tools');
    return undefined;
  }
  if (!Array.isArray(tools)) bad('tools', 'tools must be an array');
  const functions = tools.map((t: unknown, i): ToolFunction => {
    const o = t as { type?: unknown; function?: { name?: unknown; description?: unknown; parameters?: unknown } };
    if (typeof o !== 'object' || o === null || o.type !== 'function' || typeof o.function !== 'object' || o.function === null) bad('tools', `tools[${i}] must be {"type": "function", "function": {...}}`);
    const f = o.function;
    if (typeof f.name !== 'string' || !/^[a-zA-Z0-9_-]{1,64}$/.test(f.name)) bad('tools', `tools[${i}].function.name must be 1-64 letters, digits, _ or -`);
    if (f.parameters !== undefined && (typeof f.parameters !== 'object' || f.parameters === null || Array.isArray(f.parameters))) bad('tools', `tools[${i}].function.parameters must be a JSON schema object`);
    if (f.parameters !== undefined) checkSchema(f.parameters, 'tools');
    return {
      name: f.name,
      ...(typeof f.description === 'string' ? { description: f.description } : {}),
      ...(f.parameters !== undefined ? { parameters: f.parameters as Record<string, unknown> } : {}),
    };
  });
  if (new Set(functions.map((f) => f.name)).size !== functions.length) bad('tools', 'tool names must be distinct');
  let mode: ToolMode;
  if (choice === undefined || choice === null || choice === 'auto') mode = { kind: 'auto' };
  else if (choice === 'none') mode = { kind: 'none' };
  else if (choice === 'required') mode = { kind: 'required' };
  else {
    const name = (choice as { type?: unknown; function?: { name?: unknown } }).function?.name;
    if ((choice as { type?: unknown }).type !== 'function' || typeof name !== 'string') bad('tool_choice', 'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": …}}');
    if (!functions.some((f) => f.name === name)) bad('tool_choice', `tool_choice names ${name}, which is not among the tools`);
    mode = { kind: 'named', name };
  }
  return { functions, mode, parallel: body.parallel_tool_calls !== false };
}

/** The system text that describes the tools in the generic format. */
export function toolInstructions(functions: readonly ToolFunction[]): string {
  const list = functions.map((f) => JSON.stringify({ name: f.name, ...(f.description !== undefined ? { description: f.description } : {}), parameters: f.parameters ?? {} })).join('\n');
  return `Functions:\n${list}\nCall one as <tool_call>{"name": …, "arguments": {…}}</tool_call>.`;
}

/** The grammar that makes the output exactly one call (tool_choice required or named). */
export function callGrammar(t: RequestedTools): GrammarSpec | undefined {
  if (t.mode.kind !== 'required' && t.mode.kind !== 'named') return undefined;
  const named = t.mode.kind === 'named' ? t.mode.name : undefined;
  const call = (f: ToolFunction) => ({
    type: 'object',
    properties: { name: { const: f.name }, arguments: f.parameters ?? { type: 'object', properties: {} } },
    required: ['name', 'arguments'],
    additionalProperties: false,
  });
  const fs = t.functions.filter((f) => named === undefined || f.name === named);
  return { kind: 'json_schema', schema: fs.length === 1 ? call(fs[0]!) : { anyOf: fs.map(call) } };
}

function newCall(name: string, args: unknown): ToolCall {
  return { id: `call_${randomUUID().replace(/-/g, '').slice(0, 24)}`, type: 'function', function: { name, arguments: typeof args === 'string' ? args : JSON.stringify(args ?? {}) } };
}

function callFrom(v: unknown, names: ReadonlySet<string>): ToolCall | undefined {
  const o = v as { name?: unknown; arguments?: unknown; parameters?: unknown };
  if (typeof o !== 'object' || o === null || typeof o.name !== 'string' || !names.has(o.name)) return undefined;
  return newCall(o.name, o.arguments ?? o.parameters ?? {});
}

/**
 * The calls in a model's answer: `<tool_call>…</tool_call>` blocks, or the whole answer as one
 * bare {"name", "arguments"} object. Undefined when the answer is text (it is then content).
 */
export function parseToolCalls(text: string, functions: readonly ToolFunction[], parallel = true): { calls: ToolCall[]; content: string | null } | undefined {
  const names = new Set(functions.map((f) => f.name));
  const blocks = [...text.matchAll(/<tool_call>\s*([\s\S]*?)\s*(?:<\/tool_call>|$)/g)];
  if (blocks.length > 0) {
    const calls: ToolCall[] = [];
    for (const b of blocks) {
      try {
        const c = callFrom(JSON.parse(b[1]!), names);
        if (c !== undefined) calls.push(c);
      } catch {
        // A malformed block stays text.
      }
    }
    if (calls.length === 0) return undefined;
    if (!parallel) calls.length = 1;
    const content = text.slice(0, text.indexOf('<tool_call>')).trim();
    return { calls, content: content.length > 0 ? content : null };
  }
  const trimmed = text.trim();
  if (!trimmed.startsWith('{')) return undefined;
  try {
    const c = callFrom(JSON.parse(trimmed), names);
    return c === undefined ? undefined : { calls: [c], content: null };
  } catch {
    return undefined;
  }
}

/**
 * Streams a constrained call (required or named) as OpenAI's tool_call deltas: once the
 * grammar's prefix `{"name": "f", "arguments": ` is complete, a delta with the call's id and
 * name, then the arguments text as it comes, holding back the closing brace of the wrapper.
 */
export class CallStreamer {
  private text = '';
  private sentArgs = 0;
  private header: ToolCall | undefined;
  private static readonly prefix = /^\{"name": "([^"]+)", "arguments": /;

  /** The deltas the text so far completes (each an OpenAI `delta.tool_calls` array). */
  push(piece: string): object[] {
    this.text += piece;
    const out: object[] = [];
    const m = CallStreamer.prefix.exec(this.text);
    if (m === null) return out;
    if (this.header === undefined) {
      this.header = newCall(m[1]!, '');
      out.push([{ index: 0, id: this.header.id, type: 'function', function: { name: m[1]!, arguments: '' } }]);
    }
    // The wrapper's closing brace is the text's last character once complete: hold one back.
    const args = this.text.slice(m[0].length, Math.max(m[0].length, this.text.length - 1));
    if (args.length > this.sentArgs) {
      out.push([{ index: 0, function: { arguments: args.slice(this.sentArgs) } }]);
      this.sentArgs = args.length;
    }
    return out;
  }
}
