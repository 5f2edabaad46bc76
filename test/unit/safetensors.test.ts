import { describe, expect, it } from 'vitest';
import { FormatError, parseSafetensors, tensorF32 } from '../../src/formats/safetensors.js';
import { writeSafetensors } from '../../src/formats/safetensors-writer.js';

function withHeader(header: unknown, dataBytes = 0, declaredLen?: number): Uint8Array {
  const h = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(declaredLen ?? h.length), true);
  out.set(h, 8);
  return out;
}

describe('safetensors parsing validates before it trusts', () => {
  const good = writeSafetensors(
    { a: { dtype: 'F32', shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) }, b: { dtype: 'BF16', shape: [2], data: new Uint16Array([0x3f80, 0xc000]) } },
    { scale: '0.5' },
  );

  it('reads tensors, dtypes and metadata', () => {
    const f = parseSafetensors(good);
    expect(f.metadata).toEqual({ scale: '0.5' });
    expect(Array.from(tensorF32(f.tensors.get('a')!))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(Array.from(tensorF32(f.tensors.get('b')!))).toEqual([1, -2]);
  });

  const cases: [string, Uint8Array, RegExp][] = [
    ['empty file', new Uint8Array(0), /too short for a header length/],
    ['header length beyond the file', withHeader({}, 0, 1000), /header length 1000 runs past the end/],
    ['absurd header length', (() => { const b = new Uint8Array(16); new DataView(b.buffer).setBigUint64(0, 2n ** 63n, true); return b; })(), /exceeds/],
    ['truncated data', good.subarray(0, good.length - 3), /tensor 'b': data ends at 28, past the 25 bytes/],
    ['header not JSON', (() => { const b = withHeader({}); b.set(new TextEncoder().encode('{x'), 8); return b; })(), /not valid UTF-8 JSON/],
    ['header is an array', withHeader([1, 2]), /not a JSON object/],
    ['unknown dtype', withHeader({ t: { dtype: 'F8', shape: [1], data_offsets: [0, 1] } }, 1), /tensor 't': unsupported dtype "F8"/],
    ['negative dimension', withHeader({ t: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4), /tensor 't': shape \[-1\]/],
    ['shape does not match the bytes', withHeader({ t: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8), /tensor 't': 8 bytes stored, but F32 \[3\] needs 12/],
    ['offsets reversed', withHeader({ t: { dtype: 'U8', shape: [0], data_offsets: [4, 2] } }, 4), /end 2 is before begin 4/],
    ['offsets not integers', withHeader({ t: { dtype: 'U8', shape: [1], data_offsets: [0.5, 1] } }, 4), /data_offsets/],
    ['overlapping tensors', withHeader({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12), /'a' and 'b' overlap/],
    ['metadata not strings', withHeader({ __metadata__: { scale: 1 } }), /__metadata__.scale is not a string/],
  ];
  for (const [name, bytes, msg] of cases) {
    it(`rejects: ${name}`, () => {
      expect(() => parseSafetensors(bytes, 'x.safetensors')).toThrow(FormatError);
      expect(() => parseSafetensors(bytes, 'x.safetensors')).toThrow(msg);
    });
  }

  it('gives an aligned copy for tensors at odd offsets', () => {
    const f = parseSafetensors(withHeader({ t: { dtype: 'F32', shape: [1], data_offsets: [1, 5] } }, 8));
    expect(tensorF32(f.tensors.get('t')!)).toBeInstanceOf(Float32Array);
  });
});
