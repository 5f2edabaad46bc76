// Logits of Kimi's vocabulary size placed in a GPU session, for the GPU sampler's test
// (test/unit/cuda-sampling.test.ts) and its benchmark (bench/gpu-sampling.ts): a session's state
// blob ends with its last logits, so a blob with other logits (and its hash redone) loads them.
import type { CudaBackend } from '../../src/engine/cuda-backend.js';
import { EngineModel, type EngineSession } from '../../src/engine/engine.js';
import { parseKimiConfig } from '../../src/engine/config.js';
import { fnv1a64 } from '../../src/util/fnv.js';
import { TINY_CONFIG } from '../../src/weights/synthetic.js';

/** Kimi Linear's vocabulary size */
export const KIMI_VOCAB = 163_840;

/** Seeded Gaussian logits with standard deviation sd; step > 0 rounds them to its multiples (exact ties). */
export function gaussianLogits(seed: number, sd: number, step = 0, V = KIMI_VOCAB): Float32Array {
  const l = new Float32Array(V);
  let s = seed;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 4294967296;
  for (let i = 0; i < V; i++) {
    const x = sd * Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
    l[i] = step ? Math.round(x / step) * step : x;
  }
  return l;
}

/** A session of a tiny model with V logits on the device, and a way to replace them. */
export interface LogitsSession {
  readonly session: EngineSession;
  /** the session's logits become l (length V) */
  set(l: Float32Array): void;
}

export function logitsSession(cuda: CudaBackend, V = KIMI_VOCAB): LogitsSession {
  // the tiny model's special ids are 256 to 258: below that, ids that a vocabulary of V holds
  const ids = V > 258 ? {} : { bos_token_id: 0, eos_token_id: Math.min(1, V - 1), pad_token_id: Math.min(2, V - 1) };
  const model = EngineModel.synthesize(cuda, parseKimiConfig({ ...TINY_CONFIG, vocab_size: V, ...ids }), 5, 'bf16');
  const session = model.createSession();
  session.step([1, 2, 3]);
  const base = session.save();
  return {
    session,
    set(l: Float32Array) {
      if (l.length !== V) throw new RangeError(`${l.length} logits for a vocabulary of ${V}`);
      const b = base.slice(), end = b.length - 8;
      b.set(new Uint8Array(l.buffer, l.byteOffset, l.byteLength), end - 4 * V);
      const [hi, lo] = fnv1a64(b.subarray(0, end));
      new DataView(b.buffer).setUint32(end, lo, true);
      new DataView(b.buffer).setUint32(end + 4, hi, true);
      session.load(b);
    },
  };
}
