// The package as users get it: packed, installed into a fresh project from the tarball, then
// imported and run in Node, Bun and Deno (binaries from npm packages, no downloads).
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/engine/node-kernels.js';

const root = packageRoot();
const dir = mkdtempSync(join(tmpdir(), 'kle-runtimes-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { cwd: dir, encoding: 'utf8', env: { ...process.env, DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 24 });
}

describe('the packed package in Node, Bun and Deno', () => {
  const results: Record<string, { runtime: string; simd: string; tokens: number[]; sampled: number[]; status: number; completion: string | null; threadsServing: number; threadsSame: boolean }> = {};

  it('packs and installs into a fresh project', () => {
    execFileSync('npm', ['pack', '--pack-destination', dir], { cwd: root, stdio: 'ignore' });
    const tgz = readdirSync(dir).find((f) => f.endsWith('.tgz'))!;
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'kle-smoke', private: true, type: 'module' }));
    execFileSync('npm', ['install', '--no-audit', '--no-fund', '--no-save', `./${tgz}`], { cwd: dir, stdio: 'ignore' });
    copyFileSync(join(root, 'test', 'runtimes', 'smoke.mjs'), join(dir, 'smoke.mjs'));
    expect(existsSync(join(dir, 'node_modules', 'kimi-linear-edge', 'dist', 'src', 'index.js'))).toBe(true);
  }, 300_000);

  const runtimes: [string, string, string[]][] = [
    ['node', process.execPath, ['smoke.mjs']],
    ['bun', join(root, 'node_modules', '@oven', 'bun-linux-x64', 'bin', 'bun'), ['smoke.mjs']],
    ['deno', join(root, 'node_modules', '@deno', 'linux-x64-glibc', 'deno'), ['run', '--allow-read', '--allow-env', 'smoke.mjs']],
  ];
  for (const [name, bin, args] of runtimes) {
    it(`${name}: imports the package and generates from the default model`, () => {
      const out = run(bin, args).trim().split('\n').at(-1)!;
      const r = JSON.parse(out) as (typeof results)[string];
      expect(r.runtime.startsWith(name)).toBe(true);
      expect(r.simd).toBe('wasm-simd');
      expect(r.tokens.length).toBeGreaterThan(0);
      expect(r.status).toBe(200);
      // wasm threads in this runtime: both threads serving, the logits those of one thread
      expect(r.threadsServing).toBe(2);
      expect(r.threadsSame).toBe(true);
      results[name] = r;
    }, 120_000);
  }

  it('every runtime generates the same tokens, greedy and sampled with a seed (the AssemblyScript sampler)', () => {
    const all = Object.values(results);
    expect(all.length).toBe(3);
    for (const r of all) {
      expect(r.tokens).toEqual(all[0]!.tokens);
      expect(r.sampled.length).toBe(24);
      expect(r.sampled).toEqual(all[0]!.sampled);
    }
  });
});
