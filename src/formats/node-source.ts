/** A model directory on disk as a ModelSource (Node, Bun, Deno with node: APIs). */
import { createReadStream, existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import type { ModelSource } from './source.js';

export function sourceFromDirectory(dir: string): ModelSource {
  const root = resolve(dir);
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new Error(`${root} is not a directory`);
  return {
    name: root,
    async open(file) {
      const p = join(root, file);
      if (!existsSync(p)) return null;
      const stream = Readable.toWeb(createReadStream(p, { highWaterMark: 1 << 20 })) as unknown as ReadableStream<Uint8Array>;
      return { stream, size: statSync(p).size };
    },
  };
}
