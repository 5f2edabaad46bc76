import { FiniteCheck } from '../../src/weights/finite-check.js';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseKimiConfig } from '../../src/engine/config.js';
import { placeHfModel, type Shard } from '../../src/weights/hf-loader.js';
import { FormatError, parseSafetensors, type SafetensorsTensor } from '../../src/formats/safetensors.js';
import { writeSafetensors, type TensorToWrite } from '../../src/formats/safetensors-writer.js';
import { randomTinyFiles } from '../../models/make-random-tiny.js';
import { allBackends, tinyConfig, tinyWeights } from '../helpers/tiny-model.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tinyDir } from '../helpers/tiny-model.js';

type Tensors = Record<string, TensorToWrite>;

function tensorsOf(bytes: Uint8Array): Tensors {
  const out: Tensors = {};
  for (const t of parseSafetensors(bytes).tensors.values()) out[t.name] = { dtype: t.dtype, shape: t.shape, data: t.bytes.slice() };
  return out;
}

const Q = 'model.layers.0.self_attn.q_proj.weight';

describe('malformed model files get an error that names the tensor and the problem', async () => {
  const [wasm] = await allBackends();
  const cfg = tinyConfig();
  const good = tinyWeights();
  const load = (shards: Shard[], c: unknown = cfg) => placeHfModel(wasm!, c, shards);
  const one = (bytes: Uint8Array) => [{ name: 'model.safetensors', bytes }];
  const edited = (f: (t: Tensors) => void) => {
    const t = tensorsOf(good);
    f(t);
    return one(writeSafetensors(t));
  };

  it('loads the intact file', async () => {
    const m = await load(one(good));
    expect(m.bytes()).toBeGreaterThan(2_000_000);
    m.free();
  });

  it('truncated file', async () => {
    await expect(load(one(good.subarray(0, good.length - 1000)))).rejects.toThrow(/tensor '[^']+': data ends at \d+, but the stream ended at \d+ \(truncated file\?\)/);
  });

  it('header length beyond the file', async () => {
    const b = good.slice(0, 64);
    await expect(load(one(b))).rejects.toThrow(FormatError);
    const lying = good.slice();
    new DataView(lying.buffer).setBigUint64(0, BigInt(good.length), true);
    await expect(load(one(lying))).rejects.toThrow(/model\.safetensors: header: the stream ended after \d+ of \d+ bytes \(truncated file\?\)/);
  });

  it('wrong dtype', async () => {
    const s = edited((t) => {
      const q = t[Q]!;
      t[Q] = { dtype: 'I16', shape: q.shape, data: q.data };
    });
    await expect(load(s)).rejects.toThrow(new RegExp(`tensor '${Q}': dtype I16 is not a float weight type`));
  });

  it('shape mismatch', async () => {
    const G = 'model.layers.0.mlp.gate_proj.weight';
    const s = edited((t) => {
      const q = t[G]!;
      t[G] = { dtype: q.dtype, shape: [q.shape[1]!, q.shape[0]!], data: q.data };
    });
    await expect(load(s)).rejects.toThrow(new RegExp(`tensor '${G}': shape \\[128,256\\], the config needs \\[256, 128\\]`));
    const conv = edited((t) => {
      const c = t['model.layers.1.self_attn.k_conv1d.weight']!;
      t['model.layers.1.self_attn.k_conv1d.weight'] = { dtype: 'F32', shape: [4, 1, 128], data: c.data };
    });
    await expect(load(conv)).rejects.toThrow(/k_conv1d.weight': shape \[4,1,128\], the config needs \[128, 4\]/);
  });

  it('missing tensor', async () => {
    const s = edited((t) => {
      delete t['model.layers.3.self_attn.kv_b_proj.weight'];
      delete t['model.layers.2.block_sparse_moe.experts.5.w2.weight'];
    });
    await expect(load(s)).rejects.toThrow(/missing tensors: .*model\.layers\.2\.block_sparse_moe\.experts\.5\.w2\.weight.*model\.layers\.3\.self_attn\.kv_b_proj\.weight/);
  });

  it('the finiteness check names the first bad value whatever the chunks and their alignment', () => {
    // values of every 16-bit and 32-bit format, a bad one at each position in turn, fed in
    // chunks that split elements and start on odd byte offsets (the word-wide path and the byte one)
    const cases: [string, number, (b: DataView, i: number) => void, (b: DataView, i: number) => void][] = [
      ['BF16', 2, (b, i) => b.setUint16(2 * i, 0x3f80 + (i % 97), true), (b, i) => b.setUint16(2 * i, i % 2 ? 0x7fc0 : 0xff80, true)],
      ['F16', 2, (b, i) => b.setUint16(2 * i, 0x3c00 + (i % 97), true), (b, i) => b.setUint16(2 * i, i % 2 ? 0x7e00 : 0xfc00, true)],
      ['F32', 4, (b, i) => b.setFloat32(4 * i, 1 + i / 7, true), (b, i) => b.setFloat32(4 * i, i % 2 ? NaN : -Infinity, true)],
    ];
    for (const [dtype, w, good, bad] of cases)
      for (const at of [0, 1, 2, 3, 5, 64, 199]) {
        const n = 200;
        const bytes = new Uint8Array(n * w + 3);
        const view = new DataView(bytes.buffer, 1, n * w); // elements start on an odd offset
        for (let i = 0; i < n; i++) good(view, i);
        bad(view, at);
        const data = bytes.subarray(1, 1 + n * w);
        for (const cut of [1, 3, 7, 64]) {
          const chk = new FiniteCheck(dtype, 't');
          expect(() => {
            for (let o = 0; o < data.length; o += cut) chk.push(data.subarray(o, Math.min(data.length, o + cut)));
          }, `${dtype} bad at ${at}, chunks of ${cut}`).toThrow(new RegExp(`t: value ${at} is not finite`));
        }
        good(view, at);
        const ok = new FiniteCheck(dtype, 't');
        expect(() => ok.push(data)).not.toThrow();
      }
  });

  it('NaN or infinity in weights', async () => {
    for (const bits of [0x7fc0, 0x7f80]) {
      const s = edited((t) => {
        const q = t[Q]!;
        const d = new Uint16Array(q.data.buffer.slice(0));
        d[77] = bits;
        t[Q] = { dtype: 'BF16', shape: q.shape, data: d };
      });
      await expect(load(s)).rejects.toThrow(new RegExp(`tensor '${Q}': value 77 is not finite`));
    }
    const f = edited((t) => {
      const n = t['model.norm.weight']!;
      const d = new Float32Array(n.data.buffer.slice(0));
      d[5] = NaN;
      t['model.norm.weight'] = { dtype: 'F32', shape: n.shape, data: d };
    });
    await expect(load(f)).rejects.toThrow(/model\.norm\.weight': value 5 is not finite/);
  });

  it('a tensor that is not part of the architecture, and one given twice', async () => {
    const extra = edited((t) => {
      t['model.layers.0.self_attn.kv_b_proj.weight'] = t['model.layers.3.self_attn.kv_b_proj.weight']!; // MLA weight on a KDA layer
    });
    await expect(load(extra)).rejects.toThrow(/kv_b_proj.weight' is not part of KimiLinearForCausalLM/);
    const t = tensorsOf(good);
    const dup = { [Q]: t[Q]! };
    await expect(load([...one(good), { name: 'dup.safetensors', bytes: writeSafetensors(dup) }])).rejects.toThrow(/dup\.safetensors: tensor '.*q_proj.weight' appears twice \(also in model\.safetensors\)/);
  });

  it('overlapping tensors and offsets that disagree with the shape', async () => {
    const hdr = (h: object) => {
      const j = new TextEncoder().encode(JSON.stringify(h));
      const out = new Uint8Array(8 + j.length + 64);
      new DataView(out.buffer).setBigUint64(0, BigInt(j.length), true);
      out.set(j, 8);
      return out;
    };
    await expect(load(one(hdr({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [4], data_offsets: [8, 24] } })))).rejects.toThrow(/overlap/);
    await expect(load(one(hdr({ [Q]: { dtype: 'F32', shape: [4, 4], data_offsets: [0, 60] } })))).rejects.toThrow(/60 bytes stored, but F32 \[4,4\] needs 64/);
  });

  it('the engine itself refuses a tensor whose shape or format does not fit the config', async () => {
    const { EngineModel } = await import('../../src/engine/engine.js');
    const m = EngineModel.create(wasm!, parseKimiConfig(cfg));
    const slot = { role: 'KDA_Q', layer: 0, expert: 0 } as const;
    expect(() => m.place(slot, 'f32', 127, 128, new Uint8Array(127 * 128 * 4))).toThrow(/does not fit the config/);
    expect(() => m.place({ role: 'OUT_NORM', layer: -1, expert: 0 }, 'bf16', 1, 128, new Uint8Array(256))).toThrow(/does not fit the config/);
    expect(() => m.finalize()).toThrow(/a required tensor is missing/);
    m.free();
  });
});

describe('config.json', () => {
  const cfg = tinyConfig();
  const bad = (patch: Record<string, unknown>, key: RegExp) => {
    const c = structuredClone(cfg);
    Object.assign(c, patch);
    expect(() => parseKimiConfig(c)).toThrow(ConfigError);
    expect(() => parseKimiConfig(c)).toThrow(key);
  };
  it('reads the default config', async () => {
    const c = parseKimiConfig(cfg);
    expect(c.layerKinds).toEqual(['kda', 'kda', 'kda', 'mla']);
    expect(c.moe?.numExperts).toBe(8);
  });
  it('names the key it cannot accept', async () => {
    bad({ hidden_size: undefined }, /hidden_size: missing/);
    bad({ hidden_size: 130 }, /hidden_size: 130 is not a multiple of 4/);
    bad({ model_type: 'deepseek_v3' }, /model_type/);
    bad({ q_lora_rank: 1536 }, /q_lora_rank/);
    bad({ mla_use_nope: false }, /mla_use_nope/);
    bad({ mla_use_output_gate: true }, /mla_use_output_gate/);
    bad({ moe_router_activation_func: 'relu' }, /moe_router_activation_func/);
    bad({ num_experts_per_token: 9 }, /num_experts_per_token/);
    bad({ linear_attn_config: { ...(cfg.linear_attn_config as object), kda_layers: [1, 2], full_attn_layers: [4] } }, /layer 3 \(one-based\)/);
    bad({ linear_attn_config: { ...(cfg.linear_attn_config as object), use_full_rank_gate: true } }, /use_full_rank_gate/);
    bad({ linear_attn_config: undefined }, /linear_attn_config: missing/);
  });
  it('accepts the lower-bound gate form', async () => {
    const c = structuredClone(cfg) as Record<string, unknown> & { linear_attn_config: Record<string, unknown> };
    c.linear_attn_config.gate_lower_bound = -5;
    expect(parseKimiConfig(c).kda.gateLowerBound).toBe(-5);
  });
});

describe('the random test model', () => {
  it('is what models/make-random-tiny.ts makes, byte for byte', async () => {
    const { config, weights } = randomTinyFiles();
    expect(readFileSync(join(tinyDir, 'config.json'), 'utf8')).toBe(config);
    expect(Buffer.compare(readFileSync(join(tinyDir, 'model.safetensors')), Buffer.from(weights))).toBe(0);
  });
});
