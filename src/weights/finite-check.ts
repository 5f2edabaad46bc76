/**
 * Checks that a tensor's values are finite as its bytes stream past (elements and blocks may
 * straddle chunks), on the raw bits: no conversion. For the block-quantized formats the f16
 * scale at the start of every block is what can be NaN or infinite.
 */
import { FormatError } from '../formats/safetensors.js';
import type { ChunkSink } from '../formats/safetensors-stream.js';

/** element (or block) bytes and the check of one element (or block) at offset o */
const KINDS: Record<string, [number, (b: Uint8Array, o: number) => boolean]> = {
  F32: [4, (b, o) => (b[o + 3]! & 0x7f) === 0x7f && (b[o + 2]! & 0x80) === 0x80],
  BF16: [2, (b, o) => (b[o + 1]! & 0x7f) === 0x7f && (b[o]! & 0x80) === 0x80],
  F16: [2, (b, o) => (b[o + 1]! & 0x7c) === 0x7c],
  F64: [8, (b, o) => (b[o + 7]! & 0x7f) === 0x7f && (b[o + 6]! & 0xf0) === 0xf0],
  Q8_0: [34, (b, o) => (b[o + 1]! & 0x7c) === 0x7c],
  Q4_0: [18, (b, o) => (b[o + 1]! & 0x7c) === 0x7c],
};

export class FiniteCheck {
  private readonly carry = new Uint8Array(64);
  private carried = 0;
  private index = 0;
  private readonly size: number;
  private readonly bad: (b: Uint8Array, o: number) => boolean;

  constructor(
    dtype: string,
    private readonly where: string,
  ) {
    const k = KINDS[dtype];
    if (!k) throw new Error(`no finiteness check for ${dtype}`);
    [this.size, this.bad] = k;
  }

  push(chunk: Uint8Array): void {
    const w = this.size;
    let p = 0;
    if (this.carried) {
      const need = w - this.carried;
      this.carry.set(chunk.subarray(0, need), this.carried);
      if (chunk.length < need) {
        this.carried += chunk.length;
        return;
      }
      this.check(this.carry, 0);
      p = need;
      this.carried = 0;
    }
    const n = Math.floor((chunk.length - p) / w);
    for (let i = 0; i < n; i++) this.check(chunk, p + i * w);
    const rest = chunk.length - p - n * w;
    if (rest) {
      this.carry.set(chunk.subarray(chunk.length - rest));
      this.carried = rest;
    }
  }

  private check(b: Uint8Array, o: number): void {
    if (this.bad(b, o)) {
      const what = this.size > 8 ? `block ${this.index} has a scale that is` : `value ${this.index} is`;
      throw new FormatError(`${this.where}: ${what} not finite (NaN or infinity)`);
    }
    this.index++;
  }
}

/** A whole tensor gathered from the stream (its values checked on the way), then handed over. */
export function gatherChecked(bytes: number, done: (b: Uint8Array) => void, finite: FiniteCheck): ChunkSink {
  const buf = new Uint8Array(bytes);
  let off = 0;
  return {
    write: (c) => {
      finite.push(c);
      buf.set(c, off);
      off += c.length;
    },
    end: () => done(buf),
  };
}
