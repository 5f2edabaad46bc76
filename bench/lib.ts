import { cpus, totalmem, platform, arch } from 'node:os';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KernelBackend } from '../src/engine/backend.js';
import type { KleFunctionName } from '../src/engine/kle-abi.js';
import { KLE_ABI } from '../src/engine/kle-abi.js';
import { WasmBackend } from '../src/engine/wasm-backend.js';
import { packageRoot } from '../src/engine/node-kernels.js';

export type BenchArg = number | Float32Array | Uint8Array | Int32Array | null;

/**
 * A kernel call with its arguments placed once, so that timing covers the kernel only: for wasm
 * the arrays are copied into linear memory up front and the call passes pointers; for native the
 * addon takes the typed arrays by pointer anyway.
 */
export interface BoundCall {
  run(): number;
  /** reads an array argument back (after the runs), for sanity checks */
  read(i: number): Float32Array;
  dispose(): void;
}

export function bind(backend: KernelBackend, fn: KleFunctionName, args: BenchArg[]): BoundCall {
  if (backend instanceof WasmBackend) {
    const ptrs: number[] = [];
    const owned: number[] = [];
    KLE_ABI[fn].params.forEach((p, i) => {
      const a = args[i];
      if (p.kind === 'in' || p.kind === 'inout') {
        if (!a || typeof a === 'number') return void ptrs.push(0);
        const ptr = backend.alloc(a.byteLength);
        owned.push(ptr);
        new Uint8Array(backend.memory.buffer, ptr, a.byteLength).set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
        ptrs.push(ptr);
      } else ptrs.push(a as number);
    });
    return {
      run: () => backend.raw(fn, ...ptrs),
      read: (i) => backend.f32(ptrs[i]!, (args[i] as Float32Array).length).slice(),
      dispose: () => owned.forEach((p) => backend.free(p)),
    };
  }
  return {
    run: () => backend.call(fn, args),
    read: (i) => (args[i] as Float32Array).slice(),
    dispose: () => {},
  };
}

/** Median wall time in ms of `runs` calls after one warm-up; stops early past `budgetMs`. */
export function timeIt(f: () => unknown, runs: number, budgetMs = 20_000): { median: number; runs: number } {
  f();
  const t: number[] = [];
  const start = performance.now();
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    f();
    t.push(performance.now() - t0);
    if (performance.now() - start > budgetMs && t.length >= 3) break;
  }
  t.sort((a, b) => a - b);
  return { median: t[t.length >> 1]!, runs: t.length };
}

export function machine() {
  const c = cpus();
  return {
    cpu: c[0]?.model ?? 'unknown',
    cores: c.length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    platform: `${platform()}-${arch()}`,
    v8: process.versions.v8,
  };
}

export function machineTag(): string {
  const m = machine();
  return `${m.cpu.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '').toLowerCase()}-${m.cores}c`;
}

export function writeResult(name: string, data: unknown): string {
  const dir = join(packageRoot(), 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}-${machineTag()}.json`);
  writeFileSync(file, JSON.stringify(data, null, 2) + '\n');
  return file;
}

export function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map(String))];
  const w = headers.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  const line = (r: string[]) => '| ' + r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join(' | ') + ' |';
  return [line(headers), '|' + w.map((x, i) => (i === 0 ? ':' : '') + '-'.repeat(x + 1) + (i === 0 ? '-' : ':')).join('|') + '|', ...cells.slice(1).map(line)].join('\n');
}
