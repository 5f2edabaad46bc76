/** loadModel: any ModelSource -> a ready Model (weights placed, tokenizer built). */
import type { KernelBackend } from '../engine/backend.js';
import { Model } from '../generate/model.js';
import { Tokenizer } from '../tokenizer/tokenizer.js';
import { placeHfModel, type LoadProgress, type Shard } from './hf-loader.js';
import { FormatError } from './safetensors.js';
import { readJson, type ModelSource } from './source.js';

export interface LoadOptions {
  /** the kernels to run on: a WasmBackend (anywhere) or the NativeBackend (Node) */
  backend: KernelBackend;
  onProgress?: (p: LoadProgress) => void;
}

/**
 * Loads an HF-layout model (config.json, model.safetensors or a sharded index, and optionally
 * tokenizer.json + tokenizer_config.json) from a source, streaming the weights into the engine.
 */
export async function loadModel(source: ModelSource, options: LoadOptions): Promise<Model> {
  const config = await readJson(source, 'config.json');
  if (config === null) throw new FormatError(`${source.name}: config.json is missing`);
  const shards = await shardList(source);
  const opened: Shard[] = shards.map((name) => ({
    name,
    open: async () => {
      const f = await source.open(name);
      if (!f) throw new FormatError(`${source.name}: ${name} is missing`);
      return f.stream;
    },
  }));
  const engine = await placeHfModel(options.backend, config, opened, { onProgress: options.onProgress });
  try {
    const tj = await readJson(source, 'tokenizer.json');
    const tc = await readJson(source, 'tokenizer_config.json');
    const tokenizer = tj === null ? null : new Tokenizer(tj, tc ?? {});
    return new Model(engine, tokenizer, source.name);
  } catch (e) {
    engine.free();
    throw e;
  }
}

async function shardList(source: ModelSource): Promise<string[]> {
  const index = await readJson(source, 'model.safetensors.index.json');
  if (index === null) return ['model.safetensors'];
  const map = (index as { weight_map?: unknown }).weight_map;
  if (typeof map !== 'object' || map === null) throw new FormatError(`${source.name}: model.safetensors.index.json has no weight_map`);
  const files = [...new Set(Object.values(map as Record<string, unknown>))];
  for (const f of files) if (typeof f !== 'string' || f.includes('/') || f.includes('..')) throw new FormatError(`${source.name}: weight_map names the file ${JSON.stringify(f)}`);
  return (files as string[]).sort();
}
