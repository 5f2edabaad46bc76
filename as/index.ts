// The runtime's AssemblyScript module (wasm/dist/kle-as.wasm): the sampler and the BPE
// encoder. It imports its memory: the sampler's instances borrow the wasm engine's, the
// encoder's get one of their own.
export * from './sampler';
export * from './bpe';
