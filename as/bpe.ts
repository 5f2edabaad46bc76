// Byte-level BPE encoding (AssemblyScript): the pre-tokenizer split (GPT-2's pattern or Kimi's),
// written as a state machine instead of a regular expression, then the merges by rank with a
// heap. The tables are laid out by src/tokenizer/fast-bpe.ts in this module's memory; every
// pointer is a byte offset.
//
// Character classes come from the host: `classes` holds one byte of flags per code point
// (0x110000 of them), filled by the caller from its own regular-expression engine before each
// call for the code points the text holds, so the split is the one @huggingface/tokenizers'
// patterns give in the same runtime.

const F_S: u8 = 1; // JavaScript's \s (GPT-2's pattern)
const F_L: u8 = 2; // \p{L}
const F_N: u8 = 4; // \p{N}
const F_HAN: u8 = 8; // \p{Script=Han}
const F_U: u8 = 16; // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], not Han
const F_LC: u8 = 32; // [\p{Ll}\p{Lm}\p{Lo}\p{M}], not Han
const F_WS: u8 = 64; // \p{White_Space} (Kimi's pattern; not quite \s)

const CLS_OTHER: u8 = 1; // GPT-2's classes: not whitespace, letter or number
const CLS_LETTER: u8 = 2;
const CLS_NUMBER: u8 = 3;
const CLS_SPACE: u8 = 4;

// tables, set once by init()
let classes: usize = 0;
let byteIds: usize = 0; // [256] i32: the token of each single byte
let mergeKeys: usize = 0; // [cap] u64: (left + 1) << 32 | right, 0 = empty
let mergeVals: usize = 0; // [cap] u64: rank << 32 | merged id
let mergeMask: u32 = 0;
let scratch: usize = 0; // per-word work arrays, sized for maxWord symbols
let maxWord: i32 = 0;
let kimi: bool = false; // Kimi's split instead of GPT-2's
let vocab: usize = 0; // for ignore_merges: [vocabCap] of u64 hash, u32 blob offset, u32 id (0 = none)
let vocabMask: u32 = 0;
let blob: usize = 0; // the vocabulary's tokens: u32 length, u32 id, bytes, padded to 4
let cache: usize = 0; // CACHE_SLOTS entries of pieces up to 32 bytes and their ids (up to 8)

// a piece seen before is looked up instead of merged again (English repeats its words): each
// slot holds u32 hash, i32 bytes, i32 ids, 4 spare, 32 bytes of the piece, 8 i32 ids
const CACHE_SLOTS: u32 = 65536;
const SLOT: usize = 80;

/** Bytes of the piece cache. */
export function cacheBytes(): i32 {
  return <i32>(<usize>CACHE_SLOTS * SLOT);
}

/**
 * Whole-piece lookup for ignore_merges (a piece that is a token is that token): `tokens` of
 * `count` entries (u32 length, u32 id, bytes, padded to 4) hashed into `table` of `tableCap`
 * (a power of two) 16-byte slots. kimiSplit selects Kimi's pre-tokenizer pattern.
 */
export function initPieces(tokens: usize, count: i32, table: usize, tableCap: u32, kimiSplit: bool): void {
  kimi = kimiSplit;
  blob = tokens;
  vocab = table;
  vocabMask = tableCap - 1;
  if (!table) return;
  let off: usize = 0;
  for (let i = 0; i < count; i++) {
    const len = load<u32>(tokens + off), id = load<u32>(tokens + off, 4);
    const h = bytesHash(tokens + off + 8, <i32>len);
    let slot = <u32>h & vocabMask;
    while (load<u64>(table + (<usize>slot << 4)) != 0) slot = (slot + 1) & vocabMask;
    store<u64>(table + (<usize>slot << 4), h);
    store<u32>(table + (<usize>slot << 4), <u32>off, 8);
    store<u32>(table + (<usize>slot << 4), id, 12);
    off += (8 + <usize>len + 3) & ~3;
  }
}

/** FNV-1a 64 of bytes, never 0 (0 marks an empty slot). */
function bytesHash(p: usize, n: i32): u64 {
  let h: u64 = 0xcbf29ce484222325;
  for (let i = 0; i < n; i++) h = (h ^ <u64>load<u8>(p + <usize>i)) * 0x100000001b3;
  return h | 1;
}

