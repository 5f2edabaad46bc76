/// <reference path="../worker/wasm.d.ts" />
// The sampling benchmark inside workerd (bundled by bench/sampling.ts, run by Miniflare): workerd
// stops its clocks while code runs, so /run?v=V&mode=M&n=N&impl=I only samples N times and the
// caller times requests of different N from outside.
import engine from '../wasm/dist/kle-simd.wasm';
import sampler from '../wasm/dist/kle-as.wasm';
import { gaussian, MODES } from './sampling-run.js';
import { Sampler } from '../src/generate/sampler.js';
import { ReferenceSampler } from '../src/generate/sampler-reference.js';
import { WasmBackend } from '../src/engine/wasm-backend.js';
import { installRuntimeModule } from '../src/engine/as-module.js';

let backend: WasmBackend | null = null;

export default {
  async fetch(req: Request): Promise<Response> {
    const u = new URL(req.url);
    const V = Number(u.searchParams.get('v')), n = Number(u.searchParams.get('n')), mode = u.searchParams.get('mode')!, impl = u.searchParams.get('impl')!;
    installRuntimeModule(sampler);
    backend ??= await WasmBackend.instantiate('wasm-simd', engine);
    const b = backend;
    const addr = b.alloc(4 * V);
    const l = b.f32(addr, V);
    l.set(gaussian(V, V));
    const src = { backend: b, address: addr, vocabSize: V, copy: () => b.f32(addr, V).slice() };
    const o = MODES[mode]!;
    const ctx = Array.from({ length: 1000 }, (_, i) => (i * 7919) % 5000);
    let x = 0;
    if (impl === 'reference') {
      const s = new ReferenceSampler({ ...o, seed: 1 });
      const copy = l.slice();
      for (let i = 0; i < n; i++) x += s.sample(copy, ctx);
    } else {
      const s = new Sampler({ ...o, seed: 1 });
      for (let i = 0; i < n; i++) x += s.sample(src, ctx);
    }
    b.free(addr);
    return new Response(String(x));
  },
};
