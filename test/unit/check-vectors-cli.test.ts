import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeSafetensors } from '../../src/formats/safetensors-writer.js';
import { kdaRecurrence64 } from '../../src/verify/kda-ref64.js';
import { l2rows, Rng, SEED } from '../helpers/rng.js';

const root = join(import.meta.dirname, '../..');
const tmp = mkdtempSync(join(tmpdir(), 'kle-vectors-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function cli(dir: string) {
  const r = spawnSync(process.execPath, [join(root, 'node_modules/tsx/dist/cli.mjs'), join(root, 'src/cli/check-vectors.ts'), dir], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout + r.stderr };
}

/** A vector file the checker has never seen: fresh seed, other shapes, float64 expected values. */
function freshVector(rng: Rng, B: number, T: number, H: number, K: number, V: number, corrupt = false): Uint8Array {
  const q = l2rows(rng.normals(B * T * H * K), K), k = l2rows(rng.normals(B * T * H * K), K);
  const v = rng.normals(B * T * H * V), g = rng.uniforms(B * T * H * K, -3, 0), beta = rng.uniforms(B * T * H, 0, 1);
  const S0 = rng.normals(B * H * K * V);
  const o = new Float32Array(B * T * H * V), S = new Float32Array(B * H * K * V);
  const scale = 1 / Math.sqrt(K);
  for (let b = 0; b < B; b++) {
    const sl = (a: Float32Array, n: number) => a.subarray(b * n, (b + 1) * n);
    const r = kdaRecurrence64({ q: sl(q, T * H * K), k: sl(k, T * H * K), v: sl(v, T * H * V), g: sl(g, T * H * K), beta: sl(beta, T * H), S: sl(S0, H * K * V) }, T, H, K, V, scale);
    o.set(r.o, b * T * H * V);
    S.set(r.S, b * H * K * V);
  }
  if (corrupt) o[o.length >> 1]! += 0.1;
  const f32 = (shape: number[], data: Float32Array) => ({ dtype: 'F32' as const, shape, data });
  return writeSafetensors(
    {
      q: f32([B, T, H, K], q), k: f32([B, T, H, K], k), v: f32([B, T, H, V], v), g: f32([B, T, H, K], g), beta: f32([B, T, H], beta),
      initial_state: f32([B, H, K, V], S0), o: f32([B, T, H, V], o), final_state: f32([B, H, K, V], S),
    },
    { scale: String(scale) },
  );
}

describe('npm run check:vectors -- DIR', () => {
  it('passes the shared vectors', () => {
    const r = cli(join(root, 'test/fixtures'));
    expect(r.out).toMatch(/all 54 checks within 0.00001/);
    expect(r.code).toBe(0);
  });

  it(`passes vector files it has never seen (seed ${SEED}): other shapes, batch, ragged chunks`, () => {
    const dir = mkdtempSync(join(tmp, 'fresh-'));
    const rng = new Rng(SEED);
    writeFileSync(join(dir, 'kda_fresh_a.safetensors'), freshVector(rng, 2, 70, 3, 20, 12));
    writeFileSync(join(dir, 'kda_fresh_b.safetensors'), freshVector(rng, 1, 130, 1, 8, 36));
    const r = cli(dir);
    expect(r.out, r.out).toMatch(/all 18 checks within/);
    expect(r.out.split('\n').filter((l) => l.startsWith('kda_fresh')).length).toBe(18);
    expect(r.code).toBe(0);
  });

  it('exits non-zero on a wrong expected value, a malformed file, or no vectors', () => {
    const dir = mkdtempSync(join(tmp, 'bad-'));
    const rng = new Rng(SEED + 1);
    writeFileSync(join(dir, 'kda_corrupt.safetensors'), freshVector(rng, 1, 5, 1, 4, 4, true));
    let r = cli(dir);
    expect(r.out).toMatch(/kda_corrupt\.safetensors\s+wasm-simd\s+step\s+\S+\s+\S+\s+FAIL/);
    expect(r.code).toBe(1);

    const dir2 = mkdtempSync(join(tmp, 'malformed-'));
    copyFileSync(join(root, 'test/fixtures/kda_decode_step.safetensors'), join(dir2, 'kda_ok.safetensors'));
    writeFileSync(join(dir2, 'kda_truncated.safetensors'), freshVector(rng, 1, 3, 1, 4, 4).subarray(0, 300));
    r = cli(dir2);
    expect(r.out).toMatch(/kda_truncated.safetensors\s+unreadable: .*past the/);
    expect(r.code).toBe(1);

    r = cli(mkdtempSync(join(tmp, 'empty-')));
    expect(r.out).toMatch(/no kda_\*.safetensors/);
    expect(r.code).toBe(2);
  });
});
