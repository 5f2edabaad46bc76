// relaxed.mjs: turns the relaxed-SIMD build's calls of the import kle.rdot into the instruction
// i32x4.relaxed_dot_i8x16_i7x16_add_s (engine/kernels/matmul_q8.c says why it is a call).
//
// Debian's emscripten 3.1.6 (clang 14) has no builtin for the relaxed dot, and the relaxed-SIMD
// encodings of its day are not the final ones. wabt (from npm, build time only) reads the module,
// writes it as text, and parses the text back with the final opcode in each call's place; the
// operands and the result are the call's, in the same order. The import stays (its index keeps
// every other function's), unused: hosts give it a function that throws.
import wabtInit from 'wabt';

const CALL = /\bcall \$kle\.rdot\b/g;
const FEATURES = { simd: true, mutable_globals: true, sat_float_to_int: true, sign_extension: true, bulk_memory: true, multi_value: true };

/** `pre`: the module built with -DKLE_RELAXED_SIMD; `plain`: the SIMD build of the same sources, whose imports it must not add to but kle.rdot. */
export async function relaxedModule(pre, plain) {
  const imports = (bytes) => WebAssembly.Module.imports(new WebAssembly.Module(bytes)).map((i) => `${i.module}.${i.name}:${i.kind}`);
  const extra = imports(pre).filter((i) => !imports(plain).includes(i));
  if (extra.length !== 1 || extra[0] !== 'kle.rdot:function')
    throw new Error(`relaxed build: expected kle.rdot as its one extra import (an undefined symbol otherwise), got ${extra.join(', ') || 'none'}`);
  const wabt = await wabtInit();
  // a copy: a Buffer may be a view into a larger pool, which wabt would read from its start
  const m = wabt.readWasm(new Uint8Array(pre), { ...FEATURES, readDebugNames: false });
  try {
    m.generateNames();
    m.applyNames();
    const text = m.toText({ foldExprs: false, inlineExport: false });
    const calls = text.match(CALL)?.length ?? 0;
    if (calls === 0) throw new Error('relaxed build: no call of kle.rdot to replace');
    const out = wabt.parseWat('kle-simd-relaxed.wat', text.replace(CALL, 'i32x4.relaxed_dot_i8x16_i7x16_add_s'), { ...FEATURES, relaxed_simd: true });
    try {
      out.resolveNames();
      out.validate();
      return { bytes: new Uint8Array(out.toBinary({}).buffer), calls };
    } finally {
      out.destroy();
    }
  } finally {
    m.destroy();
  }
}
