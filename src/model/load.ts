/** loadModel: any ModelSource -> a ready Model (weights placed, tokenizer built). */
import type { KernelBackend } from '../engine/backend.js';
import { Model } from './model.js';
import { Tokenizer } from '../tokenizer/tokenizer.js';
import { tokenizerFromGguf } from '../tokenizer/from-gguf.js';
import { placeGgufModel } from '../weights/gguf-loader.js';
import { placeHfModel, type LoadProgress, type Shard } from '../weights/hf-loader.js';
import { FormatError } from '../formats/safetensors.js';
import { readAll, readJson, type ModelSource } from '../formats/source.js';
import { tokenizerFromTiktoken } from '../tokenizer/tiktoken.js';
import { EngineModel, type SynthDtype } from '../engine/engine.js';
import { parseKimiConfig } from '../engine/config.js';

export interface LoadOptions {
  /** the kernels to run on: a WasmBackend (anywhere) or the NativeBackend (Node) */
  backend: KernelBackend;
  onProgress?: (p: LoadProgress) => void;
  /** load this GGUF file of the source instead of an HF checkpoint (default: model.gguf when there is no config.json) */
  gguf?: string;
  /**
   * Make seeded random weights in engine memory instead of reading the checkpoint's (which may be
   * absent): the config and tokenizer come from the source as usual. For benchmarks and a GPU node
   * at full size without the download (EngineModel.synthesize).
   */
  synthesize?: { seed: number; dtype?: SynthDtype };
}

/**
 * Loads a model from a source, streaming the weights into the engine: an HF checkpoint
 * (config.json, model.safetensors or a sharded index, optionally tokenizer.json +
 * tokenizer_config.json), or a GGUF file as llama.cpp writes Kimi-Linear (with its vocabulary).
 */
export async function loadModel(source: ModelSource, options: LoadOptions): Promise<Model> {
  const config = options.gguf ? null : await readJson(source, 'config.json');
  if (config === null && options.synthesize) throw new FormatError(`${source.name}: synthesized weights need config.json`);
  if (config === null) {
    const file = options.gguf ?? 'model.gguf';
    const f = await source.open(file);
    if (!f) throw new FormatError(`${source.name}: config.json is missing${options.gguf ? '' : ' (and there is no model.gguf)'}`);
    const { engine, header } = await placeGgufModel(options.backend, f.stream, `${source.name}/${file}`, { onProgress: options.onProgress, bytesTotal: f.size ?? undefined });
    try {
      const tf = tokenizerFromGguf(header.metadata);
      return new Model(engine, tf ? new Tokenizer(tf.tokenizerJson, tf.tokenizerConfig) : null, `${source.name}/${file}`);
    } catch (e) {
      engine.free();
      throw e;
    }
  }
  if (options.synthesize) {
    const engine = EngineModel.synthesize(options.backend, parseKimiConfig(config), options.synthesize.seed, options.synthesize.dtype ?? 'bf16');
    return withTokenizer(source, engine);
  }
  const { files: shards, totalSize } = await shardList(source);
  // one file is opened here for its size; shards one at a time as the loader reaches them
  const single = shards.length === 1 ? await source.open(shards[0]!) : null;
  const opened: Shard[] = shards.map((name) => ({
    name,
    open: async () => {
      const f = single ?? (await source.open(name));
      if (!f) throw new FormatError(`${source.name}: ${name} is missing`);
      return f.stream;
    },
  }));
  // the total lets a GPU refuse a checkpoint it cannot hold before reading any of it
  const bytesTotal = single?.size ?? totalSize ?? undefined;
  const engine = await placeHfModel(options.backend, config, opened, { onProgress: options.onProgress, bytesTotal });
  return withTokenizer(source, engine);
}

/** The model of an HF-style source's engine and tokenizer (tokenizer.json, or Kimi's tiktoken.model). */
async function withTokenizer(source: ModelSource, engine: EngineModel): Promise<Model> {
  try {
    const tj = await readJson(source, 'tokenizer.json');
    const tc = (await readJson(source, 'tokenizer_config.json')) as Record<string, unknown> | null;
    let tokenizer: Tokenizer | null = null;
    if (tj !== null) tokenizer = new Tokenizer(tj, tc ?? {});
    else {
      // Kimi's own checkpoints ship a tiktoken vocabulary instead of tokenizer.json
      const tk = await source.open('tiktoken.model');
      if (tk) {
        const t = tokenizerFromTiktoken(new TextDecoder().decode(await readAll(tk)), tc ?? {});
        tokenizer = new Tokenizer(t.tokenizerJson, t.tokenizerConfig);
      }
    }
    return new Model(engine, tokenizer, source.name);
  } catch (e) {
    engine.free();
    throw e;
  }
}

/** The checkpoint's files, and its tensors' bytes where the index says (metadata.total_size). */
async function shardList(source: ModelSource): Promise<{ files: string[]; totalSize: number | null }> {
  const index = await readJson(source, 'model.safetensors.index.json');
  if (index === null) return { files: ['model.safetensors'], totalSize: null };
  const map = (index as { weight_map?: unknown }).weight_map;
  if (typeof map !== 'object' || map === null) throw new FormatError(`${source.name}: model.safetensors.index.json has no weight_map`);
  const files = [...new Set(Object.values(map as Record<string, unknown>))];
  for (const f of files) if (typeof f !== 'string' || f.includes('/') || f.includes('..')) throw new FormatError(`${source.name}: weight_map names the file ${JSON.stringify(f)}`);
  const total = (index as { metadata?: { total_size?: unknown } }).metadata?.total_size;
  return { files: (files as string[]).sort(), totalSize: typeof total === 'number' && Number.isSafeInteger(total) && total >= 0 ? total : null };
}
