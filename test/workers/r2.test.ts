// A model read from an R2 bucket (simulated locally by miniflare, as wrangler dev does): the
// path the Worker takes when MODEL_SOURCE is "r2", for models too large to bundle.
import { env } from 'cloudflare:test';
import { describe, expect, it } from 'vitest';
import kleSimd from '../../wasm/dist/kle-simd.wasm';
import weights from '../../models/default/model.safetensors';
import config from '../../models/default/config.json';
import tokenizer from '../../models/default/tokenizer.json';
import tokenizerConfig from '../../models/default/tokenizer_config.json';
import { WasmBackend } from '../../src/engine/wasm-backend.js';
import { loadModel } from '../../src/model/load.js';
import { sourceFromR2, type R2BucketLike } from '../../src/formats/source.js';

describe('loading from R2 inside workerd', () => {
  it('streams the model out of the bucket and generates', async () => {
    const bucket = (env as unknown as { MODELS: R2Bucket }).MODELS;
    await bucket.put('tiny/config.json', JSON.stringify(config));
    await bucket.put('tiny/model.safetensors', weights);
    await bucket.put('tiny/tokenizer.json', JSON.stringify(tokenizer));
    await bucket.put('tiny/tokenizer_config.json', JSON.stringify(tokenizerConfig));
    let last = 0;
    const model = await loadModel(sourceFromR2(bucket as unknown as R2BucketLike, 'tiny'), {
      backend: await WasmBackend.instantiate('wasm-simd', kleSimd),
      onProgress: (p) => (last = p.bytesDone),
    });
    expect(last).toBe(weights.byteLength);
    let n = 0;
    for await (const ev of model.createSession().generate('Hello', { maxTokens: 5, temperature: 0 })) if (ev.type === 'done') n = ev.completionTokens;
    expect(n).toBeGreaterThan(0);
    await expect(loadModel(sourceFromR2(bucket as unknown as R2BucketLike, 'absent'), { backend: await WasmBackend.instantiate('wasm-simd', kleSimd) })).rejects.toThrow(/config.json is missing/);
  });
});
