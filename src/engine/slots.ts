/** Tensor slots of a config, shared by the checkpoint loaders' missing-tensor checks. */
import type { EngineModel } from './engine.js';
import { EXPERT_ROLES, ROLES, type TensorSlot } from './roles.js';
import type { KimiConfig } from './config.js';

/** A slot as a map key. */
export function slotKey(s: TensorSlot): string {
  return `${s.role}/${s.layer}/${s.expert}`;
}

/** Every slot the config could use. */
export function allSlots(c: KimiConfig): TensorSlot[] {
  const out: TensorSlot[] = [];
  for (let layer = -1; layer < c.numLayers; layer++)
    for (const role of ROLES) {
      const n = EXPERT_ROLES.has(role) ? (c.moe?.numExperts ?? 0) : 1;
      for (let expert = 0; expert < n; expert++) out.push({ role, layer, expert });
    }
  return out;
}

/** The slots the engine requires that no tensor filled (`placed` holds slotKey()s). */
export function missingSlots(model: EngineModel, placed: { has(key: string): boolean }): TensorSlot[] {
  return allSlots(model.config).filter((s) => !placed.has(slotKey(s)) && model.expect(s).need === 'required');
}
