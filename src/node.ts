/** Node (and Bun/Deno with node: APIs) helpers: load the committed wasm and the native addon. */
export { loadAllKernels, loadNativeBackend, loadWasmBackend, packageRoot } from './engine/node-kernels.js';
export { NativeBackend } from './engine/native-backend.js';
