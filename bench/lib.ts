import { cpus, totalmem, platform, arch } from 'node:os';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { EngineModel } from '../src/engine/engine.js';
import { packageRoot } from '../src/engine/node-kernels.js';
import { defaultModelDir } from '../src/node.js';

export { bind, type BoundArg as BenchArg, type BoundCall } from '../src/engine/bound-call.js';

/** A JSON file of the embedded default model (config.json, tokenizer.json...), parsed. */
export function defaultModelJson(file: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(defaultModelDir(), file), 'utf8')) as Record<string, unknown>;
}

/** The default model's tokenizer, as hfToGguf takes it to embed in a GGUF it writes. */
export function defaultTokenizer(): { tokenizerJson: Record<string, unknown>; tokenizerConfig: Record<string, unknown> } {
  return { tokenizerJson: defaultModelJson('tokenizer.json'), tokenizerConfig: defaultModelJson('tokenizer_config.json') };
}

/**
 * The GPU benches' --weights: the format the synthetic 48B model's matrices take on the device,
 * the bytes a matrix weight reads (Q8_0: a 34-byte block of 32), its name in tables and the
 * prefix of its result files (none for BF16, the benches' default)
 */
export function matrixWeights(value: string | undefined): { dtype: 'bf16' | 'q8_0'; bytes: number; name: string; tag: string } {
  if (value === undefined || value === 'bf16') return { dtype: 'bf16', bytes: 2, name: 'BF16', tag: '' };
  if (value === 'q8_0') return { dtype: 'q8_0', bytes: 34 / 32, name: 'Q8_0', tag: 'q8_0-' };
  throw new Error(`--weights ${value}: expected bf16 or q8_0`);
}

/** The median of a (the upper one of an even count). */
export function median(a: number[]): number {
  return [...a].sort((x, y) => x - y)[a.length >> 1]!;
}

/**
 * This runtime's pp and tg on an engine model as llama-bench defines them: a `pp`-token prompt
 * into a fresh session, and `tg` tokens one at a time from an empty context; tokens/s, each the
 * median of `runs` after timeIt's warm-up. wasm first runs four tg passes and a 64-token prefill:
 * V8 compiles lazily and optimizes a function once it has run a while, in every thread (the
 * threads build's workers took about five tg128 runs of the 1M model: 3,105 -> 6,100 tok/s).
 */
export function enginePpTg(engine: EngineModel, vocab: number, pp: number, tg: number, runs: number, warmUp: boolean): { ppTokS: number; tgTokS: number } {
  const prompt = Array.from({ length: pp }, (_, i) => (i * 7919 + 13) % vocab);
  const generate = () => {
    const s = engine.createSession();
    for (let i = 0; i < tg; i++) s.forward([(i * 31 + 7) % vocab]);
    return s;
  };
  if (warmUp)
    for (let w = 0; w < 4; w++) {
      const s = generate();
      s.forward(prompt.slice(0, 64));
      s.free();
    }
  const ppMs = timeIt(() => {
    const s = engine.createSession();
    s.forward(prompt);
    s.free();
  }, runs).median;
  const tgMs = timeIt(() => generate().free(), runs).median;
  return { ppTokS: pp / (ppMs / 1e3), tgTokS: tg / (tgMs / 1e3) };
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

/** The largest CPU cache in sysfs (the LLC), or 32 MiB where sysfs does not say. */
export function lastLevelCacheBytes(): number {
  const dir = '/sys/devices/system/cpu/cpu0/cache';
  let best = 0;
  if (existsSync(dir)) {
    for (const idx of readdirSync(dir).filter((d) => d.startsWith('index'))) {
      const m = /^(\d+)([KMG]?)/.exec(readFileSync(join(dir, idx, 'size'), 'utf8').trim());
      if (!m) continue;
      const bytes = Number(m[1]) * ({ '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 } as Record<string, number>)[m[2]!]!;
      best = Math.max(best, bytes);
    }
  }
  return best || 32 * 2 ** 20;
}

export function machine() {
  const c = cpus();
  return {
    cpu: c[0]?.model ?? 'unknown',
    llcMiB: Math.round(lastLevelCacheBytes() / 2 ** 20),
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

/** A GPU's name as a file tag: "NVIDIA H100 80GB HBM3" -> "h100". */
export function gpuTag(device: string): string {
  const m = /\b([A-Z]\d{2,4}[A-Za-z]*)\b/.exec(device.replace(/^NVIDIA\s+/i, ''));
  return (m ? m[1]! : device.replace(/[^A-Za-z0-9]+/g, '-')).toLowerCase();
}

/** Writes bench/results/<file>.json (a name that already carries its machine tag). */
export function writeResultAs(file: string, data: unknown): string {
  const dir = join(packageRoot(), 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${file}.json`);
  writeFileSync(path, JSON.stringify(data, null, 2) + '\n');
  return path;
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
