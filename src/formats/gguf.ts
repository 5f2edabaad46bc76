/**
 * GGUF (v2, v3) as llama.cpp writes it: header, metadata, tensor infos, then aligned tensor
 * data. Read from a stream: the header and every tensor info are validated (counts, string and
 * array lengths, dimensions, types, offsets, alignment) before any tensor byte is read, then
 * each tensor's bytes go to a sink as they arrive.
 */
import { FormatError } from './safetensors.js';
import { ByteReader, type ChunkSink } from './safetensors-stream.js';

/** GGML tensor types this runtime reads (ids from ggml.h). */
export const GGML_TYPES = { 0: 'F32', 1: 'F16', 2: 'Q4_0', 8: 'Q8_0', 6: 'Q5_0', 7: 'Q5_1', 10: 'Q2_K', 11: 'Q3_K', 12: 'Q4_K', 13: 'Q5_K', 14: 'Q6_K', 30: 'BF16' } as const;
export type GgmlTypeName = (typeof GGML_TYPES)[keyof typeof GGML_TYPES];
const TYPE_BLOCK: Record<GgmlTypeName, [number, number]> = { F32: [1, 4], F16: [1, 2], BF16: [1, 2], Q8_0: [32, 34], Q4_0: [32, 18], Q4_K: [256, 144], Q6_K: [256, 210], Q5_0: [32, 22], Q5_1: [32, 24], Q5_K: [256, 176], Q2_K: [256, 84], Q3_K: [256, 110] };

export type GgufValue = number | bigint | boolean | string | GgufValue[];

export interface GgufTensorInfo {
  readonly name: string;
  /** ggml order: ne[0] is the fastest-varying dimension (a row's length) */
  readonly ne: readonly number[];
  readonly type: GgmlTypeName;
  /** offset in the data section */
  readonly offset: number;
  readonly byteLength: number;
}

export interface GgufHeader {
  readonly version: number;
  readonly metadata: ReadonlyMap<string, GgufValue>;
  readonly tensors: readonly GgufTensorInfo[];
  readonly alignment: number;
}

const MAX_COUNT = 1 << 24; // tensors, keys, array items
const MAX_STRING = 1 << 24; // bytes of one string
const MAX_DIMS = 4;

/** Bytes of a tensor of type t and dims ne (row = ne[0] must fill whole blocks). */
export function ggmlBytes(t: GgmlTypeName, ne: readonly number[]): number {
  const [blk, size] = TYPE_BLOCK[t];
  if (ne[0]! % blk) return -1;
  return (ne[0]! / blk) * size * ne.slice(1).reduce((a, b) => a * b, 1);
}

class Reader {
  constructor(
    private readonly r: ByteReader,
    private readonly label: string,
  ) {}

  get pos(): number {
    return this.r.consumed;
  }

  private async bytes(n: number, what: string): Promise<DataView> {
    const b = await this.r.exact(n, `${this.label}: ${what}`);
    return new DataView(b.buffer, b.byteOffset, b.byteLength);
  }
  async u8(w: string) { return (await this.bytes(1, w)).getUint8(0); }
  async i8(w: string) { return (await this.bytes(1, w)).getInt8(0); }
  async u16(w: string) { return (await this.bytes(2, w)).getUint16(0, true); }
  async i16(w: string) { return (await this.bytes(2, w)).getInt16(0, true); }
  async u32(w: string) { return (await this.bytes(4, w)).getUint32(0, true); }
  async i32(w: string) { return (await this.bytes(4, w)).getInt32(0, true); }
  async f32(w: string) { return (await this.bytes(4, w)).getFloat32(0, true); }
  async f64(w: string) { return (await this.bytes(8, w)).getFloat64(0, true); }
  async i64(w: string) { return (await this.bytes(8, w)).getBigInt64(0, true); }
  async u64(w: string): Promise<bigint> { return (await this.bytes(8, w)).getBigUint64(0, true); }
  /** a u64 that must be a count no larger than max */
  async count(w: string, max: number): Promise<number> {
    const v = await this.u64(w);
    if (v > BigInt(max)) throw new FormatError(`${this.label}: ${w} ${v} exceeds ${max}`);
    return Number(v);
  }
  async str(w: string): Promise<string> {
    const n = await this.count(`${w} length`, MAX_STRING);
    const b = await this.r.exact(n, `${this.label}: ${w}`);
    try {
      return new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(b);
    } catch {
      throw new FormatError(`${this.label}: ${w} is not valid UTF-8`);
    }
  }
  async value(type: number, w: string, depth = 0): Promise<GgufValue> {
    switch (type) {
      case 0: return this.u8(w);
      case 1: return this.i8(w);
      case 2: return this.u16(w);
      case 3: return this.i16(w);
      case 4: return this.u32(w);
      case 5: return this.i32(w);
      case 6: return this.f32(w);
      case 7: {
        const b = await this.u8(w);
        if (b > 1) throw new FormatError(`${this.label}: ${w}: bool byte ${b}`);
        return b === 1;
      }
      case 8: return this.str(w);
      case 9: {
        if (depth > 2) throw new FormatError(`${this.label}: ${w}: arrays nested too deep`);
        const et = await this.u32(`${w} element type`);
        const n = await this.count(`${w} array length`, MAX_COUNT);
        const out: GgufValue[] = [];
        for (let i = 0; i < n; i++) out.push(await this.value(et, w, depth + 1));
        return out;
      }
      case 10: return this.u64(w);
      case 11: return this.i64(w);
      case 12: return this.f64(w);
      default: throw new FormatError(`${this.label}: ${w}: unknown value type ${type}`);
    }
  }
}

