// npm run bench:generate [-- --quick]
// Prefill and decode tokens/s of whole models, wasm SIMD in Node vs native, each run in its own
// child process so its peak memory is its own: the embedded default model (BF16, 2.5 MB) and a
// synthetic ~105M-parameter Kimi Linear (8 layers, 6 KDA : 2 MLA, 8 experts, Q8_0 GGUF, made in
// memory). Also the decode rate the machine's read bandwidth would allow for the bytes each token
// reads, measured in the same run. Writes bench/results/generate-<machine>.json.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Kernels } from '../src/engine/kernels.js';
import { loadModel } from '../src/model/load.js';
import { parseSafetensors } from '../src/formats/safetensors.js';
import { sourceFromFiles } from '../src/formats/source.js';
import { syntheticWeights } from '../src/weights/synthetic.js';
import { hfToGguf } from '../src/weights/to-gguf.js';
import { loadModelFromDirectory, nodeBackend, type NodeBackendName } from '../src/node.js';
import { bind, lastLevelCacheBytes, machine, machineTag, table, timeIt, writeResult } from './lib.js';
import { barChart } from './svg.js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../src/node.js';

const quick = process.argv.includes('--quick');

/** ~105M parameters: embeddings 2 x 12.3M, 7 MoE layers x 8M, attention 8 x 2.5M, one dense FFN. */
export const MID_CONFIG = {
  architectures: ['KimiLinearForCausalLM'], model_type: 'kimi_linear',
  vocab_size: 16000, hidden_size: 768, intermediate_size: 2048, num_hidden_layers: 8,
  num_attention_heads: 6, num_key_value_heads: 6, kv_lora_rank: 256, q_lora_rank: null,
  qk_nope_head_dim: 64, qk_rope_head_dim: 32, v_head_dim: 64, mla_use_nope: true,
  hidden_act: 'silu', rms_norm_eps: 1e-5, tie_word_embeddings: false,
  linear_attn_config: { kda_layers: [1, 2, 3, 5, 6, 7], full_attn_layers: [4, 8], num_heads: 6, head_dim: 128, short_conv_kernel_size: 4 },
  num_experts: 8, num_experts_per_token: 2, num_shared_experts: 1, moe_intermediate_size: 384,
  first_k_dense_replace: 1, moe_layer_freq: 1, moe_renormalize: true, moe_router_activation_func: 'sigmoid',
  routed_scaling_factor: 2.446, use_grouped_topk: true, num_expert_group: 1, topk_group: 1,
  bos_token_id: 1, eos_token_id: 2,
};

interface ChildResult {
  model: string;
  backend: string;
  params: number;
  weightBytes: number;
  /** weight bytes one decode token reads (active experts only) */
  bytesPerToken: number;
  prefillTokens: number;
  prefillTokS: number;
  decodeTokS: number;
  decodeMsMedian: number;
  loadMs: number;
  peakRssMiB: number;
  wasmMemoryMiB: number | null;
  bandwidthGBs: number;
}

function activeBytesPerToken(weightBytes: number, c: typeof MID_CONFIG | Record<string, unknown>, bytesPerParam: number): number {
  const cfg = c as typeof MID_CONFIG;
  const moeLayers = cfg.num_hidden_layers - cfg.first_k_dense_replace;
  const expertBytes = 3 * cfg.hidden_size * cfg.moe_intermediate_size * bytesPerParam;
  const idle = moeLayers * (cfg.num_experts - cfg.num_experts_per_token) * expertBytes;
  // the embedding table is read one row per token, not whole
  const embd = cfg.vocab_size * cfg.hidden_size * bytesPerParam;
  return weightBytes - idle - embd + cfg.hidden_size * bytesPerParam;
}

