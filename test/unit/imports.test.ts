// Data flows one way through src/: file bytes -> weights -> engine -> tokens -> HTTP. Each folder
// may import only from itself and the folders below it, and no two files import each other,
// directly or around a circle.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/engine/node-kernels.js';

/** bottom to top; a top-level file counts as the layer its name gives */
const LAYERS = ['util', 'formats', 'engine', 'tokenizer', 'weights', 'verify', 'generate', 'model', 'node.ts', 'server', 'router', 'host', 'gpu-node', 'cli', 'cli.ts', 'index.ts'];

const src = join(packageRoot(), 'src');
function files(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}
const layerOf = (file: string) => relative(src, file).split('/')[0]!;
const graph = new Map<string, string[]>();
for (const f of files(src)) {
  const text = readFileSync(f, 'utf8');
  const deps = [...text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s+'(\.[^']+)'/g)].map((m) => resolve(dirname(f), m[1]!).replace(/\.js$/, '.ts'));
  graph.set(f, deps);
}

describe('src/ imports run one way', () => {
  it('every folder imports only from itself and the folders below it', () => {
    expect([...graph.values()].flat().length).toBeGreaterThan(150); // the parse found the imports
    const upward: string[] = [];
    for (const [f, deps] of graph)
      for (const d of deps) {
        const from = LAYERS.indexOf(layerOf(f)), to = LAYERS.indexOf(layerOf(d));
        expect(from, `${relative(src, f)} is in no known layer`).toBeGreaterThanOrEqual(0);
        if (to > from) upward.push(`${relative(src, f)} -> ${relative(src, d)}`);
      }
    expect(upward).toEqual([]);
  });

  it('no file imports itself through others', () => {
    const state = new Map<string, 'open' | 'done'>();
    const cycles: string[] = [];
    const visit = (f: string, path: string[]) => {
      if (state.get(f) === 'done') return;
      if (state.get(f) === 'open') {
        cycles.push([...path.slice(path.indexOf(f)), f].map((p) => relative(src, p)).join(' -> '));
        return;
      }
      state.set(f, 'open');
      for (const d of graph.get(f) ?? []) visit(d, [...path, f]);
      state.set(f, 'done');
    };
    for (const f of graph.keys()) visit(f, []);
    expect(cycles).toEqual([]);
  });
});
