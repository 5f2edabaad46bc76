// Inputs that used to get a wrong answer instead of a clear one: a stream of invalid bytes
// before a character split over tokens, a tensor named twice in a safetensors header, ids
// outside the vocabulary in config.json, a prompt past model_max_length, a GGUF of another
// architecture, empty prompts and megabyte prompts at the server.
import { describe, expect, it } from 'vitest';
import { parseKimiConfig } from '../../src/engine/config.js';
import { writeGguf } from '../../src/formats/gguf-writer.js';
import { parseSafetensors } from '../../src/formats/safetensors.js';
import { sourceFromFiles } from '../../src/formats/source.js';
import { loadModel } from '../../src/model/load.js';
import { loadModelFromDirectory } from '../../src/node.js';
import { createApp, LoadTracker } from '../../src/server/app.js';
import { StreamDecoder } from '../../src/tokenizer/tokenizer.js';
import { TINY_CONFIG } from '../../src/weights/synthetic.js';

describe('hostile inputs get clear answers', async () => {
  const model = await loadModelFromDirectory();
  const tok = model.tokenizer!;

  it('a character split over three tokens after seven invalid bytes decodes whole', () => {
    // the default vocabulary's single-byte tokens have the byte's value as id
    const ids = [...new Array(7).fill(0xff), 0xe2, 0x82, 0xac];
    const d = new StreamDecoder(tok);
    const out = ids.map((t) => d.push(t)).join('') + d.flush();
    expect(out).toBe('\uFFFD'.repeat(7) + '€');
    expect(out).toBe(tok.decode(ids));
  });

  it('a safetensors header naming a tensor twice is refused', () => {
    const json = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}';
    const head = new TextEncoder().encode(json);
    const file = new Uint8Array(8 + head.length + 8);
    new DataView(file.buffer).setBigUint64(0, BigInt(head.length), true);
    file.set(head, 8);
    expect(() => parseSafetensors(file, 'twice.safetensors')).toThrow(/tensor 'a' is in the header twice/);
    // a key repeated inside an entry, or the same name in a string value, is not a second tensor
    const ok = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"note":"\\"a\\" again, a"}}';
    const h2 = new TextEncoder().encode(ok);
    const f2 = new Uint8Array(8 + h2.length + 4);
    new DataView(f2.buffer).setBigUint64(0, BigInt(h2.length), true);
    f2.set(h2, 8);
    expect(parseSafetensors(f2, 'ok.safetensors').tensors.size).toBe(1);
  });

  it('config.json: token ids outside the vocabulary are refused by name', () => {
    expect(() => parseKimiConfig({ ...TINY_CONFIG, eos_token_id: 99999 })).toThrow(/eos_token_id: 99999 is outside the vocabulary/);
    expect(() => parseKimiConfig({ ...TINY_CONFIG, eos_token_id: [257, -1] })).toThrow(/eos_token_id: -1/);
    expect(() => parseKimiConfig({ ...TINY_CONFIG, bos_token_id: 512 })).toThrow(/bos_token_id: 512/);
    expect(() => parseKimiConfig({ ...TINY_CONFIG, model_max_length: 0 })).toThrow(/model_max_length/);
  });

  it('generation keeps within model_max_length: a longer prompt is refused, generation stops at it', async () => {
    const files = (await import('../helpers/tiny-model.js')).tinyWeights();
    const { readFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    const { tinyDir } = await import('../helpers/tiny-model.js');
    const short = await loadModel(sourceFromFiles({
      'config.json': JSON.stringify({ ...JSON.parse(readFileSync(join(tinyDir, 'config.json'), 'utf8')), model_max_length: 24 }),
      'model.safetensors': files,
      'tokenizer.json': readFileSync(join(tinyDir, 'tokenizer.json'), 'utf8'),
      'tokenizer_config.json': readFileSync(join(tinyDir, 'tokenizer_config.json'), 'utf8'),
    }), { backend: model.backend });
    const s = short.createSession();
    const it1 = s.generate(Array.from({ length: 30 }, (_, i) => i + 1), { maxTokens: 4 });
    await expect(it1.next()).rejects.toThrow(/passes the model's context of 24/);
    const s2 = short.createSession();
    let done: { finishReason: string; completionTokens: number } | null = null;
    for await (const ev of s2.generate(Array.from({ length: 20 }, (_, i) => i + 1), { maxTokens: 50, temperature: 0 })) if (ev.type === 'done') done = ev;
    expect(s2.tokens.length).toBeLessThanOrEqual(24);
    expect(done!.completionTokens).toBeLessThanOrEqual(4);
  });

  it('a GGUF of another architecture is the file\'s problem, not config.json\'s', async () => {
    const bytes = writeGguf({ 'general.architecture': { type: 'str', value: 'llama' } }, []);
    await expect(loadModel(sourceFromFiles({ 'model.gguf': bytes }), { backend: model.backend })).rejects.toThrow(/model\.gguf: general\.architecture: "llama" is not kimi-linear/);
  });

  it('the server: a session that would not fit the device gets 503 with Retry-After while others run, 400 when nothing does', async () => {
    // a GPU's free memory, as the CUDA backend reports it (kle_model_device_free); CPU backends report none
    const engine = model.engine;
    const real = engine.deviceFree.bind(engine);
    const load = new LoadTracker();
    const app = createApp({ model, modelId: 'm', load });
    const post = () => app.request('/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', prompt: 'hello', max_tokens: 4 }) });
    try {
      engine.deviceFree = () => 2 ** 20;
      load.active = 1;
      const busy = await post();
      expect(busy.status).toBe(503);
      expect(busy.headers.get('retry-after')).toBe('5');
      const e = ((await busy.json()) as { error: { code: string; message: string } }).error;
      expect(e.code).toBe('insufficient_device_memory');
      expect(e.message).toMatch(/needs 1\.00 GiB of device memory; 0\.00 GiB are free while 1 generation run/);
      load.active = 0;
      const never = await post();
      expect(never.status).toBe(400);
      expect(((await never.json()) as { error: { code: string } }).error.code).toBe('context_length_exceeded');
      engine.deviceFree = () => 80 * 2 ** 30;
      expect((await post()).status).toBe(200);
    } finally {
      engine.deviceFree = real;
    }
  });

  it('the server: empty prompts get 400 (streamed or not), a megabyte prompt is refused without tokenizing', async () => {
    const app = createApp({ model, modelId: 'm', limits: { maxPromptTokens: 8192, maxBodyBytes: 4 << 20 } });
    const post = (body: object) => app.request('/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', max_tokens: 4, ...body }) });
    for (const body of [{ prompt: '' }, { prompt: [''] }, { prompt: [''], stream: true }]) {
      const r = await post(body);
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: { code: string } }).error.code).toBe('empty_prompt');
    }
    let encodes = 0;
    const encode = tok.encode.bind(tok);
    tok.encode = (t: string) => (encodes++, encode(t));
    try {
      const r = await post({ prompt: 'word '.repeat(200_000) });
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: { message: string; code: string } }).error).toMatchObject({ code: 'context_length_exceeded' });
      expect(encodes).toBe(0);
    } finally {
      tok.encode = encode;
    }
  });
});
