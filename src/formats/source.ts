/**
 * Where model files come from: memory, a URL (fetch), an R2 bucket, or (in Node) a directory
 * (src/node.ts). Files are opened as streams so large weights never need to sit whole in memory.
 */
import { bytesToStream } from './safetensors-stream.js';

export interface OpenedFile {
  readonly stream: ReadableStream<Uint8Array>;
  /** bytes, when the source knows them (for progress) */
  readonly size: number | null;
}

export interface ModelSource {
  /** for messages */
  readonly name: string;
  /** opens a file of the model; null when the source does not have it */
  open(file: string): Promise<OpenedFile | null>;
}

/** A model held in memory (tests, the Worker's bundled default model). */
export function sourceFromFiles(files: Readonly<Record<string, Uint8Array | string>>, name = 'memory'): ModelSource {
  return {
    name,
    async open(file) {
      const f = files[file];
      if (f === undefined) return null;
      const bytes = typeof f === 'string' ? new TextEncoder().encode(f) : f;
      return { stream: bytesToStream(bytes), size: bytes.length };
    },
  };
}

/** Files under a base URL, through fetch (404 means absent). */
export function sourceFromUrl(base: string, fetchImpl: typeof fetch = fetch): ModelSource {
  const root = base.endsWith('/') ? base : `${base}/`;
  return {
    name: root,
    async open(file) {
      const res = await fetchImpl(new URL(file, root).toString());
      if (res.status === 404) return null;
      if (!res.ok || !res.body) throw new Error(`${root}${file}: HTTP ${res.status}`);
      const len = Number(res.headers.get('content-length'));
      return { stream: res.body, size: Number.isFinite(len) && len > 0 ? len : null };
    },
  };
}

/** The part of Cloudflare's R2Bucket binding this needs. */
export interface R2BucketLike {
  get(key: string): Promise<{ body: ReadableStream<Uint8Array>; size: number } | null>;
}

/** Files under a key prefix of an R2 bucket binding. */
export function sourceFromR2(bucket: R2BucketLike, prefix = ''): ModelSource {
  const p = prefix && !prefix.endsWith('/') ? `${prefix}/` : prefix;
  return {
    name: `r2:${p}`,
    async open(file) {
      const o = await bucket.get(p + file);
      return o ? { stream: o.body, size: o.size } : null;
    },
  };
}

/** Reads a whole (small) file: JSON configs, tokenizer files. */
export async function readAll(f: OpenedFile): Promise<Uint8Array> {
  return new Uint8Array(await new Response(f.stream).arrayBuffer());
}

export async function readJson(source: ModelSource, file: string): Promise<unknown | null> {
  const f = await source.open(file);
  if (!f) return null;
  const text = new TextDecoder().decode(await readAll(f));
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new Error(`${source.name}: ${file} is not valid JSON (${(e as Error).message})`);
  }
}
