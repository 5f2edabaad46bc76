/**
 * Byte-level BPE encoding in the runtime's AssemblyScript module (as/bpe.ts): the pre-tokenizer
 * split as a state machine and the merges by rank, over UTF-8 bytes in the module's own memory.
 * For tokenizer.json files whose encoding it reproduces exactly: a BPE model, no normalizer, and
 * either GPT-2's split (the ByteLevel pre-tokenizer with its regex, no prefix space) or Kimi's
 * (a Split on KIMI_PATTERN, isolated, then ByteLevel without its regex), merges ignored for
 * whole pieces in the vocabulary or not; Tokenizer uses @huggingface/tokenizers for the rest. Added tokens are split off
 * here first, as @huggingface/tokenizers does: the longest one starting at the leftmost
 * position, with their lstrip/rstrip.
 */
import { instantiateRuntimeModule, runtimeModuleInstalled } from '../engine/as-module.js';
import { byteToUnicode, KIMI_PATTERN } from './byte-level.js';

interface BpeExports {
  init(classes: number, byteIds: number, keys: number, vals: number, cap: number, work: number, workSymbols: number, pieceCache: number): void;
  cacheBytes(): number;
  workBytes(n: number): number;
  encode(t: number, n: number, out: number, p: number, c: number): number;
  stoppedCount(): number;
  pieceEnd(t: number, p: number, n: number): number;
  initPieces(tokens: number, count: number, table: number, tableCap: number, kimiSplit: number): void;
  initMerges(triples: number, count: number): void;
}

interface AddedToken {
  content: string;
  id: number;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
}

interface PreTokenizerLike {
  type?: string;
  add_prefix_space?: boolean;
  use_regex?: boolean;
  pattern?: { Regex?: string };
  behavior?: string;
  invert?: boolean;
  pretokenizers?: PreTokenizerLike[];
}

interface TokenizerJsonLike {
  normalizer?: unknown;
  post_processor?: { type?: string } | null;
  pre_tokenizer?: PreTokenizerLike | null;
  model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[]; dropout?: unknown; byte_fallback?: boolean; ignore_merges?: boolean; continuing_subword_prefix?: string | null; end_of_word_suffix?: string | null; unk_token?: string | null };
  added_tokens?: AddedToken[];
}

// as/bpe.ts's flags; 0 = not classified yet
const F_S = 1, F_L = 2, F_N = 4, F_HAN = 8, F_U = 16, F_LC = 32, F_WS = 64, F_KNOWN = 128;
const RE = {
  s: /\s/u, l: /\p{L}/u, n: /\p{N}/u, han: /\p{Script=Han}/u, ws: /\p{White_Space}/u,
  u: /[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]/u, lc: /[\p{Ll}\p{Lm}\p{Lo}\p{M}]/u,
};
/** what the host's regular expressions say a code point is: the split follows them exactly */
function classOf(cp: number): number {
  const ch = String.fromCodePoint(cp);
  const han = RE.han.test(ch);
  return F_KNOWN | (RE.s.test(ch) ? F_S : 0) | (RE.l.test(ch) ? F_L : 0) | (RE.n.test(ch) ? F_N : 0) | (han ? F_HAN : 0) |
    (!han && RE.u.test(ch) ? F_U : 0) | (!han && RE.lc.test(ch) ? F_LC : 0) | (RE.ws.test(ch) ? F_WS : 0);
}

/** Which split the pre-tokenizer is, where as/bpe.ts has it: 'gpt2', 'kimi' or null. */
function splitOf(pt: PreTokenizerLike | null | undefined): 'gpt2' | 'kimi' | null {
  if (!pt) return null;
  if (pt.type === 'ByteLevel') return !pt.add_prefix_space && pt.use_regex !== false ? 'gpt2' : null;
  const [a, b, ...rest] = pt.type === 'Sequence' ? (pt.pretokenizers ?? []) : [];
  if (rest.length || !a || !b) return null;
  const isolated = a.type === 'Split' && a.pattern?.Regex === KIMI_PATTERN && a.behavior === 'Isolated' && !a.invert;
  return isolated && b.type === 'ByteLevel' && !b.add_prefix_space && b.use_regex === false ? 'kimi' : null;
}

const CLASSES_BYTES = 0x110000;
const PAGE = 65536;

