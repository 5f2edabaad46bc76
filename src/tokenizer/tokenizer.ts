/**
 * The model's tokenizer: HF `tokenizer.json` + `tokenizer_config.json` run by
 * @huggingface/tokenizers, and the chat template from tokenizer_config.json rendered with
 * @huggingface/jinja (the same Jinja subset transformers uses).
 */
import { Template } from '@huggingface/jinja';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { fnv1a64, fnvHex } from '../util/fnv.js';
import { FastBpe } from './fast-bpe.js';
import { yieldToEventLoop } from '../util/yield.js';
import { byteToUnicode } from './byte-level.js';

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
  /** byte-level vocabularies: the character -> byte table their token strings are spelled in */
  private readonly byteOf: ReadonlyMap<string, number> | null;
  /** the text of the added tokens that decode() keeps (the non-special ones), by id */
  private readonly addedText: ReadonlyMap<number, string>;
  /** bytes of the longest token (a prompt of b bytes has at least b / this many tokens) */
  readonly maxTokenBytes: number;
  private readonly sources: [unknown, unknown];
  private fp: string | null = null;
  /** the AssemblyScript encoder, where it gives exactly @huggingface/tokenizers' ids */
  private readonly fast: FastBpe | null;
  private readonly specialStrings: ReadonlySet<string>;
  private readonly cleanUp: boolean;
  /** an added token that holds a place encodeAsync() would cut at would be cut in two */
  private readonly cutUnsafe: boolean;

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
    const added = [...this.hf.get_added_tokens_decoder().entries()];
    this.specialIds = new Set(added.filter(([, t]) => t.special).map(([id]) => id));
    this.addedText = new Map(added.filter(([, t]) => !t.special).map(([id, t]) => [id, t.content]));
    const tj = tokenizerJson as { decoder?: { type?: string }; model?: { vocab?: Record<string, number> }; added_tokens?: { content?: string }[] };
    this.byteOf = tj.decoder?.type === 'ByteLevel' ? new Map(byteToUnicode().map((ch, b) => [ch, b])) : null;
    let longest = 1;
    for (const t of Object.keys(tj.model?.vocab ?? {})) longest = Math.max(longest, this.byteOf ? [...t].length : new TextEncoder().encode(t).length);
    for (const a of tj.added_tokens ?? []) longest = Math.max(longest, new TextEncoder().encode(a.content ?? '').length);
    this.maxTokenBytes = longest;
    this.sources = [tokenizerJson, cfg];
    this.fast = FastBpe.from(tokenizerJson);
    // what @huggingface/tokenizers' decode skips and whether it cleans up spaces
    const extra = Array.isArray(cfg.additional_special_tokens) ? cfg.additional_special_tokens.filter((x): x is string => typeof x === 'string') : [];
    this.specialStrings = new Set([...added.filter(([, t]) => t.special).map(([, t]) => t.content), ...extra]);
    this.cleanUp = Boolean(cfg.clean_up_tokenization_spaces ?? true);
    this.cutUnsafe = added.some(([, t]) => nextCut(t.content, 0) >= 0);
  }

  /**
   * A fingerprint of this tokenizer (FNV-1a 64 of its tokenizer.json and tokenizer_config.json
   * as JSON, hex): two servers with the same one turn the same request into the same ids, so a
   * router's ids can travel with the request it forwards. An identity check, not a signature.
   * Computed once, on first use.
   */
  get fingerprint(): string {
    if (this.fp === null) {
      let h: [number, number] | undefined;
      const enc = new TextEncoder();
      for (const part of this.sources) h = fnv1a64(enc.encode(JSON.stringify(part) ?? ''), h);
      this.fp = fnvHex(h!);
    }
    return this.fp;
  }

  /**
   * The bytes a token stands for in a byte-level vocabulary (special tokens: none, as decode()
   * skips them; other added tokens: their text), or null where the vocabulary is not byte-level.
   */
  tokenBytes(id: number): Uint8Array | null {
    if (!this.byteOf) return null;
    if (this.specialIds.has(id)) return new Uint8Array(0);
    const text = this.addedText.get(id);
    if (text !== undefined) return new TextEncoder().encode(text);
    const t = this.hf.id_to_token(id);
    if (t === undefined || t === null) return new Uint8Array(0);
    const out = new Uint8Array(t.length);
    let n = 0;
    for (const ch of t) {
      const b = this.byteOf.get(ch);
      if (b === undefined) return new TextEncoder().encode(t); // not spelled in the byte table
      out[n++] = b;
    }
    return out.subarray(0, n);
  }

  /** Token ids of text; special-token strings in it are recognized (as chat templates need). */
  encode(text: string): number[] {
    return this.fast ? this.fast.encode(text) : this.hf.encode(text, { add_special_tokens: false }).ids;
  }

  /**
   * encode() for long texts without holding the event loop: the text is cut into pieces of about
   * `chunkChars` UTF-16 units, each encoded on its own with a turn of the event loop between
   * them. A cut goes just before a space that precedes a letter, where both of the AssemblyScript
   * encoder's splits (GPT-2's, Kimi's) always end a piece, so the ids are encode()'s; tokenizers
   * it does not run, and texts no such place cuts, are encoded in one go.
   */
  async encodeAsync(text: string, chunkChars = 1 << 18): Promise<number[]> {
    if (!this.fast || text.length <= chunkChars || this.cutUnsafe) return this.encode(text);
    const out: number[] = [];
    let start = 0;
    while (start < text.length) {
      let cut = text.length;
      if (text.length - start > chunkChars) {
        const at = nextCut(text, start + chunkChars);
        cut = at < 0 ? text.length : at;
      }
      for (const id of this.fast.encode(text.slice(start, cut))) out.push(id);
      start = cut;
      if (start < text.length) await yieldToEventLoop();
    }
    return out;
  }

  /** an added token that holds a cut place itself would be cut in two */

  /** Whether encode() runs the AssemblyScript encoder (as/bpe.ts) rather than @huggingface/tokenizers. */
  get fastEncoder(): boolean {
    return this.fast !== null;
  }

  decode(ids: readonly number[], skipSpecial = true): string {
    if (!ids.length) return ''; // @huggingface/tokenizers throws on an empty list (found by fuzzing)
    return this.fast?.decode(ids, skipSpecial, this.specialStrings, this.cleanUp) ?? this.hf.decode([...ids], { skip_special_tokens: skipSpecial });
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
 * Decodes a growing token stream into text pieces that never split a UTF-8 character. With a
 * byte-level vocabulary it decodes the tokens' bytes as a UTF-8 stream: complete characters come
 * out at once, an incomplete one waits for its next bytes, and invalid bytes become U+FFFD where
 * they stand, however many come before a valid character. Otherwise a piece is emitted when the
 * text decoded so far ends in no replacement character.
 */
export class StreamDecoder {
  /** ids since the last emitted piece (a character may span several tokens) */
  private pending: number[] = [];
  private readonly utf8 = new TextDecoder('utf-8');

  constructor(private readonly tok: Tokenizer) {}

  push(id: number): string {
    const bytes = this.tok.tokenBytes(id);
    if (bytes) return this.utf8.decode(bytes, { stream: true });
    this.pending.push(id);
    const text = this.tok.decode(this.pending);
    if (text.endsWith('\uFFFD') && this.pending.length < 8) return '';
    this.pending = [];
    return text;
  }

  /** whatever is still pending (an incomplete character comes out as U+FFFD) */
  flush(): string {
    const text = (this.pending.length ? this.tok.decode(this.pending) : '') + this.utf8.decode();
    this.pending = [];
    return text;
  }
}

const LETTER = /\p{L}/u;

/** The first place at or after `from` that is a space followed by a letter, or -1. */
function nextCut(text: string, from: number): number {
  for (let i = text.indexOf(' ', from); i >= 0 && i + 1 < text.length; i = text.indexOf(' ', i + 1)) {
    const c = text.charCodeAt(i + 1);
    if ((c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x80 && LETTER.test(String.fromCodePoint(text.codePointAt(i + 1)!)))) return i;
  }
  return -1;
}
