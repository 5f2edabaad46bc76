/**
 * safetensors: an 8-byte little-endian header length, a JSON header, then the data region.
 * Every offset, dtype and shape is validated against the bytes actually present before any
 * tensor is exposed, and errors name the tensor and the problem.
 */

export type SafetensorsDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const DTYPE_BYTES: Record<SafetensorsDtype, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

/** Headers larger than this are refused before parsing (the format's own limit is 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsTensor {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /** The tensor's bytes (a view into the file, no copy). */
  readonly bytes: Uint8Array;
}

export interface SafetensorsFile {
  readonly tensors: ReadonlyMap<string, SafetensorsTensor>;
  readonly metadata: Readonly<Record<string, string>>;
}

/** A model or vector file that is not what it claims to be. */
export class FormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FormatError';
  }
}

/** Parses and validates a whole safetensors file held in memory. */
export function parseSafetensors(file: Uint8Array, label = 'safetensors'): SafetensorsFile {
  if (file.byteLength < 8) throw new FormatError(`${label}: ${file.byteLength} bytes is too short for a header length`);
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const hlen = dv.getBigUint64(0, true);
  if (hlen > BigInt(MAX_HEADER_BYTES)) throw new FormatError(`${label}: header length ${hlen} exceeds ${MAX_HEADER_BYTES}`);
  const n = Number(hlen);
  if (8 + n > file.byteLength) throw new FormatError(`${label}: header length ${n} runs past the end of the file (${file.byteLength} bytes)`);
  const data = file.subarray(8 + n);
  const { entries, metadata } = parseHeaderJson(file.subarray(8, 8 + n), data.byteLength, label);
  const tensors = new Map<string, SafetensorsTensor>();
  for (const t of entries) tensors.set(t.name, { name: t.name, dtype: t.dtype, shape: t.shape, bytes: data.subarray(t.begin, t.end) });
  return { tensors, metadata };
}

/** A header entry with its place in the data region. */
export interface HeaderEntry {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  readonly begin: number;
  readonly end: number;
}

/** The first key that a JSON object's top level repeats, or null (the text is valid JSON). */
function repeatedTopLevelKey(text: string): string | null {
  const seen = new Set<string>();
  let depth = 0, keyNext = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1 && keyNext) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (seen.has(key)) return key;
        seen.add(key);
        keyNext = false;
      }
      i = j;
    } else if (ch === '{' || ch === '[') {
      depth++;
      keyNext = depth === 1;
    } else if (ch === '}' || ch === ']') depth--;
    else if (ch === ',' && depth === 1) keyNext = true;
  }
  return null;
}

/**
 * Parses and validates the JSON header: dtypes, shapes, offsets against `dataBytes` (the data
 * region's size, when known) and against each other (no overlaps).
 */
export function parseHeaderJson(json: Uint8Array, dataBytes: number, label: string): { entries: HeaderEntry[]; metadata: Record<string, string> } {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(json));
  } catch (e) {
    throw new FormatError(`${label}: header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new FormatError(`${label}: header is not a JSON object`);
  // JSON.parse keeps the last of two equal keys: a second entry for a tensor would replace the first unseen
  const twice = repeatedTopLevelKey(new TextDecoder().decode(json));
  if (twice !== null) throw new FormatError(`${label}: tensor '${twice}' is in the header twice`);
  const entries: HeaderEntry[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(raw, label);
      continue;
    }
    entries.push({ name, ...parseEntry(name, raw, dataBytes, label) });
  }
  const spans = [...entries].sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < spans.length; i++) {
    const prev = spans[i - 1]!, cur = spans[i]!;
    if (cur.begin < prev.end) throw new FormatError(`${label}: tensors '${prev.name}' and '${cur.name}' overlap`);
  }
  return { entries, metadata };
}

function parseMetadata(raw: unknown, label: string): Record<string, string> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new FormatError(`${label}: __metadata__ is not an object`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'string') throw new FormatError(`${label}: __metadata__.${k} is not a string`);
    out[k] = v;
  }
  return out;
}

function parseEntry(name: string, raw: unknown, dataBytes: number, label: string) {
  const where = `${label}: tensor '${name}'`;
  if (typeof raw !== 'object' || raw === null) throw new FormatError(`${where}: entry is not an object`);
  const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof e.dtype !== 'string' || !(e.dtype in DTYPE_BYTES)) throw new FormatError(`${where}: unsupported dtype ${JSON.stringify(e.dtype)}`);
  const dtype = e.dtype as SafetensorsDtype;
  if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new FormatError(`${where}: shape ${JSON.stringify(e.shape)} is not a list of non-negative integers`);
  }
  const shape = e.shape as number[];
  const offs = e.data_offsets;
  if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    throw new FormatError(`${where}: data_offsets ${JSON.stringify(offs)} is not [begin, end]`);
  }
  const [begin, end] = offs as [number, number];
  if (end < begin) throw new FormatError(`${where}: data_offsets end ${end} is before begin ${begin}`);
  if (end > dataBytes) throw new FormatError(`${where}: data ends at ${end}, past the ${dataBytes} bytes of the data region (truncated file?)`);
  const count = shape.reduce((a, b) => a * b, 1);
  const want = count * DTYPE_BYTES[dtype];
  if (end - begin !== want) throw new FormatError(`${where}: ${end - begin} bytes stored, but ${dtype} ${JSON.stringify(shape)} needs ${want}`);
  return { dtype, shape, begin, end };
}

/** The tensor as float32 (copied, so the result is aligned whatever the file offset). */
export function tensorF32(t: SafetensorsTensor): Float32Array {
  const n = t.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const dv = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  switch (t.dtype) {
    case 'F32':
      new Uint8Array(out.buffer).set(t.bytes);
      break;
    case 'F64':
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(8 * i, true);
      break;
    case 'BF16':
      for (let i = 0; i < n; i++) out[i] = bf16ToF32(dv.getUint16(2 * i, true));
      break;
    case 'F16':
      for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
      break;
    default:
      throw new FormatError(`tensor '${t.name}': ${t.dtype} is not a float type`);
  }
  return out;
}

const f32scratch = new Float32Array(1);
const u32scratch = new Uint32Array(f32scratch.buffer);
function bf16ToF32(h: number): number {
  u32scratch[0] = h << 16;
  return f32scratch[0]!;
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
