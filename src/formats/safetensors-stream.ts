/**
 * safetensors from a stream: the header is read and validated first (with the same checks as
 * parseSafetensors), then every tensor's bytes are handed to a sink in file order as they arrive,
 * so a model can go from a file, a fetch body or an R2 object into engine memory without the
 * whole file ever sitting in JavaScript memory.
 */
import { FormatError, MAX_HEADER_BYTES, parseHeaderJson, type SafetensorsDtype } from './safetensors.js';

export interface TensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /** bytes of the tensor */
  readonly byteLength: number;
}

/** Receives one tensor's bytes in order; chunks are views valid only during the call. */
export interface ChunkSink {
  write(chunk: Uint8Array): void;
  end(): void;
}

/** Pulls exact byte counts out of a stream of arbitrary chunks. */
export class ByteReader {
  private buf: Uint8Array = new Uint8Array(0);
  private off = 0;
  consumed = 0;

  constructor(private readonly reader: ReadableStreamDefaultReader<Uint8Array>) {}

  /** the next chunk of at most n bytes (fewer only at the end of the stream: then empty) */
  async next(n: number): Promise<Uint8Array> {
    if (this.off >= this.buf.length) {
      const r = await this.reader.read();
      if (r.done) return new Uint8Array(0);
      this.buf = r.value;
      this.off = 0;
    }
    const take = Math.min(n, this.buf.length - this.off);
    const out = this.buf.subarray(this.off, this.off + take);
    this.off += take;
    this.consumed += take;
    return out;
  }

  async exact(n: number, what: string): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const c = await this.next(n - got);
      if (!c.length) throw new FormatError(`${what}: the stream ended after ${got} of ${n} bytes (truncated file?)`);
      out.set(c, got);
      got += c.length;
    }
    return out;
  }
}

export interface StreamOptions {
  /** called after the header is validated, before any tensor byte is read */
  onHeader?: (tensors: readonly TensorInfo[], metadata: Readonly<Record<string, string>>) => void;
  /** called as bytes arrive (for progress) */
  onBytes?: (n: number) => void;
}

/**
 * Reads a safetensors stream. `sink(t)` returns where t's bytes go, or null to skip them.
 * Throws FormatError (naming the tensor) on a malformed header or a stream that ends early.
 */
export async function readSafetensorsStream(stream: ReadableStream<Uint8Array>, label: string, sink: (t: TensorInfo) => ChunkSink | null, opts: StreamOptions = {}): Promise<void> {
  const reader = stream.getReader();
  const r = new ByteReader(reader);
  try {
    const lenBytes = await r.exact(8, `${label}: header length`);
    const hlen = new DataView(lenBytes.buffer).getBigUint64(0, true);
    if (hlen > BigInt(MAX_HEADER_BYTES)) throw new FormatError(`${label}: header length ${hlen} exceeds ${MAX_HEADER_BYTES}`);
    const header = await r.exact(Number(hlen), `${label}: header`);
    // the data region's size is unknown in a stream: offsets are checked against the stream's end
    const { entries, metadata } = parseHeaderJson(header, Number.MAX_SAFE_INTEGER, label);
    const ordered = [...entries].sort((a, b) => a.begin - b.begin);
    opts.onHeader?.(ordered.map((e) => ({ name: e.name, dtype: e.dtype, shape: e.shape, byteLength: e.end - e.begin })), metadata);
    opts.onBytes?.(8 + header.length);
    let pos = 0;
    for (const e of ordered) {
      const info: TensorInfo = { name: e.name, dtype: e.dtype, shape: e.shape, byteLength: e.end - e.begin };
      while (pos < e.begin) {
        const c = await r.next(e.begin - pos);
        if (!c.length) throw new FormatError(`${label}: tensor '${e.name}': the stream ended before its data (truncated file?)`);
        pos += c.length;
        opts.onBytes?.(c.length);
      }
      const s = sink(info);
      while (pos < e.end) {
        const c = await r.next(e.end - pos);
        if (!c.length) throw new FormatError(`${label}: tensor '${e.name}': data ends at ${e.end}, but the stream ended at ${pos} (truncated file?)`);
        s?.write(c);
        pos += c.length;
        opts.onBytes?.(c.length);
      }
      s?.end();
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

/** A stream of one in-memory buffer, in chunks (as a file would arrive). */
export function bytesToStream(bytes: Uint8Array, chunk = 1 << 20): ReadableStream<Uint8Array> {
  let off = 0;
  return new ReadableStream<Uint8Array>({
    pull(ctrl) {
      if (off >= bytes.length) return ctrl.close();
      ctrl.enqueue(bytes.subarray(off, off + chunk));
      off += chunk;
    },
  });
}
