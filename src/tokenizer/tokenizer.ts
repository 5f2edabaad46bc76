/**
 * The model's tokenizer: HF `tokenizer.json` + `tokenizer_config.json` run by
 * @huggingface/tokenizers, and the chat template from tokenizer_config.json rendered with
 * @huggingface/jinja (the same Jinja subset transformers uses).
 */
import { Template } from '@huggingface/jinja';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

export interface ChatMessage {
  readonly role: 'system' | 'user' | 'assistant';
  readonly content: string;
}

/** A tokenizer file that cannot be used, with the reason. */
export class TokenizerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenizerError';
  }
}

export class Tokenizer {
  private readonly hf: HfTokenizer;
  private readonly template: Template | null;
  /** ids of the special tokens (never produced by encoding plain text) */
  readonly specialIds: ReadonlySet<number>;
  readonly bosToken: string | null;
  readonly eosToken: string | null;

  constructor(tokenizerJson: unknown, tokenizerConfig: unknown) {
    if (typeof tokenizerJson !== 'object' || tokenizerJson === null) throw new TokenizerError('tokenizer.json is not a JSON object');
    const cfg = (typeof tokenizerConfig === 'object' && tokenizerConfig !== null ? tokenizerConfig : {}) as Record<string, unknown>;
    try {
      this.hf = new HfTokenizer(tokenizerJson, cfg);
    } catch (e) {
      throw new TokenizerError(`tokenizer.json: ${(e as Error).message}`);
    }
    const tpl = cfg.chat_template;
    this.template = typeof tpl === 'string' ? new Template(tpl) : null;
    const tokenName = (v: unknown): string | null => (typeof v === 'string' ? v : typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string' ? (v as { content: string }).content : null);
    this.bosToken = tokenName(cfg.bos_token);
    this.eosToken = tokenName(cfg.eos_token);
    this.specialIds = new Set([...this.hf.get_added_tokens_decoder().entries()].filter(([, t]) => t.special).map(([id]) => id));
  }

  /** Token ids of text; special-token strings in it are recognized (as chat templates need). */
  encode(text: string): number[] {
    return this.hf.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: readonly number[], skipSpecial = true): string {
    return this.hf.decode([...ids], { skip_special_tokens: skipSpecial });
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  get hasChatTemplate(): boolean {
    return this.template !== null;
  }

  /** The prompt text for a conversation, ending with the assistant's turn opened. */
  applyChatTemplate(messages: readonly ChatMessage[], addGenerationPrompt = true): string {
    if (!this.template) throw new TokenizerError('tokenizer_config.json has no chat_template');
    return this.template.render({ messages, add_generation_prompt: addGenerationPrompt, bos_token: this.bosToken ?? '', eos_token: this.eosToken ?? '' });
  }
}

/**
 * Decodes a growing token stream into text pieces that never split a UTF-8 character: a piece
 * is emitted only when the text decoded so far is stable (ends in no replacement character).
 */
export class StreamDecoder {
  /** ids since the last emitted piece (a character may span several byte-level tokens) */
  private pending: number[] = [];

  constructor(private readonly tok: Tokenizer) {}

  push(id: number): string {
    this.pending.push(id);
    const text = this.tok.decode(this.pending);
    if (text.endsWith('\uFFFD') && this.pending.length < 8) return '';
    this.pending = [];
    return text;
  }

  /** whatever is still pending (an incomplete character comes out as U+FFFD) */
  flush(): string {
    const text = this.pending.length ? this.tok.decode(this.pending) : '';
    this.pending = [];
    return text;
  }
}
