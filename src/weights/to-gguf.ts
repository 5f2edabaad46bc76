/**
 * HF checkpoint -> GGUF in llama.cpp's Kimi-Linear layout (the names, shapes and conventions of
 * its converter; see gguf-kimi.ts), optionally quantizing matmul weights to Q8_0, Q4_0 or a
 * Q4_K_M-like mix as llama-quantize would (norms, gates, conv kernels, the router and its bias
 * stay F32).
 *
 * Q4_K_M here: Q4_K for every matrix whose rows are a multiple of 256 values, Q6_K for the LM head
 * and for the down projections of the layers llama-quantize's Q4_K_M gives more bits (the first
 * and last eighth of the layers and every third one between), Q8_0 for matrices whose rows are
 * not a multiple of 256 (llama-quantize takes Q5_0 there, which has no encoder here).
 */
import type { Kernels } from '../engine/kernels.js';
import { parseKimiConfig } from '../engine/config.js';
import { expertTensors, layerTensors } from '../engine/layer-kinds.js';
import { ARCH } from './gguf-kimi.js';
import { writeGguf, type GgufMeta, type GgufTensorToWrite } from '../formats/gguf-writer.js';
import type { GgmlTypeName } from '../formats/gguf.js';
import { tensorF32, type SafetensorsFile } from '../formats/safetensors.js';

export type GgufWeightType = 'F32' | 'BF16' | 'Q8_0' | 'Q4_0' | 'Q4_K_M';

export interface ToGgufOptions {
  /** type of the matmul weights (default: F32) */
  weights?: GgufWeightType;
  /** HF tokenizer.json (byte-level BPE) to embed as tokenizer.ggml.* */
  tokenizerJson?: unknown;
  tokenizerConfig?: Record<string, unknown>;
  name?: string;
}

function bf16(a: Float32Array): Uint8Array {
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = (u[i]! + 0x7fff + ((u[i]! >>> 16) & 1)) >>> 16;
  return new Uint8Array(out.buffer);
}

/** The GGUF file's bytes. */
export function hfToGguf(configJson: unknown, file: SafetensorsFile, kernels: Kernels, opts: ToGgufOptions = {}): Uint8Array {
  const { metadata, tensors } = hfToGgufParts(configJson, file, kernels, opts);
  return writeGguf(metadata, tensors);
}

