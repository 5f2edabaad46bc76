import type { SafetensorsDtype } from './safetensors.js';

export interface TensorToWrite {
  dtype: SafetensorsDtype;
  shape: readonly number[];
  data: ArrayBufferView;
}

/**
 * A safetensors header (its 8-byte length, then the JSON, padded so the data region starts on 8
 * bytes) for tensors of these sizes in this order; the data follows it back to back.
 */
export function safetensorsHeader(tensors: readonly { name: string; dtype: SafetensorsDtype; shape: readonly number[]; byteLength: number }[], metadata: Record<string, string> = {}): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.byteLength] };
    off += t.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + json.length) % 8)) % 8); // keep the data region 8-byte aligned
  const hbytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hbytes.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(hbytes.length), true);
  out.set(hbytes, 8);
  return out;
}

/** Serializes tensors (in the given order) and string metadata to safetensors bytes. */
export function writeSafetensors(tensors: Record<string, TensorToWrite>, metadata: Record<string, string> = {}): Uint8Array {
  const list = Object.entries(tensors).map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, byteLength: t.data.byteLength }));
  const head = safetensorsHeader(list, metadata);
  const out = new Uint8Array(head.length + list.reduce((a, t) => a + t.byteLength, 0));
  out.set(head, 0);
  let p = head.length;
  for (const t of Object.values(tensors)) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), p);
    p += t.data.byteLength;
  }
  return out;
}
