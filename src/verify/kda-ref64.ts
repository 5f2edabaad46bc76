/**
 * The KDA recurrence of docs/model.md (section 2) in float64, written for the tests (it shares
 * nothing with the C code). One sequence: q,k,g [T,H,K], v [T,H,V], beta [T,H], S [H,K,V].
 */
export function kdaRecurrence64(
  a: { q: Float32Array; k: Float32Array; v: Float32Array; g: Float32Array; beta: Float32Array; S: Float32Array },
  T: number, H: number, K: number, V: number, scale: number,
): { o: Float64Array; S: Float64Array } {
  const S = Float64Array.from(a.S);
  const o = new Float64Array(T * H * V);
  const u = new Float64Array(V);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const base = h * K * V, qk = (t * H + h) * K, vo = (t * H + h) * V, b = a.beta[t * H + h]!;
      for (let i = 0; i < K; i++) {
        const e = Math.exp(a.g[qk + i]!);
        for (let j = 0; j < V; j++) S[base + i * V + j]! *= e;
      }
      for (let j = 0; j < V; j++) {
        let acc = 0;
        for (let i = 0; i < K; i++) acc += S[base + i * V + j]! * a.k[qk + i]!;
        u[j] = a.v[vo + j]! - acc;
      }
      for (let i = 0; i < K; i++)
        for (let j = 0; j < V; j++) S[base + i * V + j]! += b * a.k[qk + i]! * u[j]!;
      for (let j = 0; j < V; j++) {
        let acc = 0;
        for (let i = 0; i < K; i++) acc += S[base + i * V + j]! * a.q[qk + i]! * scale;
        o[vo + j] = acc;
      }
    }
  return { o, S };
}
