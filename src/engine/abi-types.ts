/** Shapes of the generated ABI table (src/engine/kle-abi.ts), which mirrors wasm/include/kle.h. */

/** How a parameter crosses the boundary: pointers are `in` (const) or `inout`; scalars by C type. */
export type AbiParamKind = 'in' | 'inout' | 'i32' | 'i64' | 'size' | 'f32';
/** Element type behind a pointer parameter. */
export type AbiElem = 'f32' | 'i32' | 'u16' | 'u8';

export interface AbiParam {
  readonly name: string;
  readonly kind: AbiParamKind;
  readonly elem?: AbiElem;
}

export interface AbiFunction {
  readonly ret: 'i32' | 'i64' | 'f32' | 'void' | 'ptr';
  readonly params: readonly AbiParam[];
}

/** An argument of a raw kernel call: a typed array (or null) for pointers, a number otherwise. */
export type AbiArg = number | Float32Array | Int32Array | Uint16Array | Uint8Array | null;
