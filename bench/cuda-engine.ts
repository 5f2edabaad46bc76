// npm run bench:cuda-engine   (on a machine with an NVIDIA GPU, after `npm run build:cuda`)
// The engine's CUDA backend against the native CPU engine on the same machine, in one run:
//   correctness: all-token logits of a prefill, then decode steps, on the embedded default model
//   and on a synthetic model with Kimi-Linear-48B's attention shapes (KDA 32 x 128, MLA 32 heads,
//   latent 512 + 64), prefill == decode on the GPU, and state blobs moved CPU -> GPU -> CPU;
//   speed: prefill tokens/s and decode ms/token of both backends.
// Exits 1 when a check fails. Writes bench/results/cuda-engine-<gpu>.json.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CudaBackend } from '../src/engine/cuda-backend.js';
import type { EngineModel, EngineSession } from '../src/engine/engine.js';
import { placeHfModel } from '../src/model/hf-loader.js';
import { syntheticWeights } from '../src/model/synthetic.js';
import { defaultModelDir, loadCudaBackend, nodeBackend } from '../src/node.js';
import { gpuTag, machine, table, writeResultAs } from './lib.js';

const WIDE = {
  architectures: ['KimiLinearForCausalLM'], model_type: 'kimi_linear', vocab_size: 4096, hidden_size: 1024, intermediate_size: 2048,
  num_hidden_layers: 4, num_attention_heads: 32, num_key_value_heads: 32, kv_lora_rank: 512, q_lora_rank: null,
  qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, mla_use_nope: true, rms_norm_eps: 1e-5, tie_word_embeddings: false,
  linear_attn_config: { kda_layers: [1, 2, 3], full_attn_layers: [4], num_heads: 32, head_dim: 128, short_conv_kernel_size: 4 },
  num_experts: 16, num_experts_per_token: 4, num_shared_experts: 1, moe_intermediate_size: 256, first_k_dense_replace: 1,
  moe_layer_freq: 1, moe_renormalize: true, moe_router_activation_func: 'sigmoid', routed_scaling_factor: 2.446,
  use_grouped_topk: true, num_expert_group: 1, topk_group: 1, model_max_length: 1 << 22,
};

/** relative L2 error of a against reference b, and the share of rows (of width V) whose argmax agrees */
function compare(a: Float32Array, b: Float32Array, V: number): { relL2: number; maxAbs: number; argmaxAgree: number } {
  let num = 0, den = 0, maxAbs = 0, agree = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
    maxAbs = Math.max(maxAbs, Math.abs(d));
  }
  const rows = a.length / V;
  for (let r = 0; r < rows; r++) {
    let ia = 0, ib = 0;
    for (let j = 1; j < V; j++) {
      if (a[r * V + j]! > a[r * V + ia]!) ia = j;
      if (b[r * V + j]! > b[r * V + ib]!) ib = j;
    }
    agree += ia === ib ? 1 : 0;
  }
  return { relL2: Math.sqrt(num / den), maxAbs, argmaxAgree: agree / rows };
}

const TOL = 1e-4; // f32 on both sides, different summation orders: measured errors sit near 1e-6
const checks: { model: string; check: string; relL2: number; maxAbs: number; argmaxAgree: number; ok: boolean }[] = [];
function record(model: string, check: string, r: ReturnType<typeof compare>): void {
  const ok = r.relL2 < TOL && r.argmaxAgree >= 0.99;
  checks.push({ model, check, ...r, ok });
  console.error(`${ok ? 'ok  ' : 'FAIL'} ${model}: ${check}: rel L2 ${r.relL2.toExponential(2)}, max abs ${r.maxAbs.toExponential(2)}, argmax ${(100 * r.argmaxAgree).toFixed(0)}%`);
}

function tokens(n: number, V: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729 + ((i * i) % 13)) % V);
}

