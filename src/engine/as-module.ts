/**
 * The runtime's AssemblyScript module (as/ -> wasm/dist/kle-as.wasm: the sampler and the BPE
 * encoder), compiled once per process and instantiated over whichever memory each use needs.
 * `kimi-linear-edge/node` installs it on import; a Worker passes the module its bundler compiled
 * (worker/index.ts); a browser compiles the file itself. Without it, sampling and tokenizing
 * fall back to their TypeScript and @huggingface/tokenizers paths.
 */
let compiled: WebAssembly.Module | null = null;

/** Makes the compiled wasm/dist/kle-as.wasm available to the samplers and tokenizers of this process. */
export function installRuntimeModule(module: WebAssembly.Module): void {
  compiled = module;
}

/** Whether the compiled module is installed. */
export function runtimeModuleInstalled(): boolean {
  return compiled !== null;
}

/** An instance working in `memory`; null when no module is installed. */
export function instantiateRuntimeModule<T>(memory: WebAssembly.Memory): T | null {
  return compiled ? (new WebAssembly.Instance(compiled, { env: { memory } }).exports as unknown as T) : null;
}