export interface GgufReadOptions {
  /** called with the validated header before any tensor data is read */
  onHeader?: (h: GgufHeader) => void;
  onBytes?: (n: number) => void;
}

/** Reads a GGUF stream; `sink(t)` says where each tensor's bytes go (null: skip them). */
export async function readGgufStream(stream: ReadableStream<Uint8Array>, label: string, sink: (t: GgufTensorInfo) => ChunkSink | null, opts: GgufReadOptions = {}): Promise<GgufHeader> {
  const reader = stream.getReader();
  const br = new ByteReader(reader);
  const r = new Reader(br, label);
  try {
    const magic = await r.u32('magic');
    if (magic !== 0x46554747) throw new FormatError(`${label}: not a GGUF file (magic 0x${magic.toString(16)})`);
    const version = await r.u32('version');
    if (version !== 2 && version !== 3) throw new FormatError(`${label}: GGUF version ${version} is not supported (2 or 3)`);
    const nTensors = await r.count('tensor count', MAX_COUNT);
    const nKv = await r.count('metadata count', MAX_COUNT);
    const metadata = new Map<string, GgufValue>();
    for (let i = 0; i < nKv; i++) {
      const key = await r.str(`metadata key ${i}`);
      const type = await r.u32(`type of ${key}`);
      if (metadata.has(key)) throw new FormatError(`${label}: metadata key ${key} appears twice`);
      metadata.set(key, await r.value(type, key));
    }
    const align = metadata.get('general.alignment') ?? 32;
    if (typeof align !== 'number' || align <= 0 || align % 8 || align > 1 << 16) throw new FormatError(`${label}: general.alignment ${String(align)} is not a positive multiple of 8`);
    const tensors: GgufTensorInfo[] = [];
    const names = new Set<string>();
    for (let i = 0; i < nTensors; i++) {
      const name = await r.str(`tensor ${i} name`);
      const where = `${label}: tensor '${name}'`;
      if (names.has(name)) throw new FormatError(`${where} appears twice`);
      names.add(name);
      const nd = await r.u32(`${name} dims`);
      if (nd < 1 || nd > MAX_DIMS) throw new FormatError(`${where}: ${nd} dimensions`);
      const ne: number[] = [];
      for (let d = 0; d < nd; d++) ne.push(await r.count(`${name} dim ${d}`, 2 ** 40));
      const tid = await r.u32(`${name} type`);
      const type = (GGML_TYPES as Record<number, GgmlTypeName>)[tid];
      if (!type) throw new FormatError(`${where}: ggml type ${tid} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)`);
      const offset = await r.count(`${name} offset`, Number.MAX_SAFE_INTEGER);
      if (offset % align) throw new FormatError(`${where}: offset ${offset} is not aligned to ${align}`);
      if (ne.some((x) => x === 0)) throw new FormatError(`${where}: a dimension is zero`);
      const byteLength = ggmlBytes(type, ne);
      if (byteLength < 0) throw new FormatError(`${where}: ${type} rows of ${ne[0]} elements do not fill whole blocks`);
      if (!Number.isSafeInteger(byteLength)) throw new FormatError(`${where}: too large`);
      tensors.push({ name, ne, type, offset, byteLength });
    }
    const ordered = [...tensors].sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < ordered.length; i++)
      if (ordered[i]!.offset < ordered[i - 1]!.offset + ordered[i - 1]!.byteLength) throw new FormatError(`${label}: tensors '${ordered[i - 1]!.name}' and '${ordered[i]!.name}' overlap`);
    const header: GgufHeader = { version, metadata, tensors, alignment: align };
    opts.onHeader?.(header);
    opts.onBytes?.(r.pos);
    // the data section starts at the next multiple of the alignment
    const dataStart = Math.ceil(r.pos / align) * align;
    let pos = r.pos;
    for (const t of ordered) {
      const begin = dataStart + t.offset, end = begin + t.byteLength;
      while (pos < begin) {
        const c = await br.next(begin - pos);
        if (!c.length) throw new FormatError(`${label}: tensor '${t.name}': the stream ended before its data (truncated file?)`);
        pos += c.length;
        opts.onBytes?.(c.length);
      }
      const s = sink(t);
      while (pos < end) {
        const c = await br.next(end - pos);
        if (!c.length) throw new FormatError(`${label}: tensor '${t.name}': data ends at ${end}, but the stream ended at ${pos} (truncated file?)`);
        s?.write(c);
        pos += c.length;
        opts.onBytes?.(c.length);
      }
      s?.end();
    }
    return header;
  } finally {
    await reader.cancel().catch(() => {});
  }
}
