/**
 * FNV-1a 64 in 32-bit halves (BigInt per byte is too slow for gigabytes): the session blob's
 * checksum (engine/model/session.c) and the tokenizer fingerprint. `state` continues a hash.
 */
export function fnv1a64(b: Uint8Array, [hi, lo]: [number, number] = [0xcbf29ce4, 0x84222325]): [number, number] {
  for (let i = 0; i < b.length; i++) {
    lo ^= b[i]!;
    // (hi, lo) *= 0x100000001b3 mod 2^64
    const l16 = lo & 0xffff, l32 = lo >>> 16;
    const p0 = l16 * 0x1b3, p1 = l32 * 0x1b3;
    const nlo = (p0 + ((p1 & 0xffff) << 16)) >>> 0;
    const carry = Math.floor((p0 + (p1 & 0xffff) * 65536) / 4294967296) + Math.floor(p1 / 65536);
    hi = (Math.imul(hi, 0x1b3) + (lo << 8) + carry) >>> 0;
    lo = nlo;
  }
  return [hi, lo];
}

/** The 16 hex digits of a hash state. */
export function fnvHex([hi, lo]: [number, number]): string {
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}
