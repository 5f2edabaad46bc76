/**
 * What the architecture studies share (bench:arch, bench:kv-long): the four models of about the
 * same size (8 layers, hidden 512, no MoE) and session states at any position, crafted as blobs
 * (the layout of engine/model/session.c) so that long contexts need no prefill.
 */
import { freemem } from 'node:os';
import type { KernelBackend } from '../src/engine/backend.js';
import type { EngineModel, EngineSession } from '../src/engine/engine.js';
import { layerKinds, sessionStateFloats } from '../src/engine/layer-kinds.js';
import { fnv1a64 } from '../src/util/fnv.js';
import { placeHfModel } from '../src/weights/hf-loader.js';
import { syntheticWeights } from '../src/weights/synthetic.js';

export const STUDY_LAYERS = 8;
const base = {
  architectures: ['KimiLinearForCausalLM'], model_type: 'kimi_linear', vocab_size: 4096, hidden_size: 512, intermediate_size: 1536,
  num_hidden_layers: STUDY_LAYERS, num_attention_heads: 8, num_key_value_heads: 8, kv_lora_rank: 256, q_lora_rank: null,
  qk_nope_head_dim: 64, qk_rope_head_dim: 32, v_head_dim: 64, mla_use_nope: true, rms_norm_eps: 1e-5, tie_word_embeddings: false,
  num_experts: 0, model_max_length: 1 << 22,
};
const la = (kda: number[]) => ({ kda_layers: kda, full_attn_layers: Array.from({ length: STUDY_LAYERS }, (_, i) => i + 1).filter((i) => !kda.includes(i)), num_heads: 8, head_dim: 64, short_conv_kernel_size: 4 });
export const STUDY_CONFIGS = {
  'hybrid 3:1': { ...base, linear_attn_config: la([1, 2, 3, 5, 6, 7]) },
  // Gated DeltaNet's gate in the same hybrid: one decay per head instead of one per channel
  'GDN-H 3:1': { ...base, linear_attn_config: { ...la([1, 2, 3, 5, 6, 7]), gate_type: 'head' } },
  'all MLA': { ...base, linear_attn_config: la([]) },
  'all KDA': { ...base, linear_attn_config: la([1, 2, 3, 4, 5, 6, 7, 8]) },
};

/** A study model with seeded weights on a backend, and a blob of it after one token (the crafted blobs' template). */
export async function placeStudyModel(backend: KernelBackend, name: keyof typeof STUDY_CONFIGS): Promise<{ model: EngineModel; template: Uint8Array }> {
  const cfg = STUDY_CONFIGS[name];
  const model = await placeHfModel(backend, cfg, [{ name, bytes: syntheticWeights(cfg, 11) }]);
  const s = model.createSession();
  s.forward([1]);
  const template = s.save();
  s.free();
  return { model, template };
}

/**
 * Why a state of `bytes` cannot be held here, or null: wasm32 has 4 GiB for everything, and host
 * memory at the peak holds the blob staged in engine memory, the session's caches (their capacity
 * a power of two) and, on the first token past it, the caches grown to twice that.
 */
export function cannotHold(backendName: string, bytes: number): string | null {
  if (backendName.startsWith('wasm') && bytes > 1.2 * 2 ** 30) return 'past what wasm32 holds';
  if (3 * bytes > freemem()) return `about ${(3 * bytes / 2 ** 30).toFixed(1)} GiB of host memory needed, ${(freemem() / 2 ** 30).toFixed(1)} free`;
  return null;
}

/** The median time of `steps` decode steps from the session's state, in ms. */
export function medianDecodeMs(s: EngineSession, steps: number): number {
  const t: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    s.forward([(i * 31) % 4096]);
    t.push(performance.now() - t0);
  }
  t.sort((a, b) => a - b);
  return t[t.length >> 1]!;
}

/** small deterministic state values: finite, as a loaded blob must be */
function fill(f: Float32Array, i0: number): void {
  for (let i = Math.ceil(i0 / 97) * 97; i < i0 + f.length; i += 97) f[i - i0] = (Math.imul(i, 0x9e3779b1) >>> 0) % 1000 / 1e5;
}

function checksum(h: [number, number]): Uint8Array {
  const tail = new Uint8Array(8);
  new DataView(tail.buffer).setUint32(0, h[1], true);
  new DataView(tail.buffer).setUint32(4, h[0], true);
  return tail;
}

/**
 * A session blob of a model at position pos with small random state, made part by part (256 MiB
 * at most) for EngineSession.loadParts: at 1M tokens the all-MLA model's blob is 9.4 GB, past what
 * one array holds. `template` is any blob of the model (its fingerprint is copied).
 */
export function craftBlob(model: EngineModel, template: Uint8Array, pos: number): { parts: Iterable<Uint8Array>; bytes: number } {
  const c = model.config;
  const floats = sessionStateFloats(c, pos) + c.vocabSize;
  const PART = 1 << 26;
  function* parts(): Generator<Uint8Array> {
    const head = template.slice(0, 32);
    const dv = new DataView(head.buffer);
    dv.setUint32(4, 1, true);
    dv.setUint32(20, pos, true);
    dv.setUint32(24, 1, true);
    let h = fnv1a64(head);
    yield head;
    for (let i0 = 0; i0 < floats; i0 += PART) {
      const f = new Float32Array(Math.min(PART, floats - i0));
      fill(f, i0);
      const b = new Uint8Array(f.buffer);
      h = fnv1a64(b, h);
      yield b;
    }
    yield checksum(h);
  }
  return { parts: parts(), bytes: 32 + 4 * floats + 8 };
}

/**
 * The blob of a session with a bounded MLA cache (version 2) at position pos: min(pos, budget)
 * rows per MLA layer, holding the most recent tokens, with zero scores (`recent`: the recent-only
 * policy). Small: it fits one array.
 */
export function craftBoundedBlob(model: EngineModel, template: Uint8Array, pos: number, kv: { budget: number; sink: number; window: number; decay: number; recent?: boolean }): Uint8Array {
  const c = model.config;
  const rows = Math.min(pos, kv.budget);
  const floats = sessionStateFloats(c, pos, kv.budget) + c.vocabSize;
  const out = new Uint8Array(56 + 4 * floats + 8);
  out.set(template.subarray(0, 32));
  const dv = new DataView(out.buffer);
  dv.setUint32(4, 2, true);
  dv.setUint32(20, pos, true);
  dv.setUint32(24, 1, true);
  [kv.budget, kv.sink, kv.window].forEach((v, i) => dv.setUint32(32 + 4 * i, v, true));
  dv.setFloat32(44, kv.decay, true);
  dv.setUint32(48, (rows < pos ? 2 : 0) | (kv.recent ? 4 : 0), true); // rows were dropped; the recent-only policy
  dv.setUint32(52, rows, true);
  let off = 56;
  const floatsAt = (n: number) => {
    const f = new Float32Array(out.buffer, off, n);
    fill(f, off);
    off += 4 * n;
  };
  for (let l = 0; l < c.numLayers; l++) {
    const [mixer] = layerKinds(c, l);
    const row = mixer.cacheRowFloats(c);
    floatsAt(mixer.stateFloats(c) + rows * row);
    if (row) {
      for (let j = 0; j < rows; j++) dv.setUint32(off + 4 * j, pos - rows + j, true); // the newest tokens
      off += 8 * rows; // positions, then zero scores
    }
  }
  floatsAt(c.vocabSize);
  out.set(checksum(fnv1a64(out.subarray(0, off))), off);
  return out;
}
