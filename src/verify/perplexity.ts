/**
 * Held-out loss the way train/evaluate.py computes it, so the engine's number and PyTorch's can
 * be compared: the token stream cut into windows of `ctx + 1` tokens that overlap by one, each
 * run from an empty session with every position's logits, scoring the window's last `ctx`
 * tokens; the mean negative log-likelihood in nats per token (log-softmax in float64).
 */
import type { EngineModel } from '../engine/engine.js';

export interface HeldoutLoss {
  /** mean negative log-likelihood, nats per token */
  readonly loss: number;
  readonly perplexity: number;
  readonly windows: number;
  readonly tokens: number;
}

export interface HeldoutOptions {
  /** tokens scored per window (train/common.py's EVAL_CTX) */
  readonly ctx?: number;
  /** score only the first this many windows */
  readonly maxWindows?: number;
  /** after each window: windows done, of how many */
  readonly onWindow?: (done: number, total: number) => void;
}

export const EVAL_CTX = 256;

/** Token ids as train/prepare.ts writes them (little-endian uint16, as on every host here). */
export function idsFromU16(bytes: Uint8Array, label = 'token file'): Uint16Array {
  if (bytes.length % 2) throw new RangeError(`${label}: ${bytes.length} bytes is not a whole number of uint16 token ids`);
  return new Uint16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
}

export function heldoutLoss(model: EngineModel, ids: ArrayLike<number>, opts: HeldoutOptions = {}): HeldoutLoss {
  const ctx = opts.ctx ?? EVAL_CTX;
  if (!Number.isSafeInteger(ctx) || ctx < 1) throw new RangeError(`ctx must be a positive integer, not ${ctx}`);
  const V = model.config.vocabSize;
  for (let i = 0; i < ids.length; i++) {
    const t = ids[i]!;
    if (!Number.isInteger(t) || t < 0 || t >= V) throw new RangeError(`token ${i} (${t}) is outside the vocabulary (0..${V - 1})`);
  }
  const all = Math.floor((ids.length - 1) / ctx);
  const n = Math.min(all, opts.maxWindows ?? all);
  if (n < 1) throw new RangeError(`${ids.length} tokens make no window of ${ctx} + 1`);
  let nll = 0;
  const input = new Int32Array(ctx);
  for (let w = 0; w < n; w++) {
    for (let i = 0; i < ctx; i++) input[i] = ids[w * ctx + i]!;
    const s = model.createSession();
    try {
      const logits = s.forward(input, true);
      for (let i = 0; i < ctx; i++) nll -= logSoftmaxAt(logits, i * V, V, ids[w * ctx + i + 1]!);
    } finally {
      s.free();
    }
    opts.onWindow?.(w + 1, n);
  }
  const loss = nll / (n * ctx);
  return { loss, perplexity: Math.exp(loss), windows: n, tokens: n * ctx };
}

function logSoftmaxAt(x: Float32Array, off: number, V: number, target: number): number {
  let m = -Infinity;
  for (let j = 0; j < V; j++) if (x[off + j]! > m) m = x[off + j]!;
  let s = 0;
  for (let j = 0; j < V; j++) s += Math.exp(x[off + j]! - m);
  return x[off + target]! - m - Math.log(s);
}
