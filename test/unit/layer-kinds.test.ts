// The TypeScript description of the layer kinds (src/engine/layer-kinds.ts) against the engine's
// own rows (engine/model/layers.c): every tensor's need, shape and format class, and the size of
// a session's state blob, on configs that exercise every kind and size.
import { describe, expect, it } from 'vitest';
import { EngineModel } from '../../src/engine/engine.js';
import { expertTensors, layerTensors, sessionBlobBytes } from '../../src/engine/layer-kinds.js';
import { EXPERT_ROLES, ROLES } from '../../src/engine/roles.js';
import { placeHfCheckpoint } from '../../src/weights/hf-loader.js';
import { parseKimiConfig, type KimiConfig } from '../../src/engine/config.js';
import { syntheticWeights, TINY_CONFIG, withHeadGate } from '../../src/weights/synthetic.js';
import { allBackends, tokens } from '../helpers/tiny-model.js';

const la = TINY_CONFIG.linear_attn_config;
const configs: Record<string, { json: Record<string, unknown> }> = {
  default: { json: { ...TINY_CONFIG } },
  'one decay per head': { json: withHeadGate(TINY_CONFIG) },
  'own MLA sizes': { json: { ...TINY_CONFIG, num_attention_heads: 6, qk_nope_head_dim: 24, qk_rope_head_dim: 8, v_head_dim: 40, kv_lora_rank: 48, num_key_value_heads: 6 } },
  'all KDA, no MoE': { json: { ...TINY_CONFIG, num_experts: 0, linear_attn_config: { ...la, kda_layers: [1, 2, 3, 4], full_attn_layers: [] } } },
  'all MLA, no shared experts, tied': { json: { ...TINY_CONFIG, num_shared_experts: 0, tie_word_embeddings: true, linear_attn_config: { ...la, kda_layers: [], full_attn_layers: [1, 2, 3, 4] } } },
};

function configOf(c: { json: Record<string, unknown> }): KimiConfig {
  return parseKimiConfig(c.json);
}

describe('the layer kinds as data agree with the engine', async () => {
  const [wasm] = await allBackends();
  for (const [name, c] of Object.entries(configs)) {
    it(`${name}: every tensor the description names, and no other, with the engine's shape`, () => {
      const cfg = configOf(c);
      const m = EngineModel.create(wasm!, cfg);
      for (let l = 0; l < cfg.numLayers; l++) {
        const described = new Map(layerTensors(cfg, l).map((t) => [t.role, t]));
        for (const role of ROLES) {
          if (EXPERT_ROLES.has(role)) continue;
          const e = m.expect({ role, layer: l, expert: 0 });
          const t = described.get(role);
          if (!t) {
            expect(e.need, `${role} of layer ${l}`).toBe('unused');
            continue;
          }
          expect(e.need, `${role} of layer ${l}`).toBe(t.optional ? 'optional' : 'required');
          expect([e.rows, e.cols, e.anyFormat], `${role} of layer ${l}`).toEqual([t.rows, t.cols, !t.f32]);
        }
        for (const x of expertTensors(cfg)) {
          const e = m.expect({ role: x.role, layer: l, expert: 0 });
          if (e.need !== 'unused') expect([e.rows, e.cols]).toEqual([x.rows, x.cols]);
          expect(e.need !== 'unused').toBe(described.has('MOE_ROUTER'));
        }
      }
      m.free();
    });

    it(`${name}: the state blob is as large as the description says`, async () => {
      const cfg = configOf(c);
      const m = await placeHfCheckpoint(wasm!, cfg, [{ name: 'w.safetensors', bytes: syntheticWeights(c.json, 5) }]);
      const s = m.createSession();
      for (const n of [1, 70]) {
        s.forward(tokens(n, cfg.vocabSize, n));
        expect(s.save().length).toBe(sessionBlobBytes(cfg, s.pos));
      }
      m.free();
    });
  }
});