/** The token that is exactly these bytes, or -1. */
function pieceId(p: usize, n: i32): i32 {
  const h = bytesHash(p, n);
  let slot = <u32>h & vocabMask;
  while (true) {
    const k = load<u64>(vocab + (<usize>slot << 4));
    if (k == 0) return -1;
    if (k == h) {
      const off = <usize>load<u32>(vocab + (<usize>slot << 4), 8);
      if (load<u32>(blob + off) == <u32>n && memory.compare(blob + off + 8, p, <usize>n) == 0) return <i32>load<u32>(blob + off, 4);
    }
    slot = (slot + 1) & vocabMask;
  }
}

export function init(cls: usize, bytes: usize, keys: usize, vals: usize, cap: u32, work: usize, workSymbols: i32, pieceCache: usize): void {
  cache = pieceCache;
  classes = cls;
  byteIds = bytes;
  mergeKeys = keys;
  mergeVals = vals;
  mergeMask = cap - 1;
  scratch = work;
  maxWord = workSymbols;
}

/**
 * Fills the merge table (after init) from `count` triples of i32 (left id, right id, merged id)
 * in rank order; a pair listed twice keeps its last rank, as @huggingface/tokenizers' rank map
 * does.
 */
export function initMerges(triples: usize, count: i32): void {
  for (let r = 0; r < count; r++) {
    const p = triples + <usize>r * 12;
    const k = ((<u64>(load<i32>(p) + 1)) << 32) | <u64><u32>load<i32>(p, 4);
    let h = hash(k) & mergeMask;
    while (true) {
      const s = load<u64>(mergeKeys + (<usize>h << 3));
      if (s == 0 || s == k) break;
      h = (h + 1) & mergeMask;
    }
    store<u64>(mergeKeys + (<usize>h << 3), k);
    store<u64>(mergeVals + (<usize>h << 3), ((<u64>r) << 32) | <u64><u32>load<i32>(p, 8));
  }
}

/** Bytes of scratch a word of n symbols needs. */
export function workBytes(n: i32): i32 {
  // four i32 arrays, and a heap of at most 3n entries of 16 bytes (n - 1 first pairs, two a merge)
  return n * 16 + n * 48 + 64;
}

// @ts-ignore: decorator
@inline function hash(k: u64): u32 {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccd;
  k ^= k >> 33;
  return <u32>k;
}

/** rank << 32 | merged id of the pair (a, b), or -1. */
// @ts-ignore: decorator
@inline function lookup(a: i32, b: i32): i64 {
  const k = ((<u64>(a + 1)) << 32) | <u64><u32>b;
  let h = hash(k) & mergeMask;
  while (true) {
    const s = load<u64>(mergeKeys + (<usize>h << 3));
    if (s == 0) return -1;
    if (s == k) return <i64>load<u64>(mergeVals + (<usize>h << 3));
    h = (h + 1) & mergeMask;
  }
}

/** The code point at p (valid UTF-8, as TextEncoder writes it) and its length, packed len << 24 | cp. */
// @ts-ignore: decorator
@inline function decode(p: usize): u32 {
  const b0 = <u32>load<u8>(p);
  if (b0 < 0x80) return (1 << 24) | b0;
  if (b0 < 0xe0) return (2 << 24) | ((b0 & 0x1f) << 6) | (<u32>load<u8>(p, 1) & 0x3f);
  if (b0 < 0xf0) return (3 << 24) | ((b0 & 0x0f) << 12) | ((<u32>load<u8>(p, 1) & 0x3f) << 6) | (<u32>load<u8>(p, 2) & 0x3f);
  return (4 << 24) | ((b0 & 0x07) << 18) | ((<u32>load<u8>(p, 1) & 0x3f) << 12) | ((<u32>load<u8>(p, 2) & 0x3f) << 6) | (<u32>load<u8>(p, 3) & 0x3f);
}

// @ts-ignore: decorator
@inline function flags(cp: u32): u8 {
  return load<u8>(classes + <usize>cp);
}

/** GPT-2's class of a code point */
// @ts-ignore: decorator
@inline function cls(cp: u32): u8 {
  const f = flags(cp);
  return f & F_S ? CLS_SPACE : f & F_L ? CLS_LETTER : f & F_N ? CLS_NUMBER : CLS_OTHER;
}

/** Where the run of code points of class c starting at p ends. */
function runEnd(t: usize, p: i32, n: i32, c: u8): i32 {
  while (p < n) {
    const d = decode(t + <usize>p);
    if (cls(d & 0xffffff) != c) break;
    p += <i32>(d >> 24);
  }
  return p;
}

/**
 * The end of the piece starting at p under GPT-2's pattern
 * 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * (alternatives tried in order, the first that matches wins).
 */
