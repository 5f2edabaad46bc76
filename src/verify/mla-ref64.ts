/**
 * MLA attention "the long way", in float64: decompress per-head keys and values from the latent
 * cache, concatenate the rope part, plain softmax. No weight absorption anywhere.
 *   latent [L, Dl], kRope [L, Dr], qNope [H, Dn], qRope [H, Dr], Wuk [H, Dn, Dl], Wuv [H, Dvh, Dl]
 * returns out [H, Dvh]
 */
export function mlaLongWay64(
  a: { latent: Float32Array; kRope: Float32Array; qNope: Float32Array; qRope: Float32Array; Wuk: Float32Array; Wuv: Float32Array },
  L: number, H: number, Dl: number, Dr: number, Dn: number, Dvh: number, scale: number,
): Float64Array {
  const out = new Float64Array(H * Dvh);
  for (let h = 0; h < H; h++) {
    const scores = new Float64Array(L);
    const vals: Float64Array[] = [];
    for (let j = 0; j < L; j++) {
      let s = 0;
      for (let n = 0; n < Dn; n++) {
        let kn = 0;
        for (let d = 0; d < Dl; d++) kn += a.Wuk[(h * Dn + n) * Dl + d]! * a.latent[j * Dl + d]!;
        s += a.qNope[h * Dn + n]! * kn;
      }
      for (let r = 0; r < Dr; r++) s += a.qRope[h * Dr + r]! * a.kRope[j * Dr + r]!;
      scores[j] = s * scale;
      const v = new Float64Array(Dvh);
      for (let e = 0; e < Dvh; e++) {
        let acc = 0;
        for (let d = 0; d < Dl; d++) acc += a.Wuv[(h * Dvh + e) * Dl + d]! * a.latent[j * Dl + d]!;
        v[e] = acc;
      }
      vals.push(v);
    }
    const m = Math.max(...scores);
    let sum = 0;
    for (let j = 0; j < L; j++) sum += scores[j] = Math.exp(scores[j]! - m);
    for (let j = 0; j < L; j++)
      for (let e = 0; e < Dvh; e++) out[h * Dvh + e]! += (scores[j]! / sum) * vals[j]![e]!;
  }
  return out;
}
