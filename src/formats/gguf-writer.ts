/** Writes GGUF v3 files (the converter's output, and test fixtures). */
import type { GgmlTypeName } from './gguf.js';

export type GgufMeta =
  | { type: 'u32' | 'i32' | 'f32' | 'u64'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'str'; value: string }
  | { type: 'arr_i32' | 'arr_f32'; value: readonly number[] }
  | { type: 'arr_str'; value: readonly string[] };

export interface GgufTensorToWrite {
  readonly name: string;
  /** ggml order (ne[0] = row length) */
  readonly ne: readonly number[];
  readonly type: GgmlTypeName;
  readonly data: Uint8Array;
}

const TYPE_ID: Record<GgmlTypeName, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, Q5_0: 6, Q5_1: 7, Q2_K: 10, Q3_K: 11, Q4_K: 12, Q5_K: 13, Q6_K: 14, BF16: 30 };

class Out {
  private chunks: Uint8Array[] = [];
  length = 0;
  push(b: Uint8Array) {
    this.chunks.push(b);
    this.length += b.length;
  }
  num(kind: 'u8' | 'u32' | 'i32' | 'f32' | 'u64', v: number) {
    const b = new Uint8Array(kind === 'u8' ? 1 : kind === 'u64' ? 8 : 4);
    const dv = new DataView(b.buffer);
    if (kind === 'u8') dv.setUint8(0, v);
    else if (kind === 'u32') dv.setUint32(0, v, true);
    else if (kind === 'i32') dv.setInt32(0, v, true);
    else if (kind === 'f32') dv.setFloat32(0, v, true);
    else dv.setBigUint64(0, BigInt(v), true);
    this.push(b);
  }
  str(s: string) {
    const b = new TextEncoder().encode(s);
    this.num('u64', b.length);
    this.push(b);
  }
  concat(): Uint8Array {
    const out = new Uint8Array(this.length);
    let p = 0;
    for (const c of this.chunks) {
      out.set(c, p);
      p += c.length;
    }
    return out;
  }
}

export function writeGguf(metadata: Readonly<Record<string, GgufMeta>>, tensors: readonly GgufTensorToWrite[], alignment = 32): Uint8Array {
  const o = new Out();
  o.num('u32', 0x46554747);
  o.num('u32', 3);
  o.num('u64', tensors.length);
  o.num('u64', Object.keys(metadata).length);
  for (const [k, m] of Object.entries(metadata)) {
    o.str(k);
    switch (m.type) {
      case 'u32': o.num('u32', 4); o.num('u32', m.value); break;
      case 'i32': o.num('u32', 5); o.num('i32', m.value); break;
      case 'f32': o.num('u32', 6); o.num('f32', m.value); break;
      case 'u64': o.num('u32', 10); o.num('u64', m.value); break;
      case 'bool': o.num('u32', 7); o.num('u8', m.value ? 1 : 0); break;
      case 'str': o.num('u32', 8); o.str(m.value); break;
      case 'arr_i32': o.num('u32', 9); o.num('u32', 5); o.num('u64', m.value.length); m.value.forEach((v) => o.num('i32', v)); break;
      case 'arr_f32': o.num('u32', 9); o.num('u32', 6); o.num('u64', m.value.length); m.value.forEach((v) => o.num('f32', v)); break;
      case 'arr_str': o.num('u32', 9); o.num('u32', 8); o.num('u64', m.value.length); m.value.forEach((v) => o.str(v)); break;
    }
  }
  let off = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    off = Math.ceil(off / alignment) * alignment;
    offsets.push(off);
    o.str(t.name);
    o.num('u32', t.ne.length);
    t.ne.forEach((d) => o.num('u64', d));
    o.num('u32', TYPE_ID[t.type]);
    o.num('u64', off);
    off += t.data.length;
  }
  o.push(new Uint8Array((alignment - (o.length % alignment)) % alignment));
  const dataStart = o.length;
  tensors.forEach((t, i) => {
    const pad = dataStart + offsets[i]! - o.length;
    if (pad) o.push(new Uint8Array(pad));
    o.push(t.data);
  });
  return o.concat();
}
