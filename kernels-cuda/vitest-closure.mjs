// Prints the package folders (relative to node_modules/) that vitest needs at run time: its
// dependencies and theirs, with the optional ones this machine installed (esbuild's and rollup's
// platform binaries). kernels-cuda/carry.sh packs them for the GPU machine, which has no npm.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', 'node_modules');
const seen = new Set();
const todo = ['vitest'];
while (todo.length) {
  const name = todo.pop();
  if (seen.has(name) || !existsSync(join(root, name, 'package.json'))) continue;
  seen.add(name);
  const pkg = JSON.parse(readFileSync(join(root, name, 'package.json'), 'utf8'));
  todo.push(...Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies }));
}
console.log([...seen].sort().join('\n'));
