// npm run bench:decode-sampling [-- --tokens 32]
// What the sampler costs a whole model at Kimi's vocabulary: the synthetic ~105M-parameter
// Kimi Linear of bench:generate with its vocabulary widened to 163,840 (the embedding and the
// head then hold 252M of its 370M parameters; Q8_0 GGUF made in memory), decoding at
// temperature 0.7, each step sampled by the TypeScript reference sampler (before) or the
// AssemblyScript one (after), alternating in the same run, on the wasm SIMD engine (the sampler
// reads the logits in place) and natively (they are copied in). Writes
// bench/results/decode-sampling-<machine>.json.
import { parseArgs } from 'node:util';
import { Kernels } from '../src/engine/kernels.js';
import { loadModel } from '../src/model/load.js';
import { parseSafetensors } from '../src/formats/safetensors.js';
import { sourceFromFiles } from '../src/formats/source.js';
import { syntheticWeights } from '../src/weights/synthetic.js';
import { hfToGguf } from '../src/weights/to-gguf.js';
import { Sampler } from '../src/generate/sampler.js';
import { ReferenceSampler } from '../src/generate/sampler-reference.js';
import { nodeBackend } from '../src/node.js';
import { MID_CONFIG } from './generate.js';
import { machine, table, writeResult } from './lib.js';

const { values } = parseArgs({ options: { tokens: { type: 'string', default: '32' } } });
const N = Number(values.tokens);
const config = { ...MID_CONFIG, vocab_size: 163_840 };
const t0 = performance.now();
const wasm = await nodeBackend('wasm');
const gguf = hfToGguf(config, parseSafetensors(syntheticWeights(config, 7, { dtype: 'BF16' })), new Kernels(wasm), { weights: 'Q8_0' });
console.error(`model made: ${(gguf.length / 2 ** 20).toFixed(0)} MiB Q8_0 GGUF in ${((performance.now() - t0) / 1000).toFixed(0)} s`);

const rows: { backend: string; sampler: string; msPerToken: number; samplerMs: number }[] = [];
for (const name of ['wasm', 'native'] as const) {
  const model = await loadModel(sourceFromFiles({ 'model.gguf': gguf }), { backend: await nodeBackend(name) });
  const prompt = Array.from({ length: 16 }, (_, i) => (i * 977) % 163_840);
  const o = { temperature: 0.7, seed: 3 };
  const samplers = { before: new ReferenceSampler(o), after: new Sampler(o) };
  const times: Record<string, { step: number[]; sample: number[] }> = { before: { step: [], sample: [] }, after: { step: [], sample: [] } };
  for (let round = 0; round < 2; round++) {
    for (const which of ['after', 'before'] as const) {
      const s = model.createSession();
      s.prefill(prompt);
      const engine = (s as unknown as { engine: { logitsRef(): Parameters<Sampler['sample']>[0] | null; forward(t: number[]): Float32Array } }).engine;
      for (let i = 0; i < N / 2; i++) {
        const a = performance.now();
        const ref = engine.logitsRef()!;
        const t = which === 'after' ? samplers.after.sample(ref, s.tokens) : samplers.before.sample(ref instanceof Float32Array ? ref : ref.copy(), s.tokens);
        const b = performance.now();
        engine.forward([t]);
        const c = performance.now();
        times[which]!.sample.push(b - a);
        times[which]!.step.push(c - a);
      }
      s.free();
    }
  }
  const med = (x: number[]) => [...x].sort((p, q) => p - q)[x.length >> 1]!;
  for (const which of ['before', 'after'] as const) rows.push({ backend: model.backend.name, sampler: which, msPerToken: med(times[which]!.step), samplerMs: med(times[which]!.sample) });
  model.free();
  console.error(`${name} done`);
}
console.log(`machine: ${JSON.stringify(machine())}\n105M-parameter config with a 163,840-token vocabulary (370M parameters, Q8_0), temperature 0.7, ${N} decode steps per sampler per backend, alternating\n`);
console.log(table(['backend', 'sampler', 'ms per token (median)', 'of which sampling', 'tokens/s'], rows.map((r) => [r.backend, r.sampler === 'before' ? 'before (TypeScript, sort)' : 'after (AssemblyScript)', r.msPerToken.toFixed(1), r.samplerMs.toFixed(2), (1000 / r.msPerToken).toFixed(2)])));
for (const b of new Set(rows.map((r) => r.backend))) {
  const [x, y] = [rows.find((r) => r.backend === b && r.sampler === 'before')!, rows.find((r) => r.backend === b && r.sampler === 'after')!];
  console.log(`${b}: ${(x.msPerToken / y.msPerToken).toFixed(2)}x the decode rate`);
}
writeResult('decode-sampling', { date: new Date().toISOString(), machine: machine(), tokens: N, config, rows });
