import { Template } from '@huggingface/jinja';
import { InvalidArgumentError } from '../errors.js';
import type { LoadedModel } from '../models/modeldir.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'developer' | 'tool';
  content: string | { type: string; text?: string }[] | null;
  name?: string;
  /** An assistant turn's calls, as the API returned them. */
  tool_calls?: { id?: string; type?: string; function: { name: string; arguments: string } }[];
  /** A tool turn: the call it answers. */
  tool_call_id?: string;
}

/** A past assistant turn's calls in the generic tool format (tools.ts). */
function callsText(m: ChatMessage): string {
  return (m.tool_calls ?? []).map((c) => `<tool_call>{"name": ${JSON.stringify(c.function.name)}, "arguments": ${c.function.arguments}}</tool_call>`).join('');
}

/**
 * The plain template for models without their own (llama2.c models have none):
 *
 *     System: {system}\n
 *     User: {user}\n
 *     Assistant: {assistant}\n
 *     ...
 *     Assistant:
 *
 * and "\nUser:" as an implicit stop, so the model answers one turn instead of writing both
 * sides of the dialogue.
 */
export const PLAIN_TEMPLATE_STOP = '\nUser:';

const LABEL: Record<ChatMessage['role'], string> = { system: 'System', developer: 'System', user: 'User', assistant: 'Assistant', tool: 'Tool' };

export function messageText(m: ChatMessage, index: number): string {
  if (m.content === null) return '';
  if (typeof m.content === 'string') return m.content;
  return m.content
    .map((part, k) => {
      if (part.type !== 'text' || typeof part.text !== 'string') {
        const err = new InvalidArgumentError(`messages[${index}].content[${k}]: only text parts are supported (got ${part.type})`);
        throw Object.assign(err, { param: `messages[${index}].content` });
      }
      return part.text;
    })
    .join('');
}

/** Messages for a chat template, with the generic tool description first where the template takes no tools. */
function templateMessages(messages: ChatMessage[], toolSystem: string | undefined): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = messages.map((m, i) => ({ ...m, content: messageText(m, i) + (toolSystem !== undefined && m.role === 'assistant' ? callsText(m) : '') }));
  if (toolSystem !== undefined) out.unshift({ role: 'system', content: toolSystem });
  return out;
}

export interface RenderedChat {
  prompt: string;
  /** Stop strings the template implies. */
  stop: string[];
  /** Whether the rendered text already begins with the BOS token (so the tokenizer must not add another). */
  hasBos: boolean;
}

const compiled = new WeakMap<LoadedModel, Template>();

/**
 * The model's chat template if it has one, else the plain template above. `tools` (the API's
 * tool list) goes to a template that takes it; for the plain template, `toolSystem` is the text
 * that describes them, put first as a system turn.
 */
export function renderChat(model: LoadedModel, messages: ChatMessage[], tools?: { list: unknown[]; toolSystem: string }): RenderedChat {
  const plain = messages.map((m, i) => ({ role: m.role, content: messageText(m, i) + (m.role === 'assistant' ? callsText(m) : '') }));
  if (model.chatTemplate !== undefined) {
    let t = compiled.get(model);
    if (t === undefined) {
      t = new Template(model.chatTemplate);
      compiled.set(model, t);
    }
    let prompt: string;
    try {
      prompt = t.render({
        messages: tools === undefined ? plain : templateMessages(messages, model.chatTemplate.includes('tools') ? undefined : tools.toolSystem),
        ...(tools !== undefined && model.chatTemplate.includes('tools') ? { tools: tools.list } : {}),
        add_generation_prompt: true,
        bos_token: model.specialTokens.bos,
        eos_token: model.specialTokens.eos,
      });
    } catch (e) {
      throw Object.assign(new InvalidArgumentError(`the model's chat template rejected these messages: ${(e as Error).message}`), { param: 'messages' });
    }
    return { prompt, stop: [], hasBos: model.specialTokens.bos !== '' && prompt.startsWith(model.specialTokens.bos) };
  }
  const turns = tools === undefined ? plain : [{ role: 'system' as const, content: tools.toolSystem }, ...plain];
  const lines = turns.map((m) => `${LABEL[m.role]}: ${m.content}\n`);
  return { prompt: lines.join('') + 'Assistant:', stop: [PLAIN_TEMPLATE_STOP], hasBos: false };
}