export class FastBpe {
  private readonly memory: WebAssembly.Memory;
  private readonly fns: BpeExports;
  private readonly classes: number;
  private readonly byteIds: number;
  private readonly keys: number;
  private readonly vals: number;
  private readonly cap: number;
  private readonly cache: number;
  private dyn: number; // then the text, its ids and the scratch, laid out by layout()
  private textCap = 0;
  private workSymbols = 0;
  private textAt = 0;
  private idsAt = 0;
  private readonly unk: number | null;
  private readonly vocabSize: number;
  private readonly added: Map<number, AddedToken[]>; // first UTF-16 unit -> tokens, longest first
  private readonly addedByContent: Map<string, AddedToken>;
  // for decode(): each id's string as @huggingface/tokenizers has it (the vocabulary's, added
  // tokens' contents over them), the unknown token's, and byte-level characters -> bytes
  private readonly idString: (string | undefined)[] = [];
  private readonly unkString: string | undefined;
  private readonly u2b: Map<string, number>;
  private readonly decodesBytes: boolean;
  private readonly dec = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
  private readonly enc = new TextEncoder();

  /** The fast encoder for this tokenizer.json, or null where it would not give the same ids. */
  static from(tj: unknown): FastBpe | null {
    if (!runtimeModuleInstalled() || typeof tj !== 'object' || tj === null) return null;
    const t = tj as TokenizerJsonLike;
    const m = t.model, pt = t.pre_tokenizer;
    if (t.normalizer != null || !m || m.type !== 'BPE' || !m.vocab || !Array.isArray(m.merges)) return null;
    if (m.dropout != null || m.byte_fallback || m.continuing_subword_prefix || m.end_of_word_suffix) return null;
    if (!splitOf(pt)) return null;
    // encode() asks for no special tokens: a post-processor other than ByteLevel's (offsets only) might still add some
    if (t.post_processor != null && t.post_processor.type !== 'ByteLevel') return null;
    return new FastBpe(t);
  }

