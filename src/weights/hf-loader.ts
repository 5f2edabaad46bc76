/**
 * Places an HF checkpoint (config.json + safetensors shards) into the engine, streaming: each
 * shard's header is checked before any of its data is read, and every tensor's bytes go from
 * the stream into engine memory as they arrive. Every tensor is checked: its name must belong
 * to the architecture as configured, its shape must be the one the engine expects (asked of the
 * engine itself), its dtype a float type, its values finite. Errors name the file and tensor.
 */
import { EngineModel } from '../engine/engine.js';
import type { KernelBackend } from '../engine/backend.js';
import type { TensorSlot } from '../engine/roles.js';
import type { WeightFormatName } from '../engine/kernels.js';
import { parseKimiConfig, type KimiConfig } from '../engine/config.js';
import { hfName, hfSlot, isIgnorableHfName } from './hf-names.js';
import { FormatError, tensorF32 } from '../formats/safetensors.js';
import { bytesToStream, readSafetensorsStream, type ChunkSink, type TensorInfo } from '../formats/safetensors-stream.js';
import { FiniteCheck, gatherChecked } from './finite-check.js';
import { missingSlots, slotKey } from '../engine/slots.js';

/** One safetensors shard: in memory, or a stream opened on demand (file, fetch body, R2 object). */
export interface Shard {
  readonly name: string;
  readonly bytes?: Uint8Array;
  readonly open?: () => Promise<ReadableStream<Uint8Array>>;
}

export interface LoadProgress {
  readonly shard: string;
  readonly shardsDone: number;
  readonly shardsTotal: number;
  readonly bytesDone: number;
  /** bytes of all shards, when known */
  readonly bytesTotal: number | null;
}

export interface PlaceOptions {
  onProgress?: (p: LoadProgress) => void;
  /** total bytes of the shards, if the source knows them (for progress) */
  bytesTotal?: number;
}

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8 };

const DIRECT: Partial<Record<string, WeightFormatName>> = { F32: 'f32', BF16: 'bf16', F16: 'f16' };

/** Builds an engine model from a parsed config.json and its shards. */
export function placeHfModel(backend: KernelBackend, configJson: unknown, shards: readonly Shard[], opts: PlaceOptions = {}): Promise<EngineModel> {
  return placeHfCheckpoint(backend, parseKimiConfig(configJson), shards, opts);
}

/** Builds an engine model from a checked config and its shards (HF tensor names). */
export async function placeHfCheckpoint(backend: KernelBackend, config: KimiConfig, shards: readonly Shard[], opts: PlaceOptions = {}): Promise<EngineModel> {
  const model = EngineModel.create(backend, config);
  try {
    const placed = new Map<string, string>();
    let bytesDone = 0;
    const bytesTotal = opts.bytesTotal ?? (shards.every((s) => s.bytes) ? shards.reduce((a, s) => a + s.bytes!.length, 0) : null);
    // F32, BF16 and F16 tensors take on a GPU what they take in the file
    if (bytesTotal !== null) model.checkFits(bytesTotal, `the checkpoint (${shards.length} shard${shards.length > 1 ? 's' : ''})`);
    for (const [i, shard] of shards.entries()) {
      const stream = shard.bytes ? bytesToStream(shard.bytes) : shard.open ? await shard.open() : null;
      if (!stream) throw new FormatError(`${shard.name}: no bytes and no way to open it`);
      const slots = new Map<string, { slot: TensorSlot; rows: number; cols: number; anyFormat: boolean }>();
      await readSafetensorsStream(
        stream,
        shard.name,
        (t) => {
          const s = slots.get(t.name);
          return s ? sinkFor(model, s, t, `${shard.name}: tensor '${t.name}'`) : null;
        },
        {
          onHeader: (tensors) => {
            // every name, shape and dtype is checked before the first data byte is read
            for (const t of tensors) {
              const where = `${shard.name}: tensor '${t.name}'`;
              if (isIgnorableHfName(t.name)) continue;
              const slot = hfSlot(t.name, config);
              const exp = slot ? model.expect(slot) : null;
              if (!slot || !exp || exp.need === 'unused') throw new FormatError(`${where} is not part of KimiLinearForCausalLM as this config.json describes it`);
              const key = slotKey(slot);
              const prev = placed.get(key);
              if (prev) throw new FormatError(`${where} appears twice (also in ${prev})`);
              placed.set(key, shard.name);
              checkShape(exp, t, where);
              slots.set(t.name, { slot, ...exp });
            }
          },
          onBytes: (n) => {
            bytesDone += n;
            opts.onProgress?.({ shard: shard.name, shardsDone: i, shardsTotal: shards.length, bytesDone, bytesTotal });
          },
        },
      );
    }
    opts.onProgress?.({ shard: '', shardsDone: shards.length, shardsTotal: shards.length, bytesDone, bytesTotal });
    const missing = missingSlots(model, placed);
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

function checkShape(exp: { rows: number; cols: number; anyFormat: boolean }, t: TensorInfo, where: string): void {
  const want = `[${exp.rows}, ${exp.cols}]`;
  if (exp.anyFormat) {
    if (t.shape.length !== 2 || t.shape[0] !== exp.rows || t.shape[1] !== exp.cols) throw new FormatError(`${where}: shape ${JSON.stringify(t.shape)}, the config needs ${want}`);
    if (!DIRECT[t.dtype]) throw new FormatError(`${where}: dtype ${t.dtype} is not a float weight type (F32, BF16, F16)`);
  } else {
    // vectors, conv kernels [C, 1, W] and A_log [1, 1, H, 1]: compared with unit dims dropped
    const numel = t.shape.reduce((a, b) => a * b, 1);
    const squeezed = t.shape.filter((d) => d !== 1);
    const wanted = [exp.rows, exp.cols].filter((d) => d !== 1);
    if (numel !== exp.rows * exp.cols || squeezed.join() !== wanted.join()) throw new FormatError(`${where}: shape ${JSON.stringify(t.shape)}, the config needs ${want}`);
    if (!DTYPE_BYTES[t.dtype]) throw new FormatError(`${where}: dtype ${t.dtype} is not a float type`);
  }
}

function sinkFor(model: EngineModel, s: { slot: TensorSlot; rows: number; cols: number; anyFormat: boolean }, t: TensorInfo, where: string): ChunkSink {
  const finite = new FiniteCheck(t.dtype, where);
  if (s.anyFormat) {
    // matmul weights keep their dtype: straight from the stream into engine memory
    const w = model.allocTensor(s.slot, DIRECT[t.dtype]!, s.rows, s.cols);
    return {
      write: (c) => {
        finite.push(c);
        w.write(c);
      },
      end: () => w.end(),
    };
  }
  // small f32-only tensors (norms, gates, conv): gathered, converted, placed
  return gatherChecked(t.byteLength, (buf) => {
    const f = tensorF32({ name: t.name, dtype: t.dtype, shape: t.shape, bytes: buf });
    model.place(s.slot, 'f32', s.rows, s.cols, new Uint8Array(f.buffer, f.byteOffset, f.byteLength));
  }, finite);
}