function gpt2Piece(t: usize, p: i32, n: i32): i32 {
  const b = load<u8>(t + <usize>p);
  if (b == 0x27 && p + 1 < n) {
    const c1 = load<u8>(t + <usize>p + 1);
    if (c1 == 0x73 || c1 == 0x74 || c1 == 0x6d || c1 == 0x64) return p + 2; // 's 't 'm 'd
    if (p + 2 < n) {
      const c2 = load<u8>(t + <usize>p + 2);
      if ((c1 == 0x72 && c2 == 0x65) || (c1 == 0x76 && c2 == 0x65) || (c1 == 0x6c && c2 == 0x6c)) return p + 3; // 're 've 'll
    }
  }
  const d0 = decode(t + <usize>p);
  const c0 = cls(d0 & 0xffffff);
  if (c0 != CLS_SPACE) return runEnd(t, p, n, c0); // \p{L}+, \p{N}+ or [^\s\p{L}\p{N}]+
  const l0 = <i32>(d0 >> 24);
  // a space before a letter, number or other character joins it
  if (b == 0x20 && p + 1 < n) {
    const c1 = cls(decode(t + <usize>p + 1) & 0xffffff);
    if (c1 != CLS_SPACE) return runEnd(t, p + 1, n, c1);
  }
  // whitespace: all of it at the end of the text; before anything else, all but its last
  // character (\s+(?!\S)), or that one character alone (\s+)
  let q = p + l0, last = p;
  while (q < n) {
    const d = decode(t + <usize>q);
    if (cls(d & 0xffffff) != CLS_SPACE) break;
    last = q;
    q += <i32>(d >> 24);
  }
  if (q >= n) return q;
  return last > p ? last : q;
}

// ---------------------------------------------------------------- Kimi's pattern
// [\p{Han}]+
// | P? U* Lc+ C?      P = [^\r\n\p{L}\p{N}], U and Lc the letter classes above, C = (?i:'s|'t|'re|'ve|'m|'ll|'d)
// | P? U+ Lc* C?
// | \p{N}{1,3}
// |  ?[^\s\p{L}\p{N}]+[\r\n]*
// | \s*[\r\n]+ | \s+(?!\S) | \s+         (\s here is \p{White_Space})
// Alternatives are tried in order and the first that matches wins, each with the regular
// expression's greedy-then-backtrack choices; text no alternative matches is a piece of its own.

// @ts-ignore: decorator
@inline function cpAt(t: usize, p: i32): u32 {
  return decode(t + <usize>p) & 0xffffff;
}

// @ts-ignore: decorator
@inline function nextAt(t: usize, p: i32): i32 {
  return p + <i32>(decode(t + <usize>p) >> 24);
}

/** The start of the code point before p (UTF-8: skip continuation bytes). */
function prevAt(t: usize, p: i32): i32 {
  p--;
  while (p > 0 && (load<u8>(t + <usize>p) & 0xc0) == 0x80) p--;
  return p;
}

function isOther(cp: u32): bool {
  return !(flags(cp) & (F_WS | F_L | F_N));
}

function isP(cp: u32): bool {
  return cp != 0x0d && cp != 0x0a && !(flags(cp) & (F_L | F_N));
}

/** End of the run of code points having flag f, from p. */
function flagRun(t: usize, p: i32, n: i32, f: u8): i32 {
  while (p < n && flags(cpAt(t, p)) & f) p = nextAt(t, p);
  return p;
}

/** C?: a case-insensitive contraction at p, or p. */
function contraction(t: usize, p: i32, n: i32): i32 {
  if (p + 1 >= n || load<u8>(t + <usize>p) != 0x27) return p;
  const a = load<u8>(t + <usize>p + 1) | 0x20;
  if (a == 0x73 || a == 0x74 || a == 0x6d || a == 0x64) return p + 2;
  if (p + 2 < n) {
    const b = load<u8>(t + <usize>p + 2) | 0x20;
    if ((a == 0x72 && b == 0x65) || (a == 0x76 && b == 0x65) || (a == 0x6c && b == 0x6c)) return p + 3;
  }
  return p;
}

/** U* Lc+ from q: the end, or -1. U* is greedy and gives back one character at a time. */
function uStarLPlus(t: usize, q: i32, n: i32): i32 {
  const uEnd = flagRun(t, q, n, F_U);
  let j = uEnd;
  while (true) {
    const e = flagRun(t, j, n, F_LC);
    if (e > j) return e;
    if (j == q) return -1;
    j = prevAt(t, j);
  }
}

