declare module '*.wasm' {
  const module: WebAssembly.Module;
  export default module;
}

declare module '*.safetensors' {
  const data: ArrayBuffer;
  export default data;
}