  private constructor(t: TokenizerJsonLike) {
    const m = t.model!;
    const vocab = new Map(Object.entries(m.vocab!));
    let V = 0;
    for (const id of vocab.values()) V = Math.max(V, id + 1);
    for (const a of t.added_tokens ?? []) V = Math.max(V, a.id + 1);
    this.vocabSize = V;
    this.unk = m.unk_token != null ? (vocab.get(m.unk_token) ?? null) : null;
    this.unkString = m.unk_token ?? undefined;
    for (const [tok, id] of vocab) this.idString[id] = tok;
    for (const a of t.added_tokens ?? []) this.idString[a.id] = a.content;
    this.decodesBytes = (t as { decoder?: { type?: string } | null }).decoder?.type === 'ByteLevel';
    const b2u = byteToUnicode();
    this.u2b = new Map(b2u.map((ch, b) => [ch, b]));
    // merges as (left id, right id) -> (rank, merged id); a merged string the vocabulary lacks
    // gets an id past it, dropped from the output as @huggingface/tokenizers drops it
    const extra = new Map<string, number>();
    const idOf = (s: string): number => vocab.get(s) ?? extra.get(s) ?? (extra.set(s, V + extra.size), V + extra.size - 1);
    const merges = m.merges!.map((x) => (Array.isArray(x) ? x : (x.split(' ', 2) as [string, string])));
    let cap = 1;
    while (cap < 2 * merges.length + 2) cap <<= 1;
    this.classes = 0;
    const byteIds = CLASSES_BYTES, keys = byteIds + 256 * 4, vals = keys + cap * 8;
    this.byteIds = byteIds;
    this.keys = keys;
    this.vals = vals;
    this.cap = cap;
    // the module's functions are needed for the cache's size: a one-page memory first, grown below
    this.memory = new WebAssembly.Memory({ initial: 1 });
    this.fns = instantiateRuntimeModule<BpeExports>(this.memory)!;
    this.cache = vals + cap * 8;
    this.dyn = this.cache + this.fns.cacheBytes();
    this.memory.grow(Math.ceil((this.dyn + PAGE) / PAGE) - 1);
    const cls = new Uint8Array(this.memory.buffer, this.classes, CLASSES_BYTES);
    for (let c = 0; c < 128; c++) cls[c] = classOf(c);
    // ignore_merges: the vocabulary's tokens as bytes, for the whole-piece lookup
    const split = splitOf(t.pre_tokenizer);
    let pieces = { tokens: 0, count: 0, table: 0, cap: 0 };
    if (m.ignore_merges) {
      const u2b = this.u2b;
      const entries = [...vocab].map(([tok, id]) => ({ id, bytes: Uint8Array.from(Array.from(tok, (ch) => u2b.get(ch) ?? 0)) }));
      let blobBytes = 0;
      for (const e of entries) blobBytes += (8 + e.bytes.length + 3) & ~3;
      let tcap = 1;
      while (tcap < 2 * entries.length + 2) tcap <<= 1;
      const tokens = this.dyn, table = (tokens + blobBytes + 15) & ~15;
      this.dyn = table + 16 * tcap;
      this.memory.grow(Math.max(0, Math.ceil((this.dyn + PAGE) / PAGE) - this.memory.buffer.byteLength / PAGE));
      const dv = new DataView(this.memory.buffer);
      const u8 = new Uint8Array(this.memory.buffer);
      let off = tokens;
      for (const e of entries) {
        dv.setUint32(off, e.bytes.length, true);
        dv.setUint32(off + 4, e.id, true);
        u8.set(e.bytes, off + 8);
        off += (8 + e.bytes.length + 3) & ~3;
      }
      pieces = { tokens, count: entries.length, table, cap: tcap };
    }
    this.fns.initPieces(pieces.tokens, pieces.count, pieces.table, pieces.cap, split === 'kimi' ? 1 : 0);
    const bid = new Int32Array(this.memory.buffer, byteIds, 256);
    for (let b = 0; b < 256; b++) bid[b] = idOf(b2u[b]!); // a byte the vocabulary lacks still merges, as a string does there
    // the merges as (left, right, merged) triples in rank order, hashed into the table by the
    // module; the triples sit where the text will go, which layout() below claims after this
    const triples = new Int32Array(3 * merges.length);
    merges.forEach(([a, b], r) => {
      triples[3 * r] = idOf(a);
      triples[3 * r + 1] = idOf(b);
      triples[3 * r + 2] = idOf(a + b);
    });
    this.memory.grow(Math.max(0, Math.ceil((this.dyn + triples.byteLength + PAGE) / PAGE) - this.memory.buffer.byteLength / PAGE));
    new Int32Array(this.memory.buffer, this.dyn, triples.length).set(triples);
    this.fns.init(this.classes, byteIds, keys, vals, cap, 0, 0, this.cache);
    this.fns.initMerges(this.dyn, merges.length);
    this.added = new Map();
    this.addedByContent = new Map();
    for (const a of [...(t.added_tokens ?? [])].sort((x, y) => y.content.length - x.content.length)) {
      if (!a.content) continue;
      const k = a.content.charCodeAt(0);
      if (!this.added.has(k)) this.added.set(k, []);
      this.added.get(k)!.push(a);
      this.addedByContent.set(a.content, a);
    }
    this.layout(4096, 4096);
  }

  /** Room for a text of textCap UTF-8 bytes (its ids after it) and pieces of `symbols` bytes. */
  private layout(textCap: number, symbols: number): void {
    if (textCap <= this.textCap && symbols <= this.workSymbols) return;
    this.textCap = Math.max(textCap, this.textCap);
    this.workSymbols = Math.max(symbols, this.workSymbols);
    this.textAt = this.dyn;
    this.idsAt = (this.textAt + this.textCap + 7) & ~7;
    const work = this.idsAt + 4 * this.textCap;
    const end = work + this.fns.workBytes(this.workSymbols);
    const need = Math.ceil(end / PAGE) - this.memory.buffer.byteLength / PAGE;
    if (need > 0) this.memory.grow(need);
    this.fns.init(this.classes, this.byteIds, this.keys, this.vals, this.cap, work, this.workSymbols, this.cache);
  }