function kimiPiece(t: usize, p: i32, n: i32): i32 {
  const c0 = cpAt(t, p), f0 = flags(c0), p1 = nextAt(t, p);
  if (f0 & F_HAN) return flagRun(t, p, n, F_HAN);
  // P? U* Lc+ C?, then P? U+ Lc* C?: with the optional P first, then without
  if (isP(c0) && p1 < n) {
    const e = uStarLPlus(t, p1, n);
    if (e >= 0) return contraction(t, e, n);
  }
  const e2 = uStarLPlus(t, p, n);
  if (e2 >= 0) return contraction(t, e2, n);
  if (isP(c0) && p1 < n && flags(cpAt(t, p1)) & F_U) return contraction(t, flagRun(t, flagRun(t, p1, n, F_U), n, F_LC), n);
  if (f0 & F_U) return contraction(t, flagRun(t, flagRun(t, p, n, F_U), n, F_LC), n);
  if (f0 & F_N) {
    let e = p, k = 0;
    while (k < 3 && e < n && flags(cpAt(t, e)) & F_N) {
      e = nextAt(t, e);
      k++;
    }
    return e;
  }
  // " ?[^\s\p{L}\p{N}]+[\r\n]*"
  let q = c0 == 0x20 && p1 < n && isOther(cpAt(t, p1)) ? p1 : p;
  if (isOther(cpAt(t, q))) {
    while (q < n && isOther(cpAt(t, q))) q = nextAt(t, q);
    while (q < n && (load<u8>(t + <usize>q) == 0x0d || load<u8>(t + <usize>q) == 0x0a)) q++;
    return q;
  }
  if (f0 & F_WS) {
    const wsEnd = flagRun(t, p, n, F_WS);
    // \s*[\r\n]+: up to the last line break in the run
    let lastBreak = -1;
    for (let i = p; i < wsEnd; i = nextAt(t, i)) {
      const b = load<u8>(t + <usize>i);
      if (b == 0x0d || b == 0x0a) lastBreak = i;
    }
    if (lastBreak >= 0) return lastBreak + 1;
    if (wsEnd >= n) return wsEnd; // \s+(?!\S) at the end
    const back = prevAt(t, wsEnd);
    return back > p ? back : wsEnd; // \s+(?!\S), else \s+
  }
  return -1;
}

/**
 * Byte-pair merges over the word's bytes [t + p, t + e) into out (i32 ids); returns the count,
 * or -1 when the word has more bytes than the scratch holds.
 */
function bpeWord(t: usize, p: i32, e: i32, out: usize): i32 {
  const n = e - p;
  if (n > maxWord) return -1;
  const sym = scratch, nxt = sym + (<usize>n << 2), prv = nxt + (<usize>n << 2), alive = prv + (<usize>n << 2);
  const heap = alive + (<usize>n << 2); // entries: u64 rank << 32 | pos, u64 left id << 32 | right id
  for (let i = 0; i < n; i++) {
    store<i32>(sym + (<usize>i << 2), load<i32>(byteIds + (<usize>load<u8>(t + <usize>(p + i)) << 2)));
    store<i32>(nxt + (<usize>i << 2), i + 1);
    store<i32>(prv + (<usize>i << 2), i - 1);
    store<i32>(alive + (<usize>i << 2), 1);
  }
  let hn = 0;
  for (let i = 0; i + 1 < n; i++) hn = push(heap, hn, i, load<i32>(sym + (<usize>i << 2)), load<i32>(sym + (<usize>(i + 1) << 2)));
  while (hn > 0) {
    const top = load<u64>(heap);
    const ids = load<u64>(heap, 8);
    hn = pop(heap, hn);
    const i = <i32>(top & 0xffffffff);
    const a = <i32>(ids >> 32), b = <i32>(ids & 0xffffffff);
    if (!load<i32>(alive + (<usize>i << 2)) || load<i32>(sym + (<usize>i << 2)) != a) continue;
    const j = load<i32>(nxt + (<usize>i << 2));
    if (j >= n || load<i32>(sym + (<usize>j << 2)) != b) continue;
    const merged = <i32>(lookup(a, b) & 0xffffffff);
    store<i32>(sym + (<usize>i << 2), merged);
    store<i32>(alive + (<usize>j << 2), 0);
    const k = load<i32>(nxt + (<usize>j << 2));
    store<i32>(nxt + (<usize>i << 2), k);
    if (k < n) store<i32>(prv + (<usize>k << 2), i);
    const h = load<i32>(prv + (<usize>i << 2));
    if (h >= 0) hn = push(heap, hn, h, load<i32>(sym + (<usize>h << 2)), merged);
    if (k < n) hn = push(heap, hn, i, merged, load<i32>(sym + (<usize>k << 2)));
  }
  let c = 0;
  for (let i = 0; i < n; i = load<i32>(nxt + (<usize>i << 2))) store<i32>(out + (<usize>(c++) << 2), load<i32>(sym + (<usize>i << 2)));
  return c;
}

