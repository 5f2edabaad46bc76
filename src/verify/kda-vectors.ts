import type { KdaChunkLength, Kernels } from '../engine/kernels.js';
import { FormatError, parseSafetensors, tensorF32, type SafetensorsFile } from '../formats/safetensors.js';
import { relErr } from './relerr.js';

/** One KDA test case: inputs, expected outputs and sizes, as read from a vector file. */
export interface KdaVector {
  B: number;
  T: number;
  H: number;
  K: number;
  V: number;
  scale: number;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  g: Float32Array;
  beta: Float32Array;
  initialState: Float32Array;
  o: Float32Array;
  finalState: Float32Array;
}

/** The decode step looped over the tokens, or the chunked prefill at a chunk length. */
export type KdaPath = 'step' | `chunk${KdaChunkLength}`;

export interface KdaVectorResult {
  backend: string;
  path: KdaPath;
  relErrO: number;
  relErrState: number;
}

/**
 * Reads a KDA vector file (layouts in shared/spec/kda.md: q,k,g [B,T,H,K]; v,o [B,T,H,V];
 * beta [B,T,H]; states [B,H,K,V]; metadata `scale`), checking that every shape agrees.
 */
export function readKdaVector(bytes: Uint8Array, label: string): KdaVector {
  const f = parseSafetensors(bytes, label);
  const shape = (name: string, rank: number) => {
    const t = f.tensors.get(name);
    if (!t) throw new FormatError(`${label}: tensor '${name}' is missing`);
    if (t.shape.length !== rank) throw new FormatError(`${label}: tensor '${name}' has rank ${t.shape.length}, expected ${rank}`);
    return t.shape;
  };
  const [B, T, H, K] = shape('q', 4) as [number, number, number, number];
  const V = shape('v', 4)[3]!;
  const expect: Record<string, number[]> = {
    q: [B, T, H, K], k: [B, T, H, K], g: [B, T, H, K], v: [B, T, H, V], o: [B, T, H, V],
    beta: [B, T, H], initial_state: [B, H, K, V], final_state: [B, H, K, V],
  };
  for (const [name, want] of Object.entries(expect)) {
    const got = shape(name, want.length);
    if (got.some((d, i) => d !== want[i])) {
      throw new FormatError(`${label}: tensor '${name}' has shape ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
    }
  }
  const scale = parseScale(f, label, K);
  const get = (name: string) => tensorF32(f.tensors.get(name)!);
  return {
    B, T, H, K, V, scale,
    q: get('q'), k: get('k'), v: get('v'), g: get('g'), beta: get('beta'),
    initialState: get('initial_state'), o: get('o'), finalState: get('final_state'),
  };
}

function parseScale(f: SafetensorsFile, label: string, K: number): number {
  const s = f.metadata.scale;
  if (s === undefined) return 1 / Math.sqrt(K);
  const x = Number(s);
  if (!Number.isFinite(x)) throw new FormatError(`${label}: metadata scale '${s}' is not a number`);
  return x;
}

/** Runs the vector through one backend and path; sequences of the batch run one by one. */
export function runKdaVector(vec: KdaVector, kernels: Kernels, path: KdaPath): KdaVectorResult {
  const { B, T, H, K, V } = vec;
  const o = new Float32Array(B * T * H * V);
  const S = new Float32Array(B * H * K * V);
  S.set(vec.initialState);
  const qk = T * H * K, vo = T * H * V, st = H * K * V;
  for (let b = 0; b < B; b++) {
    const Sb = S.subarray(b * st, (b + 1) * st);
    if (path !== 'step') {
      kernels.kdaPrefill({
        chunk: Number(path.slice(5)) as KdaChunkLength,
        S: Sb, q: vec.q.subarray(b * qk, (b + 1) * qk), k: vec.k.subarray(b * qk, (b + 1) * qk),
        v: vec.v.subarray(b * vo, (b + 1) * vo), g: vec.g.subarray(b * qk, (b + 1) * qk),
        beta: vec.beta.subarray(b * T * H, (b + 1) * T * H), o: o.subarray(b * vo, (b + 1) * vo),
        T, H, K, V, scale: vec.scale,
      });
      continue;
    }
    for (let t = 0; t < T; t++) {
      const a = (b * T + t) * H * K, c = (b * T + t) * H * V;
      kernels.kdaStep({
        S: Sb, q: vec.q.subarray(a, a + H * K), k: vec.k.subarray(a, a + H * K), v: vec.v.subarray(c, c + H * V),
        g: vec.g.subarray(a, a + H * K), beta: vec.beta.subarray((b * T + t) * H, (b * T + t + 1) * H),
        o: o.subarray(c, c + H * V), H, K, V, scale: vec.scale,
      });
    }
  }
  return { backend: kernels.name, path, relErrO: relErr(o, vec.o), relErrState: relErr(S, vec.finalState) };
}
