/** Shapes of the generated ABI table (src/engine/kle-abi.ts), which mirrors engine/include/kle.h. */

/**
 * How a parameter crosses the boundary: array pointers are `in` (const) or `inout`; scalars by C
 * type; `addr` is an address in the engine's memory (a handle or a buffer the engine owns), passed
 * as a number (wasm32 offsets, or native user-space addresses, which stay below 2^53).
 */
export type AbiParamKind = 'in' | 'inout' | 'i32' | 'i64' | 'size' | 'f32' | 'addr';
/** Element type behind a pointer parameter. */
export type AbiElem = 'f32' | 'i32' | 'u16' | 'u8';

export interface AbiParam {
  readonly name: string;
  readonly kind: AbiParamKind;
  readonly elem?: AbiElem;
}

export interface AbiFunction {
  readonly ret: 'i32' | 'i64' | 'f32' | 'void' | 'addr';
  readonly params: readonly AbiParam[];
}

/** An argument of a raw kernel call: a typed array (or null) for pointers, a number otherwise. */
export type AbiArg = number | Float32Array | Int32Array | Uint16Array | Uint8Array | null;
