/**
 * Places a Kimi Linear GGUF (llama.cpp's layout, see gguf-kimi.ts) into the engine, streaming.
 * Quantized (Q8_0, Q4_0) and 16-bit matmul weights go into engine memory as they are; the small
 * f32-only tensors are converted; MLA's k_b/v_b halves are joined back into one kv_b (the engine
 * absorbs it itself); 3-D expert tensors are split per expert.
 */
import type { KernelBackend } from '../engine/backend.js';
import { EngineModel, type TensorExpectation } from '../engine/engine.js';
import { Kernels, type WeightFormatName } from '../engine/kernels.js';
import { EXPERT_ROLES, type TensorSlot } from '../engine/roles.js';
import { parseKimiConfig, type KimiConfig } from '../engine/config.js';
import { FiniteCheck, gatherChecked } from './finite-check.js';
import { missingSlots, slotKey } from '../engine/slots.js';
import { readGgufStream, type GgmlTypeName, type GgufHeader, type GgufTensorInfo } from '../formats/gguf.js';
import { ARCH, ggufTarget, ggufToHfConfig, type GgufTarget } from './gguf-kimi.js';
import type { LoadProgress } from './hf-loader.js';
import { FormatError } from '../formats/safetensors.js';
import type { ChunkSink } from '../formats/safetensors-stream.js';

const FMT: Record<GgmlTypeName, WeightFormatName> = { F32: 'f32', F16: 'f16', BF16: 'bf16', Q8_0: 'q8_0', Q4_0: 'q4_0', Q4_K: 'q4_k', Q6_K: 'q6_k', Q5_0: 'q5_0', Q5_1: 'q5_1', Q5_K: 'q5_k', Q2_K: 'q2_k', Q3_K: 'q3_k' };

export interface GgufPlaced {
  readonly engine: EngineModel;
  readonly header: GgufHeader;
}


