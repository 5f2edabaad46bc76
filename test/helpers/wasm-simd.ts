import wabtInit from 'wabt';

/**
 * SIMD instruction counts per exported function of a wasm module, including the functions it
 * calls directly or indirectly (so a hot loop that the compiler kept out of line still counts).
 */
export async function simdCounts(bytes: Uint8Array): Promise<Map<string, { f32x4: number; v128: number }>> {
  const wabt = await wabtInit();
  const mod = wabt.readWasm(bytes, { readDebugNames: false, simd: true });
  mod.generateNames();
  mod.applyNames();
  const text = mod.toText({ foldExprs: false, inlineExport: true });
  mod.destroy();
  const bodies = new Map<string, string>();
  const exportsOf = new Map<string, string>();
  for (const chunk of text.split(/\n  \(func /).slice(1)) {
    const name = /^\$(\S+)/.exec(chunk)?.[1];
    if (!name) continue;
    bodies.set(name, chunk);
    const ex = /\(export "([^"]+)"\)/.exec(chunk.split('\n')[0]!);
    if (ex) exportsOf.set(ex[1]!, name);
  }
  const own = (body: string) => ({
    f32x4: (body.match(/\bf32x4\./g) ?? []).length,
    v128: (body.match(/\bv128\./g) ?? []).length,
  });
  const out = new Map<string, { f32x4: number; v128: number }>();
  for (const [exp, fn] of exportsOf) {
    const seen = new Set<string>();
    const stack = [fn];
    const total = { f32x4: 0, v128: 0 };
    while (stack.length) {
      const f = stack.pop()!;
      if (seen.has(f)) continue;
      seen.add(f);
      const body = bodies.get(f);
      if (!body) continue;
      const c = own(body);
      total.f32x4 += c.f32x4;
      total.v128 += c.v128;
      for (const m of body.matchAll(/\bcall \$([^\s)]+)/g)) stack.push(m[1]!);
    }
    out.set(exp, total);
  }
  return out;
}
