// npx tsx bench/browser-threads.ts [--chromium PATH]   (Debian: apt-get install chromium)
// The wasm threads build in a browser: a static page served with the headers that make it
// cross-origin isolated (COOP same-origin, COEP require-corp: SharedArrayBuffer and shared wasm
// memory need them), headless Chromium, the engine bundled for the browser by esbuild. The page
// makes a model wide enough that its work splits (KDA and MLA layers, MoE, BF16), runs a prefill
// and decode steps on 1 thread and on 2 (Web Workers it starts), checks the logits are the same
// to the bit, and posts its timings back. Not in `npm test` (CI has no browser): a benchmark run
// by hand, results in bench/results/browser-threads-<machine>.json.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { packageRoot } from '../src/node.js';
import { machine, table, writeResult } from './lib.js';
import { bundlePage, runPageInChromium } from './browser-page.js';

const { values } = parseArgs({ options: { chromium: { type: 'string', default: 'chromium' } } });
const root = packageRoot();

// the page's script: everything it needs from the engine, bundled
const page = `
import { EngineModel, parseKimiConfig, WasmBackend } from ${JSON.stringify(join(root, 'src', 'index.ts'))};
const out = { isolated: globalThis.crossOriginIsolated, ua: navigator.userAgent, cores: navigator.hardwareConcurrency };
try {
  const wasm = await (await fetch('/kle-simd-mt.wasm')).arrayBuffer();
  const backend = await WasmBackend.instantiate('wasm-threads', wasm);
  const config = parseKimiConfig(${JSON.stringify({
    architectures: ['KimiLinearForCausalLM'], model_type: 'kimi_linear', vocab_size: 4096, hidden_size: 512, intermediate_size: 1024,
    num_hidden_layers: 4, num_attention_heads: 4, num_key_value_heads: 4, kv_lora_rank: 128, q_lora_rank: null, qk_nope_head_dim: 64,
    qk_rope_head_dim: 32, v_head_dim: 64, mla_use_nope: true, rms_norm_eps: 1e-5, tie_word_embeddings: false,
    linear_attn_config: { kda_layers: [1, 2, 3], full_attn_layers: [4], num_heads: 4, head_dim: 128, short_conv_kernel_size: 4 },
    num_experts: 16, num_experts_per_token: 2, num_shared_experts: 1, moe_intermediate_size: 256, first_k_dense_replace: 1,
    moe_layer_freq: 1, moe_renormalize: true, moe_router_activation_func: 'sigmoid', routed_scaling_factor: 2.446,
    use_grouped_topk: true, num_expert_group: 1, topk_group: 1,
  })});
  const m = EngineModel.synthesize(backend, config, 9, 'bf16');
  const prompt = Array.from({ length: 256 }, (_, i) => (i * 7919 + 13) % 4096);
  const runs = [];
  { // warm up: the first calls compile the module's functions (lazily, then optimized)
    const s = m.createSession();
    s.forward(prompt);
    for (let i = 0; i < 8; i++) s.forward([i]);
    s.free();
  }
  for (const n of [1, 2]) {
    m.threads(n);
    const serving = await m.threadsReady();
    const s = m.createSession();
    let t0 = performance.now();
    const pre = s.forward(prompt, true);
    const prefillMs = performance.now() - t0;
    t0 = performance.now();
    const dec = [];
    for (let i = 0; i < 32; i++) dec.push(s.forward([(i * 31 + 7) % 4096]));
    const decodeMs = (performance.now() - t0) / 32;
    s.free();
    runs.push({ threads: n, serving, prefillMs, decodeMs, logits: [pre, ...dec] });
  }
  const same = runs[1].logits.every((a, i) => a.length === runs[0].logits[i].length && a.every((v, j) => v === runs[0].logits[i][j]));
  out.runs = runs.map(({ logits, ...r }) => r);
  out.identical = same;
  m.free();
} catch (e) { out.error = String(e && e.stack || e); }
await fetch('/result', { method: 'POST', body: JSON.stringify(out) });
`;
const js = await bundlePage(page, root);
const wasm = readFileSync(join(root, 'wasm', 'dist', 'kle-simd-mt.wasm'));
interface Result { isolated: boolean; ua: string; cores: number; runs?: { threads: number; serving: number; prefillMs: number; decodeMs: number }[]; identical?: boolean; error?: string }
const result = await runPageInChromium<Result>({ chromium: values.chromium!, appJs: js, timeoutMs: 120_000, assets: { '/kle-simd-mt.wasm': { type: 'application/wasm', data: wasm } } });
if (result.error || !result.runs) throw new Error(`the page failed: ${result.error}`);
console.log(`machine: ${JSON.stringify(machine())}; ${result.ua}; cross-origin isolated: ${result.isolated}; hardwareConcurrency ${result.cores}\n`);
console.log(`wasm threads in the browser (BF16 model of 4 layers, hidden 512; 256-token prefill, then 32 decode steps); same logits on 1 and 2 threads: ${result.identical}\n`);
const one = result.runs[0]!;
console.log(table(['threads', 'serving', 'prefill ms', 'decode ms/token', 'prefill speed-up', 'decode speed-up'],
  result.runs.map((r) => [r.threads, r.serving, r.prefillMs.toFixed(1), r.decodeMs.toFixed(2), `${(one.prefillMs / r.prefillMs).toFixed(2)}x`, `${(one.decodeMs / r.decodeMs).toFixed(2)}x`])));
console.log(`wrote ${writeResult('browser-threads', { date: new Date().toISOString(), machine: machine(), ...result })}`);
if (!result.identical) process.exitCode = 1;