async function child(modelName: string, backendName: NodeBackendName): Promise<ChildResult> {
  const t0 = performance.now();
  let model, config: Record<string, unknown>, bpp: number;
  if (modelName === 'default') {
    model = await loadModelFromDirectory(undefined, { backend: backendName });
    config = JSON.parse(JSON.stringify((await import('../src/weights/synthetic.js')).TINY_CONFIG)) as Record<string, unknown>;
    bpp = 2;
  } else {
    const backend = await nodeBackend(backendName);
    const st = parseSafetensors(syntheticWeights(MID_CONFIG, 7));
    const gguf = hfToGguf(MID_CONFIG, st, new Kernels(backend), { weights: 'Q8_0' });
    model = await loadModel(sourceFromFiles({ 'model.gguf': gguf }), { backend });
    config = MID_CONFIG;
    bpp = 34 / 32;
  }
  const loadMs = performance.now() - t0;
  const V = model.config.vocabSize;
  const prefillTokens = quick ? 128 : 512;
  const prompt = Array.from({ length: prefillTokens }, (_, i) => (i * 7919 + 13) % V);
  const runs = quick ? 2 : 5;
  const pre = timeIt(() => {
    const s = model.createSession();
    s.prefill(prompt);
    s.free();
  }, runs);
  const s = model.createSession();
  s.prefill(prompt.slice(0, 64));
  const per: number[] = [];
  for (let i = 0; i < (quick ? 32 : 128); i++) {
    const t = performance.now();
    s.decode({ temperature: 0 });
    per.push(performance.now() - t);
  }
  per.sort((a, b) => a - b);
  const med = per[per.length >> 1]!;
  // memory first, before the bandwidth probe's buffer adds to it
  const peakRssMiB = process.resourceUsage().maxRSS / 1024;
  const memBefore = (model.backend as { memory?: WebAssembly.Memory }).memory;
  const wasmMemoryMiB = memBefore ? memBefore.buffer.byteLength / 2 ** 20 : null;
  // read bandwidth in the same process and build: the physical limit for decode. The buffer is
  // twice the LLC and filled, so that its pages are real (untouched pages all map to one zero page)
  const probe = new Float32Array(Math.min(2 * lastLevelCacheBytes(), 1.5 * 2 ** 30) / 4).fill(1);
  const c = bind(model.backend, 'kle_probe_read', [probe, probe.length]);
  const bw = (probe.byteLength / (timeIt(() => c.run(), 5).median / 1e3)) / 1e9;
  c.dispose();
  const params = Number(model.weightBytes) / bpp;
  return {
    model: modelName, backend: model.backend.name, params, weightBytes: model.weightBytes,
    bytesPerToken: activeBytesPerToken(model.weightBytes, config, bpp),
    prefillTokens, prefillTokS: prefillTokens / (pre.median / 1e3), decodeTokS: 1e3 / med, decodeMsMedian: med, loadMs,
    peakRssMiB, wasmMemoryMiB, bandwidthGBs: bw,
  };
}

const isMain = process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1];
if (isMain && process.argv[2] === '--child') {
  const r = await child(process.argv[3]!, process.argv[4] as NodeBackendName);
  process.stdout.write(JSON.stringify(r));
} else if (isMain) {
  const self = fileURLToPath(import.meta.url);
  const results: ChildResult[] = [];
  for (const model of ['default', 'mid-105M-q8_0'])
    for (const backend of ['wasm', 'native'] as const) {
      const out = execFileSync(process.execPath, ['--import', 'tsx', self, '--child', model, backend, ...(quick ? ['--quick'] : [])], { encoding: 'utf8', maxBuffer: 1 << 24 });
      results.push(JSON.parse(out) as ChildResult);
      console.error(`done: ${model} on ${backend}`);
    }
  console.log(`machine: ${JSON.stringify(machine())}\n`);
  console.log('Whole-model generation (one thread). Decode: median per-token time over a 64-token context; "bw limit" is the');
  console.log('decode rate if each token only had to stream the weight bytes it reads (active experts) at the measured read bandwidth.\n');
  console.log(table(
    ['model', 'backend', 'params', 'weights MiB', 'prefill tok/s', 'decode tok/s', 'bw limit tok/s', 'of limit', 'load ms', 'peak RSS MiB', 'wasm memory MiB'],
    results.map((r) => [
      r.model, r.backend, `${(r.params / 1e6).toFixed(1)}M`, (r.weightBytes / 2 ** 20).toFixed(1), r.prefillTokS.toFixed(0), r.decodeTokS.toFixed(1),
      (r.bandwidthGBs * 1e9 / r.bytesPerToken).toFixed(0), `${((100 * r.decodeTokS) / (r.bandwidthGBs * 1e9 / r.bytesPerToken)).toFixed(0)}%`,
      r.loadMs.toFixed(0), r.peakRssMiB.toFixed(0), r.wasmMemoryMiB?.toFixed(0) ?? '-',
    ]),
  ));
  const ratio = (m: string, k: 'prefillTokS' | 'decodeTokS') => results.find((r) => r.model === m && r.backend === 'native')![k] / results.find((r) => r.model === m && r.backend === 'wasm-simd')![k];
  console.log(`\nnative / wasm SIMD: default prefill ${ratio('default', 'prefillTokS').toFixed(2)}x, decode ${ratio('default', 'decodeTokS').toFixed(2)}x; 105M prefill ${ratio('mid-105M-q8_0', 'prefillTokS').toFixed(2)}x, decode ${ratio('mid-105M-q8_0', 'decodeTokS').toFixed(2)}x`);
  for (const [k, label] of [['prefillTokS', 'prefill'], ['decodeTokS', 'decode']] as const)
    writeFileSync(join(packageRoot(), 'bench', 'results', `generate-${label}-${machineTag()}.svg`), barChart(`${label} tokens/s (${machine().cpu}, one thread)`, 'tokens/s', ['default', 'mid-105M-q8_0'], ['wasm-simd', 'native'].map((b) => ({ name: b, values: ['default', 'mid-105M-q8_0'].map((m) => results.find((r) => r.model === m && r.backend === b)?.[k] ?? null) }))));
  console.log(`wrote ${writeResult('generate', { date: new Date().toISOString(), machine: machine(), quick, config105M: MID_CONFIG, results })}`);
}