  /**
   * Text of token ids as @huggingface/tokenizers decodes them with a ByteLevel decoder (null when
   * the tokenizer has another decoder): unknown ids dropped, special ones too when asked, added
   * tokens as their text, runs of other tokens as their bytes through TextDecoder, then its
   * clean-up of spaces before punctuation if the config asks for it.
   */
  decode(ids: readonly number[], skipSpecial: boolean, special: ReadonlySet<string>, cleanUp: boolean): string | null {
    if (!this.decodesBytes) return null;
    let text = '';
    let run: number[] = [];
    const flush = () => {
      if (run.length) text += this.dec.decode(Uint8Array.from(run));
      run = [];
    };
    for (const id of ids) {
      const s = this.idString[id] ?? this.unkString;
      if (s === undefined || (skipSpecial && special.has(s))) continue;
      if (this.addedByContent.has(s)) {
        flush();
        text += s;
        continue;
      }
      for (const ch of s) run.push(this.u2b.get(ch) ?? 0);
    }
    flush();
    return cleanUp ? cleanUpSpaces(text) : text;
  }

  /** Token ids of text: added tokens split off, the rest through the AssemblyScript encoder. */
  encode(text: string): number[] {
    const out: number[] = [];
    for (const part of this.splitAdded(text)) {
      if (typeof part !== 'string') out.push(part.id);
      else if (part.length) this.encodePlain(part, out);
    }
    return out;
  }

  /** Sections of text and the added tokens between them (lstrip/rstrip applied to neighbours). */
  private splitAdded(text: string): (string | AddedToken)[] {
    if (!this.added.size) return [text];
    const parts: (string | AddedToken)[] = [];
    let start = 0;
    for (let i = 0; i < text.length; ) {
      const cands = this.added.get(text.charCodeAt(i));
      const hit = cands?.find((a) => text.startsWith(a.content, i));
      if (!hit) {
        i++;
        continue;
      }
      if (i > start) parts.push(text.slice(start, i));
      parts.push(hit);
      i += hit.content.length;
      start = i;
    }
    if (start < text.length) parts.push(text.slice(start));
    parts.forEach((p, i) => {
      if (typeof p === 'string') return;
      if (p.lstrip && i > 0 && typeof parts[i - 1] === 'string') parts[i - 1] = (parts[i - 1] as string).trimEnd();
      if (p.rstrip && i + 1 < parts.length && typeof parts[i + 1] === 'string') parts[i + 1] = (parts[i + 1] as string).trimStart();
    });
    return parts;
  }

  private encodePlain(text: string, out: number[]): void {
    // classes for the code points this text holds that none before it did
    const cls = new Uint8Array(this.memory.buffer, this.classes, CLASSES_BYTES);
    for (let i = 0; i < text.length; i++) {
      let c = text.charCodeAt(i);
      if (c < 0x80) continue;
      if (c >= 0xd800 && c <= 0xdfff) {
        const d = text.charCodeAt(i + 1);
        if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
          c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          i++;
        } else c = 0xfffd; // a lone surrogate: TextEncoder writes U+FFFD
      }
      if (!cls[c]) cls[c] = classOf(c);
    }
    this.layout(3 * text.length, 0);
    const { written } = this.enc.encodeInto(text, new Uint8Array(this.memory.buffer, this.textAt, this.textCap));
    let r = this.fns.encode(this.textAt, written, this.idsAt, 0, 0);
    while (r < 0) {
      // a piece longer than the scratch: grow it (the text and its ids stay put) and go on
      const q = -r - 1, c = this.fns.stoppedCount();
      this.layout(0, this.fns.pieceEnd(this.textAt, q, written) - q);
      r = this.fns.encode(this.textAt, written, this.idsAt, q, c);
    }
    const got = new Int32Array(this.memory.buffer, this.idsAt, r);
    for (let i = 0; i < r; i++) {
      const id = got[i]!;
      // a merged string or a byte the vocabulary lacks: dropped, or the unknown token
      if (id >= 0 && id < this.vocabSize) out.push(id);
      else if (this.unk !== null) out.push(this.unk);
    }
  }
}

/** The spaces a word-level tokenizer leaves before punctuation and English contractions, removed. */
function cleanUpSpaces(t: string): string {
  for (const [from, to] of [[' .', '.'], [' ?', '?'], [' !', '!'], [' ,', ','], [" ' ", "'"], [" n't", "n't"], [" 'm", "'m"], [" 's", "'s"], [" 've", "'ve"], [" 're", "'re"]] as const) t = t.replaceAll(from, to);
  return t;
}
