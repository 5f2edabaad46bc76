// Runs in Node, Bun and Deno from a project that installed the packed kimi-linear-edge tarball:
// imports the package, loads the embedded default model on the SIMD wasm engine, generates
// greedily and, with the AssemblyScript sampler installed, sampled with a seed (which must give
// the same tokens in every runtime), runs the wasm threads build on two threads, and one request
// through the server app. Prints one JSON line.
import { readFile } from 'node:fs/promises';
import { EngineModel, installRuntimeModule, loadModel, parseKimiConfig, sourceFromFiles, WasmBackend } from 'kimi-linear-edge';
import { createApp } from 'kimi-linear-edge/server';

const runtime = typeof Deno !== 'undefined' ? `deno ${Deno.version.deno}` : typeof Bun !== 'undefined' ? `bun ${Bun.version}` : `node ${process.version}`;
const root = new URL('./node_modules/kimi-linear-edge/', import.meta.url);
const backend = await WasmBackend.instantiate('wasm-simd', await readFile(new URL('wasm/dist/kle-simd.wasm', root)));
const files = {};
for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) files[f] = new Uint8Array(await readFile(new URL(`models/default/${f}`, root)));
const model = await loadModel(sourceFromFiles(files), { backend });
const tokens = [];
let text = '';
for await (const ev of model.createSession().generate([{ role: 'user', content: 'Hello from every runtime' }], { maxTokens: 12, temperature: 0 })) {
  if (ev.type === 'token') {
    text += ev.text;
    if (ev.token >= 0) tokens.push(ev.token);
  }
}
installRuntimeModule(await WebAssembly.compile(await readFile(new URL('wasm/dist/kle-as.wasm', root))));
const sampled = [];
for await (const ev of model.createSession().generate('The jury said', { maxTokens: 24, temperature: 0.9, topP: 0.95, topK: 50, repetitionPenalty: 1.1, seed: 1234 })) {
  if (ev.type === 'token' && ev.token >= 0) sampled.push(ev.token);
}
// the wasm threads build: workers on one shared memory, started by this runtime (Web Workers in
// Bun and Deno, worker_threads in Node); a model wide enough that its work splits, the same
// logits on 1 and 2 threads
const mt = await WasmBackend.instantiate('wasm-threads', await readFile(new URL('wasm/dist/kle-simd-mt.wasm', root)));
const wide = parseKimiConfig({ ...JSON.parse(new TextDecoder().decode(files['config.json'])), hidden_size: 256, intermediate_size: 512,
  linear_attn_config: { kda_layers: [1, 2, 3], full_attn_layers: [4], num_heads: 4, head_dim: 128, short_conv_kernel_size: 4 } });
const wm = EngineModel.synthesize(mt, wide, 5, 'bf16');
const prompt = Array.from({ length: 80 }, (_, i) => (i * 37 + 3) % 512);
const oneThread = wm.createSession().forward(prompt, true);
wm.threads(2);
const threadsServing = await wm.threadsReady();
const twoThreads = wm.createSession().forward(prompt, true);
const threadsSame = twoThreads.length === oneThread.length && twoThreads.every((v, i) => v === oneThread[i]);
wm.free();
const app = createApp({ model, modelId: 'm' });
const res = await app.request('/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', prompt: 'Hi', max_tokens: 4, temperature: 0 }) });
const body = await res.json();
console.log(JSON.stringify({ runtime, simd: backend.name, tokens, sampled, text, status: res.status, completion: body.choices?.[0]?.text ?? null, threadsServing, threadsSame }));
