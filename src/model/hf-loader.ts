/**
 * Places an HF checkpoint (config.json + safetensors shards) into the engine. Every tensor is
 * checked before a byte is used: its name must belong to the architecture as configured, its
 * shape must be the one the engine expects (asked of the engine itself), its dtype must be a
 * float type, and its values must be finite. Errors name the file and the tensor.
 */
import { EngineModel } from '../engine/engine.js';
import type { KernelBackend } from '../engine/backend.js';
import { EXPERT_ROLES, ROLES, type TensorSlot } from '../engine/roles.js';
import type { WeightFormatName } from '../engine/kernels.js';
import { parseKimiConfig, type KimiConfig } from './config.js';
import { hfName, hfSlot, isIgnorableHfName } from './hf-names.js';
import { FormatError, parseSafetensors, tensorF32, type SafetensorsTensor } from './safetensors.js';

/** One safetensors shard in memory. */
export interface Shard {
  readonly name: string;
  readonly bytes: Uint8Array;
}

export interface LoadProgress {
  readonly tensorsDone: number;
  readonly tensorsTotal: number;
  readonly bytesDone: number;
  readonly bytesTotal: number;
}

export interface PlaceOptions {
  onProgress?: (p: LoadProgress) => void;
}

/** The first non-finite value of a float tensor, or -1 (checked on the raw bits: no conversion). */
function firstNonFinite(t: SafetensorsTensor): number {
  const b = t.bytes;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (t.dtype === 'F32') {
    for (let i = 0; i < b.byteLength; i += 4) if ((dv.getUint32(i, true) & 0x7f800000) === 0x7f800000) return i / 4;
  } else if (t.dtype === 'BF16') {
    for (let i = 0; i < b.byteLength; i += 2) if ((dv.getUint16(i, true) & 0x7f80) === 0x7f80) return i / 2;
  } else if (t.dtype === 'F16') {
    for (let i = 0; i < b.byteLength; i += 2) if ((dv.getUint16(i, true) & 0x7c00) === 0x7c00) return i / 2;
  } else if (t.dtype === 'F64') {
    for (let i = 0; i < b.byteLength; i += 8) if (!Number.isFinite(dv.getFloat64(i, true))) return i / 8;
  }
  return -1;
}

const DIRECT: Partial<Record<string, WeightFormatName>> = { F32: 'f32', BF16: 'bf16', F16: 'f16' };

/** Every slot the config could use, for the missing-tensor check. */
function allSlots(c: KimiConfig): TensorSlot[] {
  const out: TensorSlot[] = [];
  for (let layer = -1; layer < c.numLayers; layer++)
    for (const role of ROLES) {
      const n = EXPERT_ROLES.has(role) ? (c.moe?.numExperts ?? 0) : 1;
      for (let expert = 0; expert < n; expert++) out.push({ role, layer, expert });
    }
  return out;
}

/**
 * Builds an engine model from a parsed config.json and its shards. The shards' bytes are read
 * where they lie (views, no copy) and written once into engine memory.
 */
export function placeHfModel(backend: KernelBackend, configJson: unknown, shards: readonly Shard[], opts: PlaceOptions = {}): EngineModel {
  const config = parseKimiConfig(configJson);
  const model = EngineModel.create(backend, config);
  try {
    const parsed = shards.map((s) => ({ name: s.name, file: parseSafetensors(s.bytes, s.name) }));
    const placed = new Map<string, string>();
    const tensorsTotal = parsed.reduce((a, p) => a + p.file.tensors.size, 0);
    const bytesTotal = parsed.reduce((a, p) => a + [...p.file.tensors.values()].reduce((x, t) => x + t.bytes.byteLength, 0), 0);
    let tensorsDone = 0, bytesDone = 0;
    for (const { name: shard, file } of parsed) {
      for (const t of file.tensors.values()) {
        const where = `${shard}: tensor '${t.name}'`;
        tensorsDone++;
        bytesDone += t.bytes.byteLength;
        if (isIgnorableHfName(t.name)) continue;
        const slot = hfSlot(t.name, config);
        const exp = slot ? model.expect(slot) : null;
        if (!slot || !exp || exp.need === 'unused') throw new FormatError(`${where} is not part of KimiLinearForCausalLM as this config.json describes it`);
        const key = `${slot.role}/${slot.layer}/${slot.expert}`;
        const prev = placed.get(key);
        if (prev) throw new FormatError(`${where} appears twice (also in ${prev})`);
        placed.set(key, shard);
        placeTensor(model, slot, exp, t, where);
        opts.onProgress?.({ tensorsDone, tensorsTotal, bytesDone, bytesTotal });
      }
    }
    const missing = allSlots(config).filter((s) => !placed.has(`${s.role}/${s.layer}/${s.expert}`) && model.expect(s).need === 'required');
    if (missing.length) {
      const names = missing.slice(0, 5).map((s) => hfName(s, config));
      throw new FormatError(`missing tensor${missing.length > 1 ? 's' : ''}: ${names.join(', ')}${missing.length > 5 ? ` and ${missing.length - 5} more` : ''}`);
    }
    model.finalize();
    return model;
  } catch (e) {
    model.free();
    throw e;
  }
}

function placeTensor(model: EngineModel, slot: TensorSlot, exp: { rows: number; cols: number; anyFormat: boolean }, t: SafetensorsTensor, where: string): void {
  const numel = t.shape.reduce((a, b) => a * b, 1);
  const want = `[${exp.rows}, ${exp.cols}]`;
  if (exp.anyFormat) {
    if (t.shape.length !== 2 || t.shape[0] !== exp.rows || t.shape[1] !== exp.cols) throw new FormatError(`${where}: shape ${JSON.stringify(t.shape)}, the config needs ${want}`);
  } else {
    // vectors, conv kernels [C, 1, W] and A_log [1, 1, H, 1]: compare with the unit dims dropped
    const squeezed = t.shape.filter((d) => d !== 1);
    const wanted = [exp.rows, exp.cols].filter((d) => d !== 1);
    if (numel !== exp.rows * exp.cols || squeezed.join() !== wanted.join()) throw new FormatError(`${where}: shape ${JSON.stringify(t.shape)}, the config needs ${want}`);
  }
  const bad = firstNonFinite(t);
  if (bad >= 0) throw new FormatError(`${where}: value ${bad} is not finite (NaN or infinity)`);
  if (exp.anyFormat) {
    const fmt = DIRECT[t.dtype];
    if (!fmt) throw new FormatError(`${where}: dtype ${t.dtype} is not a float weight type (F32, BF16, F16)`);
    model.place(slot, fmt, exp.rows, exp.cols, t.bytes);
  } else {
    if (!['F32', 'BF16', 'F16', 'F64'].includes(t.dtype)) throw new FormatError(`${where}: dtype ${t.dtype} is not a float type`);
    const f = tensorF32(t);
    model.place(slot, 'f32', exp.rows, exp.cols, new Uint8Array(f.buffer, f.byteOffset, f.byteLength));
  }
}
