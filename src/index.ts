/**
 * kimi-linear-edge: the portable part of the runtime (no Node APIs), usable in Node, Deno, Bun,
 * Cloudflare Workers and browsers. Node helpers that read the package's files or load the
 * native addon are in `kimi-linear-edge/node`.
 */
export type { AbiArg, AbiFunction, AbiParam } from './engine/abi-types.js';
export type { BackendName, KernelBackend } from './engine/backend.js';
export {
  Kernels,
  KernelError,
  WeightFormat,
  KDA_CHUNK_LENGTHS,
  KDA_CHUNK_CPU,
  MAX_HEAD_DIM,
  type Impl,
  type KdaArgs,
  type KdaChunkLength,
  type MlaDecodeArgs,
  type WeightFormatName,
} from './engine/kernels.js';
export { KLE_ABI, type KleFunctionName } from './engine/kle-abi.js';
export { WasmBackend } from './engine/wasm-backend.js';
export { relaxedSimdWorks } from './engine/relaxed-simd.js';
export {
  FormatError,
  MAX_HEADER_BYTES,
  parseSafetensors,
  tensorF32,
  type SafetensorsDtype,
  type SafetensorsFile,
  type SafetensorsTensor,
} from './formats/safetensors.js';
export { writeSafetensors, type TensorToWrite } from './formats/safetensors-writer.js';
export { readKdaVector, runKdaVector, type KdaPath, type KdaVector, type KdaVectorResult } from './verify/kda-vectors.js';
export { relErr } from './verify/relerr.js';

// the runtime: models, sessions, generation
export { loadModel, type LoadOptions } from './model/load.js';
export { sourceFromFiles, sourceFromR2, sourceFromUrl, type ModelSource, type OpenedFile, type R2BucketLike } from './formats/source.js';
export { Model } from './model/model.js';
export { Session, type FinishReason, type GenerateEvent, type GenerateOptions } from './generate/session.js';
export { installRuntimeModule, Sampler, runtimeModuleInstalled, type SamplingOptions } from './generate/sampler.js';
export { ReferenceSampler } from './generate/sampler-reference.js';
export { Tokenizer, TokenizerError, StreamDecoder, type ChatMessage } from './tokenizer/tokenizer.js';
export { ConfigError, parseKimiConfig, type KimiConfig, type LayerKind, type MoeConfig } from './engine/config.js';
export { EngineError, EngineModel, EngineSession } from './engine/engine.js';
export { KIMI_LINEAR_48B_CONFIG } from './weights/synthetic.js';
export type { LoadProgress } from './weights/hf-loader.js';