export async function placeGgufModel(backend: KernelBackend, stream: ReadableStream<Uint8Array>, label: string, opts: { onProgress?: (p: LoadProgress) => void; bytesTotal?: number } = {}): Promise<GgufPlaced> {
  const kernels = new Kernels(backend);
  let model: EngineModel | null = null;
  let config: KimiConfig | null = null;
  const placed = new Set<string>();
  const kvParts = new Map<number, { k?: Float32Array; v?: Float32Array }>();
  let bytesDone = 0;
  const toF32 = (t: GgufTensorInfo, b: Uint8Array): Float32Array => {
    const n = t.ne.reduce((a, x) => a * x, 1);
    if (t.type === 'F32') return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
    return kernels.dequantize(FMT[t.type], b, n);
  };
  const mark = (s: TensorSlot, where: string) => {
    const key = slotKey(s);
    if (placed.has(key)) throw new FormatError(`${where}: a second tensor for the same weight`);
    placed.add(key);
  };
  try {
    const header = await readGgufStream(
      stream,
      label,
      (t) => {
        const where = `${label}: tensor '${t.name}'`;
        const target = ggufTarget(t.name, config!)!;
        return sinkFor(target, t, where);
      },
      {
        onHeader: (h) => {
          const arch = h.metadata.get('general.architecture');
          // the file's own problem, not a config.json's: say so before any key is read as one
          if (arch !== ARCH) throw new FormatError(`${label}: general.architecture: ${JSON.stringify(arch ?? null)} is not ${ARCH} (this runtime reads Kimi Linear GGUF files)`);
          const names = new Set(h.tensors.map((t) => t.name));
          const embd = h.tensors.find((t) => t.name === 'token_embd.weight');
          const hf = ggufToHfConfig(h.metadata, embd ? (embd.ne[1] ?? null) : null);
          hf.tie_word_embeddings = !names.has('output.weight');
          // GGUF has no key for the gate's granularity; as llama.cpp does, its shape tells:
          // ssm_f_b with one row per head is Gated DeltaNet's gate, one per channel KDA's
          const la = hf.linear_attn_config as Record<string, unknown>;
          const fb = h.tensors.find((t) => /^blk\.\d+\.ssm_f_b\.weight$/.test(t.name));
          if (fb && Number(fb.ne[1]) === la.num_heads && la.head_dim !== 1) la.gate_type = 'head';
          // nor for our importance head (docs/kv-budget.md): its tensors say it is there
          if (h.tensors.some((t) => /^blk\.\d+\.attn_kv_importance\.weight$/.test(t.name))) hf.kv_importance_head = true;
          config = parseKimiConfig(hf);
          model = EngineModel.create(backend, config);
          // a GPU keeps F32, BF16 and F16 as they are and expands the quantized formats to f32
          model.checkFits(h.tensors.reduce((a, t) => a + t.ne.reduce((n: number, d) => n * Number(d), 1) * (FMT[t.type] === 'bf16' || FMT[t.type] === 'f16' ? 2 : 4), 0), label);
          for (const t of h.tensors) {
            const where = `${label}: tensor '${t.name}'`;
            const target = ggufTarget(t.name, config);
            if (!target) throw new FormatError(`${where} is not part of ${'kimi-linear'} as this file's metadata describes it`);
            checkShape(model, config, target, t, where);
          }
        },
        onBytes: (n) => {
          bytesDone += n;
          opts.onProgress?.({ shard: label, shardsDone: 0, shardsTotal: 1, bytesDone, bytesTotal: opts.bytesTotal ?? null });
        },
      },
    );
    const m = model as EngineModel | null;
    if (!m || !config) throw new FormatError(`${label}: no header`);
    for (const [layer, p] of kvParts) if (!p.k || !p.v) throw new FormatError(`${label}: blk.${layer} has attn_${p.k ? 'v' : 'k'}_b missing`);
    const missing = missingSlots(m, placed);
    if (missing.length) throw new FormatError(`${label}: missing tensor${missing.length > 1 ? 's' : ''} for ${missing.slice(0, 5).map((s) => `${s.role} of layer ${s.layer}${EXPERT_ROLES.has(s.role) ? ` expert ${s.expert}` : ''}`).join(', ')}${missing.length > 5 ? ` and ${missing.length - 5} more` : ''}`);
    m.finalize();
    return { engine: m, header };
  } catch (e) {
    (model as EngineModel | null)?.free();
    throw e;
  }

  function sinkFor(target: GgufTarget, t: GgufTensorInfo, where: string): ChunkSink {
    const m = model!;
    const finite = new FiniteCheck(t.type, where);
    if (target.kind === 'slot') {
      const slot: TensorSlot = { role: target.role, layer: target.layer, expert: 0 };
      mark(slot, where);
      const exp = m.expect(slot);
      if (exp.anyFormat) {
        const w = m.allocTensor(slot, FMT[t.type], exp.rows, exp.cols);
        return { write: (c) => (finite.push(c), w.write(c)), end: () => w.end() };
      }
      return gatherChecked(t.byteLength, (b) => {
        let f = toF32(t, b);
        if (target.transform === 'neg_exp_inverse') {
          // llama.cpp stores A = -exp(A_log); the engine takes A_log
          f = f.map((a) => {
            if (!(a < 0)) throw new FormatError(`${where}: A must be negative (it is -exp(A_log)), got ${a}`);
            return Math.log(-a);
          });
        }
        m.place(slot, 'f32', exp.rows, exp.cols, new Uint8Array(f.buffer, f.byteOffset, f.byteLength));
      }, finite);
    }
    if (target.kind === 'experts') {
      const E = config!.moe!.numExperts;
      const per = t.byteLength / E;
      let e = 0, inExpert = 0;
      let w: ReturnType<EngineModel['allocTensor']> | null = null;
      const exp = m.expect({ role: target.role, layer: target.layer, expert: 0 });
      return {
        write: (c) => {
          finite.push(c);
          let p = 0;
          while (p < c.length) {
            if (!w) {
              const slot = { role: target.role, layer: target.layer, expert: e };
              mark(slot, where);
              w = m.allocTensor(slot, FMT[t.type], exp.rows, exp.cols);
            }
            const take = Math.min(per - inExpert, c.length - p);
            w.write(c.subarray(p, p + take));
            p += take;
            inExpert += take;
            if (inExpert === per) {
              w.end();
              w = null;
              inExpert = 0;
              e++;
            }
          }
        },
        end: () => {},
      };
    }
    // MLA k_b [H, R, nope] and v_b [H, v, R] (numpy order): joined into kv_b [H*(nope+v), R]
    return gatherChecked(t.byteLength, (b) => {
      const p = kvParts.get(target.layer) ?? {};
      p[target.part] = toF32(t, b);
      kvParts.set(target.layer, p);
      if (p.k && p.v) {
        const { numHeads: H, qkNopeHeadDim: nope, vHeadDim: vh, kvLoraRank: R } = config!.mla;
        const kv = new Float32Array(H * (nope + vh) * R);
        for (let h = 0; h < H; h++) {
          const base = h * (nope + vh) * R;
          for (let i = 0; i < nope; i++) for (let r = 0; r < R; r++) kv[base + i * R + r] = p.k[(h * R + r) * nope + i]!;
          kv.set(p.v.subarray(h * vh * R, (h + 1) * vh * R), base + nope * R);
        }
        const slot = { role: 'MLA_KV_B' as const, layer: target.layer, expert: 0 };
        mark(slot, where);
        const exp = m.expect(slot);
        m.place(slot, 'f32', exp.rows, exp.cols, new Uint8Array(kv.buffer));
      }
    }, finite);
  }
}

