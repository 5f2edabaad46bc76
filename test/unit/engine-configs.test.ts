// Config variants the default model does not exercise: tied embeddings, the lower-bound gate,
// no MoE, softmax routing with groups, all-KDA and all-MLA stacks. Each must load and give the
// same logits by prefill and by token-by-token decode.
import { describe, expect, it } from 'vitest';
import { placeHfModel } from '../../src/weights/hf-loader.js';
import { syntheticWeights, TINY_CONFIG } from '../../src/weights/synthetic.js';
import { allBackends, tokens } from '../helpers/tiny-model.js';

const base = structuredClone(TINY_CONFIG) as unknown as Record<string, unknown> & { linear_attn_config: Record<string, unknown> };
const variants: Record<string, Record<string, unknown>> = {
  'tied embeddings': { tie_word_embeddings: true },
  'lower-bound gate (-5)': { linear_attn_config: { ...base.linear_attn_config, gate_lower_bound: -5 } },
  'no MoE (dense everywhere)': { num_experts: 0 },
  'softmax router, 2 groups of 4, top-3': { moe_router_activation_func: 'softmax', num_expert_group: 2, topk_group: 1, num_experts_per_token: 3 },
  'all KDA': { linear_attn_config: { ...base.linear_attn_config, kda_layers: [1, 2, 3, 4], full_attn_layers: [] } },
  'all MLA': { linear_attn_config: { ...base.linear_attn_config, kda_layers: [], full_attn_layers: [1, 2, 3, 4] } },
};

describe('engine config variants', async () => {
  const [wasm] = await allBackends();
  for (const [name, patch] of Object.entries(variants)) {
    it(`${name}: loads, and prefill equals decode`, async () => {
      const cfg = { ...base, ...patch };
      const m = await placeHfModel(wasm!, cfg, [{ name: 'v.safetensors', bytes: syntheticWeights(cfg, 3) }]);
      const V = 512, toks = tokens(40, V, 9);
      const all = m.createSession().forward(toks, true);
      const s = m.createSession();
      let worst = 0, scale = 0;
      toks.forEach((t, i) => {
        const l = s.forward([t]);
        for (let j = 0; j < V; j++) {
          worst = Math.max(worst, Math.abs(l[j]! - all[i * V + j]!));
          scale = Math.max(scale, Math.abs(l[j]!));
        }
      });
      expect(Number.isFinite(scale) && scale > 0.1).toBe(true);
      expect(worst / scale).toBeLessThan(1e-5);
      m.free();
    });
  }
});
