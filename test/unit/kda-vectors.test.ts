import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readKdaVector, runKdaVector } from '../../src/verify/kda-vectors.js';
import { allKernels } from '../helpers/kernels.js';

// Vectors from an independent float64 implementation (copied from shared/vectors).
const dir = join(import.meta.dirname, '../fixtures');
const files = readdirSync(dir).filter((f) => /^kda_.*\.safetensors$/.test(f)).sort();
const manifest = JSON.parse(readFileSync(join(dir, 'kda_manifest.json'), 'utf8')) as { file: string }[];

describe('KDA kernels against the shared float64 vectors', () => {
  it('has every vector the manifest lists', () => {
    expect(files).toEqual(manifest.map((m) => m.file).sort());
  });

  for (const file of files) {
    it(`${file}: step and chunked, on every backend, under 1e-5`, async () => {
      const vec = readKdaVector(new Uint8Array(readFileSync(join(dir, file))), file);
      for (const k of await allKernels()) {
        for (const path of ['step', 'chunk16', 'chunk32', 'chunk48', 'chunk64'] as const) {
          const r = runKdaVector(vec, k, path);
          expect(r.relErrO, `${k.name} ${path} o`).toBeLessThan(1e-5);
          expect(r.relErrState, `${k.name} ${path} state`).toBeLessThan(1e-5);
        }
      }
    });
  }
});
