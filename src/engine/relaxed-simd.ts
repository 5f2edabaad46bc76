/**
 * Whether this runtime runs relaxed SIMD's int8 dot product as the final specification has it,
 * which the `kle-simd-relaxed.wasm` build needs (its K-quant dots; see engine/build/relaxed.mjs).
 * Not enough that the module validates: Node 20's V8 (11.3) takes the instruction behind
 * `--experimental-wasm-relaxed-simd` and returns twice the dot, so a probe module runs it on
 * known values. Chromium, Deno 2 and Bun 1.4 pass; Node 20 and runtimes without relaxed SIMD do not.
 * @example
 * const file = relaxedSimdWorks() ? 'kle-simd-relaxed.wasm' : 'kle-simd.wasm';
 */
export function relaxedSimdWorks(): boolean {
  if (cached !== undefined) return cached;
  try {
    cached = WebAssembly.validate(PROBE) && (new WebAssembly.Instance(new WebAssembly.Module(PROBE)).exports.f as () => number)() === -119;
  } catch {
    cached = false;
  }
  return cached;
}
let cached: boolean | undefined;

// (func (export "f") (result i32) the lane-0 sum of i8 (-1, 2, -3, 4) times i7 (127, 1, 1, 1) plus 5:
// -127 + 2 - 3 + 4 + 5 = -119 (the second operand at 127 checks it is taken as unsigned)
const PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 127, 3, 2, 1, 0, 7, 5, 1, 1, 102, 0, 0, 10, 64, 1, 62, 0, 253,
  12, 255, 2, 253, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 253, 12, 127, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 253, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 253, 147, 2, 253, 27, 0, 11,
]);
