/** ||a - b||_2 / ||b||_2 in float64 (0 when both are zero, Infinity when only b is). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new RangeError(`relErr: lengths ${a.length} and ${b.length} differ`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
  }
  if (Number.isNaN(num)) return NaN;
  if (den === 0) return num === 0 ? 0 : Infinity;
  return Math.sqrt(num / den);
}
