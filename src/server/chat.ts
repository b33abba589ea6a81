import { Template } from '@huggingface/jinja';
import { InvalidArgumentError } from '../errors.js';
import type { LoadedModel } from '../models/modeldir.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'developer' | 'tool';
  content: string | { type: string; text?: string }[] | null;
  name?: string;
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

export interface RenderedChat {
  prompt: string;
  /** Stop strings the template implies. */
  stop: string[];
  /** Whether the rendered text already begins with the BOS token (so the tokenizer must not add another). */
  hasBos: boolean;
}

const compiled = new WeakMap<LoadedModel, Template>();

/** The model's chat template if it has one, else the plain template above. */
export function renderChat(model: LoadedModel, messages: ChatMessage[]): RenderedChat {
  const plain = messages.map((m, i) => ({ role: m.role, content: messageText(m, i) }));
  if (model.chatTemplate !== undefined) {
    let t = compiled.get(model);
    if (t === undefined) {
      t = new Template(model.chatTemplate);
      compiled.set(model, t);
    }
    let prompt: string;
    try {
      prompt = t.render({ messages: plain, add_generation_prompt: true, bos_token: model.specialTokens.bos, eos_token: model.specialTokens.eos });
    } catch (e) {
      throw Object.assign(new InvalidArgumentError(`the model's chat template rejected these messages: ${(e as Error).message}`), { param: 'messages' });
    }
    return { prompt, stop: [], hasBos: model.specialTokens.bos !== '' && prompt.startsWith(model.specialTokens.bos) };
  }
  const lines = plain.map((m) => `${LABEL[m.role]}: ${m.content}\n`);
  return { prompt: lines.join('') + 'Assistant:', stop: [PLAIN_TEMPLATE_STOP], hasBos: false };
}