/** The GGUF file's metadata and tensors, before they are written. */
export function hfToGgufParts(configJson: unknown, file: SafetensorsFile, kernels: Kernels, opts: ToGgufOptions = {}): { metadata: Record<string, GgufMeta>; tensors: GgufTensorToWrite[] } {
  const c = parseKimiConfig(configJson);
  const get = (n: string) => {
    const t = file.tensors.get(n);
    if (!t) throw new Error(`missing tensor ${n}`);
    return tensorF32(t);
  };
  const out: GgufTensorToWrite[] = [];
  const f32 = (name: string, ne: number[], a: Float32Array) => out.push({ name, ne, type: 'F32', data: new Uint8Array(a.buffer, a.byteOffset, a.byteLength) });
  const weight = (name: string, ne: number[], a: Float32Array, more = false) => {
    let t: GgmlTypeName = opts.weights === 'Q4_K_M' ? (ne[0]! % 256 ? 'Q8_0' : more ? 'Q6_K' : 'Q4_K') : opts.weights ?? 'F32';
    if (t !== 'F32' && t !== 'BF16' && ne[0]! % 32) t = 'F32';
    if (t === 'F32') return f32(name, ne, a);
    if (t === 'BF16') return out.push({ name, ne, type: 'BF16', data: bf16(a) });
    out.push({ name, ne, type: t, data: kernels.quantize(t.toLowerCase() as 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k', a) });
  };
  // the layers whose down projections a Q4_K_M file keeps in Q6_K
  const eighth = Math.floor(c.numLayers / 8), last = Math.floor((7 * c.numLayers) / 8);
  const moreBits = (l: number) => l < eighth || l >= last || (l - eighth) % 3 === 2;
  const isDown = (gguf: string) => gguf.startsWith('ffn_down');
  const D = c.hiddenSize;
  weight('token_embd.weight', [D, c.vocabSize], get('model.embed_tokens.weight'));
  f32('output_norm.weight', [D], get('model.norm.weight'));
  if (!c.tieWordEmbeddings) weight('output.weight', [D, c.vocabSize], get('lm_head.weight'), true);
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`, b = `blk.${l}.`;
    for (const t of layerTensors(c, l)) {
      const src = t.optional && !file.tensors.has(p + t.hf) ? null : get(p + t.hf);
      if (!src) void 0; // an optional tensor the checkpoint leaves out (the MoE bias: a zero bias)
      else if (t.gguf && t.f32) f32(b + t.gguf, t.init.kind === 'conv' ? [t.cols, 1, t.rows, 1] : t.rows === 1 ? [t.cols] : [t.cols, t.rows], src);
      else if (t.gguf) weight(b + t.gguf, [t.cols, t.rows], src, isDown(t.gguf) && moreBits(l));
      else if (t.role === 'KDA_A_LOG') f32(`${b}ssm_a`, [1, t.cols, 1, 1], src.map((x) => -Math.exp(x)));
      else if (t.role === 'MLA_KV_B') {
        const { numHeads: Hm, qkNopeHeadDim: nope, vHeadDim: vh, kvLoraRank: R } = c.mla;
        const kb = new Float32Array(Hm * R * nope), vb = new Float32Array(Hm * vh * R);
        for (let h = 0; h < Hm; h++) {
          const base = h * (nope + vh) * R;
          for (let i = 0; i < nope; i++) for (let r = 0; r < R; r++) kb[(h * R + r) * nope + i] = src[base + i * R + r]!;
          vb.set(src.subarray(base + nope * R, base + (nope + vh) * R), h * vh * R);
        }
        // k_b/v_b stay unquantized: llama.cpp multiplies them in a 3-D batched form that its CPU
        // backend only takes in float (a Q8_0 k_b makes it abort), and they are small
        f32(`${b}attn_k_b.weight`, [nope, R, Hm], kb);
        f32(`${b}attn_v_b.weight`, [R, vh, Hm], vb);
      } else throw new Error(`${p + t.hf}: no GGUF form`);
      if (t.role !== 'MOE_BIAS') continue;
      // the routed experts follow the router, stacked into one 3-D tensor per matrix
      const E = c.moe!.numExperts;
      for (const role of ['EXP_GATE', 'EXP_UP', 'EXP_DOWN'] as const) {
        const x = expertTensors(c).find((e) => e.role === role)!;
        const stack = new Float32Array(x.rows * x.cols * E);
        for (let e = 0; e < E; e++) stack.set(get(`${p}block_sparse_moe.experts.${e}.${x.hf}.weight`), e * x.rows * x.cols);
        weight(b + x.gguf, [x.cols, x.rows, E], stack, isDown(x.gguf) && moreBits(l));
      }
    }
  }
  const k = (s: string) => `${ARCH}.${s}`;
  const u32 = (value: number): GgufMeta => ({ type: 'u32', value });
  const md: Record<string, GgufMeta> = {
    'general.architecture': { type: 'str', value: ARCH },
    'general.name': { type: 'str', value: opts.name ?? 'kimi-linear' },
    [k('vocab_size')]: u32(c.vocabSize),
    [k('context_length')]: u32(c.maxContext ?? 1048576),
    [k('embedding_length')]: u32(D),
    [k('feed_forward_length')]: u32(c.intermediateSize),
    [k('block_count')]: u32(c.numLayers),
    // llama.cpp's Kimi-Linear sizes every attention from head_count (MLA's num_attention_heads)
    // and has no key of its own for the KDA heads: kda.head_count, beside its kda.head_dim,
    // carries them (so the two can differ), and llama.cpp reads files where they are equal
    [k('attention.head_count')]: u32(c.layerKinds.includes('mla') ? c.mla.numHeads : c.kda.numHeads),
    [k('kda.head_count')]: u32(c.kda.numHeads),
    [k('attention.head_count_kv')]: { type: 'arr_i32', value: c.layerKinds.map((x) => (x === 'kda' ? 0 : 1)) },
    [k('attention.layer_norm_rms_epsilon')]: { type: 'f32', value: c.rmsNormEps },
    [k('ssm.conv_kernel')]: u32(c.kda.convKernel),
    [k('kda.head_dim')]: u32(c.kda.headDim),
    [k('attention.kv_lora_rank')]: u32(c.mla.kvLoraRank),
    [k('rope.dimension_count')]: u32(c.mla.qkRopeHeadDim),
    [k('attention.key_length')]: u32(c.mla.kvLoraRank + c.mla.qkRopeHeadDim),
    [k('attention.key_length_mla')]: u32(c.mla.qkNopeHeadDim + c.mla.qkRopeHeadDim),
    [k('attention.value_length_mla')]: u32(c.mla.vHeadDim),
  };
  if (c.kda.gateLowerBound) md[k('kda.gate_lower_bound')] = { type: 'f32', value: c.kda.gateLowerBound };
  if (c.moe) {
    Object.assign(md, {
      [k('expert_count')]: u32(c.moe.numExperts),
      [k('expert_used_count')]: u32(c.moe.expertsPerToken),
      [k('expert_shared_count')]: u32(c.moe.numSharedExperts),
      [k('expert_feed_forward_length')]: u32(c.moe.moeIntermediateSize),
      [k('leading_dense_block_count')]: u32(c.moe.firstKDenseReplace),
      [k('expert_weights_scale')]: { type: 'f32', value: c.moe.routedScalingFactor },
      [k('expert_weights_norm')]: { type: 'bool', value: c.moe.renormalize },
      [k('expert_gating_func')]: u32(c.moe.routerActivation === 'softmax' ? 1 : 2),
      [k('expert_group_count')]: u32(c.moe.numExpertGroup),
      [k('expert_group_used_count')]: u32(c.moe.topkGroup),
    });
    if (c.moe.moeLayerFreq !== 1) throw new Error('moe_layer_freq != 1 has no GGUF key in llama.cpp');
  }
  if (opts.tokenizerJson) Object.assign(md, tokenizerMeta(opts.tokenizerJson, opts.tokenizerConfig ?? {}, c.vocabSize));
  return { metadata: md, tensors: out };
}

/** tokenizer.ggml.* from an HF byte-level BPE tokenizer.json */
function tokenizerMeta(tj: unknown, tc: Record<string, unknown>, vocabSize: number): Record<string, GgufMeta> {
  const t = tj as { model: { type: string; vocab: Record<string, number>; merges: (string | [string, string])[] }; added_tokens?: { id: number; content: string; special: boolean }[]; pre_tokenizer?: { type?: string } };
  if (t.model?.type !== 'BPE') throw new Error('only BPE tokenizers convert to GGUF here');
  const tokens = Array.from({ length: vocabSize }, (_, i) => `[PAD${i}]`);
  const types = Array.from({ length: vocabSize }, () => 5);
  for (const [s, id] of Object.entries(t.model.vocab)) if (id < vocabSize) [tokens[id], types[id]] = [s, 1];
  for (const a of t.added_tokens ?? []) if (a.id < vocabSize) [tokens[a.id], types[a.id]] = [a.content, a.special ? 3 : 4];
  const id = (v: unknown) => (typeof v === 'string' ? tokens.indexOf(v) : -1);
  const md: Record<string, GgufMeta> = {
    'tokenizer.ggml.model': { type: 'str', value: 'gpt2' },
    'tokenizer.ggml.pre': { type: 'str', value: t.pre_tokenizer?.type === 'ByteLevel' ? 'gpt-2' : 'kimi-k2' },
    'tokenizer.ggml.tokens': { type: 'arr_str', value: tokens },
    'tokenizer.ggml.token_type': { type: 'arr_i32', value: types },
    'tokenizer.ggml.merges': { type: 'arr_str', value: t.model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m)) },
  };
  if (id(tc.bos_token) >= 0) md['tokenizer.ggml.bos_token_id'] = { type: 'u32', value: id(tc.bos_token) };
  if (id(tc.eos_token) >= 0) md['tokenizer.ggml.eos_token_id'] = { type: 'u32', value: id(tc.eos_token) };
  if (typeof tc.chat_template === 'string') md['tokenizer.chat_template'] = { type: 'str', value: tc.chat_template };
  return md;
}
