// npm run bench:cuda-engine   (on a machine with an NVIDIA GPU, after `npm run build:cuda`)
// The engine's CUDA backend against the native CPU engine on the same machine, in one run:
// prefill tokens/s and decode ms/token (median of 32 steps) of both, on the embedded default
// model and on a synthetic model with Kimi-Linear-48B's attention shapes (KDA 32 x 128, MLA 32
// heads, latent 512 + 64). Their agreement is a test: test/unit/cuda-parity.test.ts.
// --addon PATH --label NAME: another build of the addon (an old commit's, to compare in one run).
// Writes bench/results/cuda-engine-<gpu>[-<label>].json.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CudaBackend } from '../src/engine/cuda-backend.js';
import type { EngineModel } from '../src/engine/engine.js';
import { placeHfModel } from '../src/weights/hf-loader.js';
import { ATTENTION_48B_CONFIG, syntheticWeights } from '../src/weights/synthetic.js';
import { defaultModelDir, loadCudaBackend, nodeBackend } from '../src/node.js';
import { gpuTag, machine, table, writeResultAs } from './lib.js';


function tokens(n: number, V: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729 + ((i * i) % 13)) % V);
}

const speed: { model: string; backend: string; prefillTokens: number; prefillTokPerS: number; decodeMsPerToken: number }[] = [];
function timeBackend(name: string, model: EngineModel, prompt: number): void {
  const V = model.config.vocabSize;
  const s = model.createSession();
  s.forward(tokens(64, V, 9)); // warm-up: first launches, allocations
  s.free();
  const s2 = model.createSession();
  const t0 = performance.now();
  s2.forward(tokens(prompt, V, 3));
  const pre = performance.now() - t0;
  const t: number[] = [];
  for (let i = 0; i < 32; i++) {
    const t1 = performance.now();
    s2.forward([(i * 31) % V]);
    t.push(performance.now() - t1);
  }
  t.sort((a, b) => a - b);
  speed.push({ model: name, backend: model.backend.name, prefillTokens: prompt, prefillTokPerS: prompt / (pre / 1000), decodeMsPerToken: t[t.length >> 1]! });
  s2.free();
}

async function runModel(name: string, cfg: unknown, shards: { name: string; bytes: Uint8Array }[], prompt: number): Promise<void> {
  for (const backend of [await nodeBackend('native'), cuda]) {
    const m = await placeHfModel(backend, cfg, shards);
    timeBackend(name, m, prompt);
    m.free();
  }
}

const arg = (k: string) => { const i = process.argv.indexOf(k); return i > 0 ? process.argv[i + 1] : undefined; };
const addonPath = arg('--addon');
const label = arg('--label');
const cuda: CudaBackend = addonPath ? CudaBackend.load(addonPath) : loadCudaBackend();
console.error(`CUDA device: ${cuda.device} (compute ${cuda.computeCapability})`);
const dir = defaultModelDir();
await runModel('default (embedded)', JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')), [{ name: 'model.safetensors', bytes: readFileSync(join(dir, 'model.safetensors')) }], 1200);
await runModel('48B attention shapes (4 layers, 3 KDA + 1 MLA, MoE 16/4)', ATTENTION_48B_CONFIG, [{ name: 'wide', bytes: syntheticWeights(ATTENTION_48B_CONFIG, 7) }], 1200);

console.log(`machine: ${JSON.stringify(machine())}, GPU: ${cuda.device}${label ? `, addon: ${label} (${addonPath})` : ''}\n`);
console.log(table(['model', 'backend', 'prefill tokens', 'prefill tok/s', 'decode ms/token'], speed.map((s) => [s.model, s.backend, s.prefillTokens, s.prefillTokPerS.toFixed(0), s.decodeMsPerToken.toFixed(3)])));
for (const m of [...new Set(speed.map((s) => s.model))]) {
  const c = speed.find((s) => s.model === m && s.backend === 'native')!, g = speed.find((s) => s.model === m && s.backend === 'cuda')!;
  console.log(`${m}: GPU / CPU prefill ${(g.prefillTokPerS / c.prefillTokPerS).toFixed(1)}x, decode ${(c.decodeMsPerToken / g.decodeMsPerToken).toFixed(1)}x`);
}
console.log(`wrote ${writeResultAs(`cuda-engine-${gpuTag(cuda.device)}${label ? `-${label}` : ''}`, { date: new Date().toISOString(), machine: machine(), gpu: cuda.device, addon: label ?? 'build/cuda', speed })}`);