function checkShape(m: EngineModel, c: KimiConfig, target: GgufTarget, t: GgufTensorInfo, where: string): void {
  const ne = t.ne;
  const fail = (want: string) => {
    throw new FormatError(`${where}: ggml shape [${ne.join(', ')}], the metadata needs ${want}`);
  };
  if (target.kind === 'slot') {
    const exp: TensorExpectation = m.expect({ role: target.role, layer: target.layer, expert: 0 });
    if (exp.need === 'unused') throw new FormatError(`${where} is not used by this configuration`);
    if (exp.anyFormat) {
      const rows = ne.slice(1).reduce((a, b) => a * b, 1);
      if (ne[0] !== exp.cols || rows !== exp.rows || ne.slice(2).some((d) => d !== 1)) fail(`[${exp.cols}, ${exp.rows}]`);
    } else {
      const squeezed = [...ne].reverse().filter((d) => d !== 1);
      const wanted = [exp.rows, exp.cols].filter((d) => d !== 1);
      if (squeezed.join() !== wanted.join()) fail(`[${[exp.cols, exp.rows].join(', ')}] (unit dimensions aside)`);
    }
    return;
  }
  if (target.kind === 'experts') {
    const moe = c.moe;
    if (!moe) throw new FormatError(`${where}: expert tensors in a model without experts`);
    const exp = m.expect({ role: target.role, layer: target.layer, expert: 0 });
    if (exp.need === 'unused') throw new FormatError(`${where} is not used by this configuration (a dense layer?)`);
    if (ne.length !== 3 || ne[0] !== exp.cols || ne[1] !== exp.rows || ne[2] !== moe.numExperts) fail(`[${exp.cols}, ${exp.rows}, ${moe.numExperts}]`);
    return;
  }
  const { numHeads: H, qkNopeHeadDim: nope, vHeadDim: vh, kvLoraRank: R } = c.mla;
  const want = target.part === 'k' ? [nope, R, H] : [R, vh, H];
  if (ne.join() !== want.join()) fail(`[${want.join(', ')}]`);
}
