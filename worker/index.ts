/**
 * The Worker entry. Today it reports the kernel build's health: the SIMD wasm module (the
 * bundler hands it over as a compiled WebAssembly.Module) instantiated, its SIMD flag and API
 * version. The OpenAI-compatible app replaces these routes when the engine and server land;
 * running it under workerd (wrangler dev, vitest-pool-workers) is part of that work.
 */
import kleSimd from '../wasm/dist/kle-simd.wasm';
import { Kernels } from '../src/engine/kernels.js';
import { WasmBackend } from '../src/engine/wasm-backend.js';

let kernels: Promise<Kernels> | undefined;
function getKernels(): Promise<Kernels> {
  kernels ??= WasmBackend.instantiate('wasm-simd', kleSimd).then((b) => new Kernels(b));
  return kernels;
}

export default {
  async fetch(req: Request): Promise<Response> {
    const url = new URL(req.url);
    if (url.pathname === '/health') {
      const k = await getKernels();
      return Response.json({ ok: true, backend: k.name, simd: k.simdEnabled(), apiVersion: k.backend.call('kle_api_version', []) });
    }
    return Response.json({ error: { message: `no route for ${req.method} ${url.pathname}`, type: 'invalid_request_error' } }, { status: 404 });
  },
};
