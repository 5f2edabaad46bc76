// The relaxed-SIMD build (kle-simd-relaxed.wasm: relaxed SIMD's int8 dot for the K-quants) where
// a runtime runs it: in Deno (V8 15) and Bun (JavaScriptCore; both binaries from npm), its quantized matvecs against
// the SIMD build's and the scalar integer reference on the same weights. Here in Node the
// loaders choose by relaxedSimdWorks(), which Node 20 fails (its V8 11.3 returns twice the dot
// behind --experimental-wasm-relaxed-simd).
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadWasmBackend, packageRoot } from '../../src/engine/node-kernels.js';
import { relaxedSimdWorks } from '../../src/engine/relaxed-simd.js';

const root = packageRoot();

describe('the relaxed-SIMD build', () => {
  it('Node loads it only where the runtime runs the relaxed dot right, else the SIMD build', async () => {
    const auto = await loadWasmBackend('auto');
    expect(auto.name).toBe(relaxedSimdWorks() ? 'wasm-relaxed' : 'wasm-simd');
    if (!relaxedSimdWorks()) await expect(loadWasmBackend('relaxed')).rejects.toThrow(/does not run relaxed SIMD/);
  });

  const runtimes: [string, string, string[]][] = [
    ['deno', join(root, 'node_modules', '@deno', 'linux-x64-glibc', 'deno'), ['run', '--allow-read', '--sloppy-imports']],
    ['bun', join(root, 'node_modules', '@oven', 'bun-linux-x64', 'bin', 'bun'), []],
  ];
  for (const [name, bin, args] of runtimes)
    it(`${name}: its K-quant matvecs equal the SIMD build within float reassociation, the others to the bit`, () => {
      const out = execFileSync(bin, [...args, join(root, 'test', 'runtimes', 'relaxed-check.ts')], {
        cwd: root, encoding: 'utf8', env: { ...process.env, DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'],
      });
      const r = JSON.parse(out.trim().split('\n').at(-1)!) as { runtime: string; relaxedSimdWorks: boolean; rows: { fmt: string; T: number; vsSimd: number; vsRef: number }[] };
      expect(r.runtime.startsWith(name)).toBe(true);
      expect(r.relaxedSimdWorks).toBe(true);
      expect(r.rows.length).toBe(15);
      for (const row of r.rows) {
        const what = `${name} ${row.fmt} T=${row.T}`;
        // Q4_K/Q5_K take the relaxed dot: the same integers, summed into other f32 lanes
        if (row.fmt === 'q4_k' || row.fmt === 'q5_k') expect(row.vsSimd, what).toBeLessThan(1e-6);
        else expect(row.vsSimd, what).toBe(0);
        expect(row.vsRef, what).toBeLessThan(1e-6);
      }
    }, 120_000);
});