function decodeAll(s: EngineSession, toks: number[], V: number): Float32Array {
  const out = new Float32Array(toks.length * V);
  toks.forEach((t, i) => out.set(s.forward([t]), i * V));
  return out;
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
  const cpu = await placeHfModel(await nodeBackend('native'), cfg, shards);
  const gpu = await placeHfModel(cuda, cfg, shards);
  const V = cpu.config.vocabSize;
  const p = tokens(prompt, V, 1), d = tokens(24, V, 2);
  const sc = cpu.createSession(), sg = gpu.createSession();
  record(name, `prefill ${prompt} tokens, every token's logits`, compare(sg.forward(p, true), sc.forward(p, true), V));
  record(name, `then ${d.length} decode steps`, compare(decodeAll(sg, d, V), decodeAll(sc, d, V), V));
  // the GPU against itself: prefill then decode of the same tokens one by one
  const g1 = gpu.createSession(), g2 = gpu.createSession();
  const q = tokens(200, V, 4);
  record(name, 'GPU prefill == GPU token-by-token decode (200 tokens)', compare(g1.forward(q, true), decodeAll(g2, q, V), V));
  // blobs: the CPU session's state continues on the GPU, and back; whole and in parts (the path
  // of blobs past 4 GiB)
  const moved = gpu.createSession(), movedInParts = gpu.createSession();
  moved.load(sc.save());
  movedInParts.loadParts(sc.saveParts(4096), sc.stateSize());
  const back = cpu.createSession(), backInParts = cpu.createSession();
  back.load(moved.save());
  backInParts.loadParts(moved.saveParts(1 << 16), moved.stateSize());
  const nxt = tokens(8, V, 5);
  const onCpu = decodeAll(sc, nxt, V), onGpu = decodeAll(sg, nxt, V);
  record(name, 'CPU blob -> GPU session, 8 more tokens', compare(decodeAll(moved, nxt, V), onCpu, V));
  record(name, 'CPU blob in 4 KiB parts -> GPU session, 8 more tokens', compare(decodeAll(movedInParts, nxt, V), onCpu, V));
  record(name, 'GPU blob -> CPU session, 8 more tokens', compare(decodeAll(back, nxt, V), onGpu, V));
  record(name, 'GPU blob in 64 KiB parts -> CPU session, 8 more tokens', compare(decodeAll(backInParts, nxt, V), onGpu, V));
  for (const s of [sc, sg, g1, g2, moved, movedInParts, back, backInParts]) s.free();
  timeBackend(name, cpu, prompt * 4);
  timeBackend(name, gpu, prompt * 4);
  cpu.free();
  gpu.free();
}

const cuda: CudaBackend = loadCudaBackend();
console.error(`CUDA device: ${cuda.device} (compute ${cuda.computeCapability})`);
const dir = defaultModelDir();
await runModel('default (embedded)', JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')), [{ name: 'model.safetensors', bytes: readFileSync(join(dir, 'model.safetensors')) }], 300);
// --default-only: the small model alone (the compute-sanitizer pass, where everything runs ~50x slower)
if (!process.argv.includes('--default-only')) await runModel('48B attention shapes (4 layers, 3 KDA + 1 MLA, MoE 16/4)', WIDE, [{ name: 'wide', bytes: syntheticWeights(WIDE, 7) }], 300);

console.log(`machine: ${JSON.stringify(machine())}, GPU: ${cuda.device}\n`);
console.log(table(['model', 'check', 'rel L2', 'max abs', 'argmax', 'ok'], checks.map((c) => [c.model, c.check, c.relL2.toExponential(2), c.maxAbs.toExponential(2), `${(100 * c.argmaxAgree).toFixed(0)}%`, c.ok ? 'yes' : 'NO'])));
console.log('');
console.log(table(['model', 'backend', 'prefill tokens', 'prefill tok/s', 'decode ms/token'], speed.map((s) => [s.model, s.backend, s.prefillTokens, s.prefillTokPerS.toFixed(0), s.decodeMsPerToken.toFixed(3)])));
for (const m of [...new Set(speed.map((s) => s.model))]) {
  const c = speed.find((s) => s.model === m && s.backend === 'native')!, g = speed.find((s) => s.model === m && s.backend === 'cuda')!;
  console.log(`${m}: GPU / CPU prefill ${(g.prefillTokPerS / c.prefillTokPerS).toFixed(1)}x, decode ${(c.decodeMsPerToken / g.decodeMsPerToken).toFixed(1)}x`);
}
if (!process.argv.includes('--default-only')) console.log(`wrote ${writeResultAs(`cuda-engine-${gpuTag(cuda.device)}`, { date: new Date().toISOString(), machine: machine(), gpu: cuda.device, tolerance: TOL, checks, speed })}`);
process.exit(checks.every((c) => c.ok) ? 0 : 1);