/** Pushes the pair (a at pos, b) if it merges; returns the heap's new size. */
function push(heap: usize, hn: i32, pos: i32, a: i32, b: i32): i32 {
  const r = lookup(a, b);
  if (r < 0) return hn;
  const key = ((<u64>r) & 0xffffffff00000000) | <u64><u32>pos;
  const ids = ((<u64><u32>a) << 32) | <u64><u32>b;
  let i = hn;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    const pk = load<u64>(heap + (<usize>parent << 4));
    if (pk <= key) break;
    store<u64>(heap + (<usize>i << 4), pk);
    store<u64>(heap + (<usize>i << 4), load<u64>(heap + (<usize>parent << 4), 8), 8);
    i = parent;
  }
  store<u64>(heap + (<usize>i << 4), key);
  store<u64>(heap + (<usize>i << 4), ids, 8);
  return hn + 1;
}

/** Removes the smallest entry; returns the heap's new size. */
function pop(heap: usize, hn: i32): i32 {
  hn--;
  if (hn == 0) return 0;
  const key = load<u64>(heap + (<usize>hn << 4)), ids = load<u64>(heap + (<usize>hn << 4), 8);
  let i = 0;
  while (true) {
    let c = 2 * i + 1;
    if (c >= hn) break;
    if (c + 1 < hn && load<u64>(heap + (<usize>(c + 1) << 4)) < load<u64>(heap + (<usize>c << 4))) c++;
    const ck = load<u64>(heap + (<usize>c << 4));
    if (ck >= key) break;
    store<u64>(heap + (<usize>i << 4), ck);
    store<u64>(heap + (<usize>i << 4), load<u64>(heap + (<usize>c << 4), 8), 8);
    i = c;
  }
  store<u64>(heap + (<usize>i << 4), key);
  store<u64>(heap + (<usize>i << 4), ids, 8);
  return hn;
}

/**
 * Encodes the UTF-8 text [t + p, t + n) into out from index c on; returns the total number of
 * ids, or -(q + 1) when the piece at byte q is longer than the scratch holds (the caller grows
 * it to pieceEnd(t, q, n) - q symbols and calls again from q with the count so far, lastCount).
 * out must hold n ids (a byte-level BPE never makes more tokens than bytes).
 */
export function encode(t: usize, n: i32, out: usize, p: i32, c: i32): i32 {
  while (p < n) {
    let e = kimi ? kimiPiece(t, p, n) : gpt2Piece(t, p, n);
    if (e <= p) e = nextAt(t, p); // no alternative matched: one character on its own
    const len = e - p;
    if (vocab) {
      const id = pieceId(t + <usize>p, len);
      if (id >= 0) {
        store<i32>(out + (<usize>(c++) << 2), id);
        p = e;
        continue;
      }
    }
    let slot: usize = 0;
    let h: u32 = 0;
    if (len <= 32) {
      h = 0x811c9dc5;
      for (let i = p; i < e; i++) h = (h ^ <u32>load<u8>(t + <usize>i)) * 0x01000193;
      slot = cache + <usize>(h & (CACHE_SLOTS - 1)) * SLOT;
      if (load<u32>(slot) == h && load<i32>(slot, 4) == len && memory.compare(slot + 16, t + <usize>p, <usize>len) == 0) {
        const cnt = load<i32>(slot, 8);
        memory.copy(out + (<usize>c << 2), slot + 48, <usize>cnt << 2);
        c += cnt;
        p = e;
        continue;
      }
    }
    const k = bpeWord(t, p, e, out + (<usize>c << 2));
    if (slot && k > 0 && k <= 8) {
      store<u32>(slot, h);
      store<i32>(slot, len, 4);
      store<i32>(slot, k, 8);
      memory.copy(slot + 16, t + <usize>p, <usize>len);
      memory.copy(slot + 48, out + (<usize>c << 2), <usize>k << 2);
    }
    if (k < 0) {
      lastCount = c;
      return -(p + 1);
    }
    c += k;
    p = e;
  }
  return c;
}

let lastCount = 0;

/** The ids written before encode() stopped at a piece too long for the scratch. */
export function stoppedCount(): i32 {
  return lastCount;
}

/** Where the piece starting at byte p ends. */
export function pieceEnd(t: usize, p: i32, n: i32): i32 {
  const e = kimi ? kimiPiece(t, p, n) : gpt2Piece(t, p, n);
  return e <= p ? nextAt(t, p) : e;
}
