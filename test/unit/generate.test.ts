import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Sampler } from '../../src/generate/sampler.js';
import { Session, type GenerateEvent } from '../../src/generate/session.js';
import { loadModel } from '../../src/model/load.js';
import { parseSafetensors } from '../../src/formats/safetensors.js';
import { writeSafetensors, type TensorToWrite } from '../../src/formats/safetensors-writer.js';
import { sourceFromFiles, sourceFromUrl } from '../../src/formats/source.js';
import { loadModelFromDirectory } from '../../src/node.js';
import { StreamDecoder } from '../../src/tokenizer/tokenizer.js';
import { tinyDir } from '../helpers/tiny-model.js';

async function collect(it: AsyncIterable<GenerateEvent>) {
  let text = '';
  const tokens: number[] = [];
  let done: Extract<GenerateEvent, { type: 'done' }> | null = null;
  for await (const ev of it) {
    if (ev.type === 'token') {
      text += ev.text;
      if (ev.token >= 0) tokens.push(ev.token);
    } else done = ev;
  }
  return { text, tokens, done: done! };
}

const files = () => Object.fromEntries(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'].map((f) => [f, new Uint8Array(readFileSync(join(tinyDir, f)))]));

describe('Sampler', () => {
  const logits = Float32Array.from([0.1, 2.0, 1.9, -1, 0.5]);
  it('greedy, top-k 1 and a tiny top-p all pick the argmax', () => {
    expect(new Sampler({ temperature: 0 }).sample(logits)).toBe(1);
    expect(new Sampler({ topK: 1, seed: 1 }).sample(logits)).toBe(1);
    expect(new Sampler({ topP: 0.01, seed: 1 }).sample(logits)).toBe(1);
  });
  it('is reproducible for a seed and follows the distribution', () => {
    const draw = (seed: number) => Array.from({ length: 2000 }, ((s) => () => s.sample(logits))(new Sampler({ seed })));
    const a = draw(7), b = draw(7);
    expect(a).toEqual(b);
    const p = [...logits].map(Math.exp);
    const z = p.reduce((x, y) => x + y);
    const freq1 = a.filter((t) => t === 1).length / a.length;
    expect(Math.abs(freq1 - p[1]! / z)).toBeLessThan(0.04);
  });
  it('top-k 2 never leaves the two best; repetition penalty moves greedy off a seen token', () => {
    const s = new Sampler({ topK: 2, seed: 3 });
    for (let i = 0; i < 200; i++) expect([1, 2]).toContain(s.sample(logits));
    expect(new Sampler({ temperature: 0, repetitionPenalty: 1.2 }).sample(logits, [1])).toBe(2);
  });
  it('refuses bad options', () => {
    expect(() => new Sampler({ temperature: -1 })).toThrow(/temperature/);
    expect(() => new Sampler({ topP: 0 })).toThrow(/topP/);
    expect(() => new Sampler({ topK: 1.5 })).toThrow(/topK/);
  });
});

describe('Session.generate on the default model', async () => {
  const model = await loadModelFromDirectory();

  it('streams text, counts tokens, stops at maxTokens', async () => {
    const r = await collect(model.createSession().generate('The quick brown fox', { maxTokens: 12, temperature: 0 }));
    expect(r.done.promptTokens).toBe(model.tokenizer!.encode('The quick brown fox').length);
    expect(r.done.completionTokens).toBeLessThanOrEqual(12);
    expect(r.done.text).toBe(r.text);
    if (r.done.finishReason === 'length') expect(r.done.completionTokens).toBe(12);
  });

  it('ends at a stop string and leaves it out', async () => {
    const base = await collect(model.createSession().generate('Once upon a time', { maxTokens: 40, temperature: 0 }));
    expect(base.text.length).toBeGreaterThan(8);
    const stop = base.text.slice(4, 7);
    const r = await collect(model.createSession().generate('Once upon a time', { maxTokens: 40, temperature: 0, stop: [stop] }));
    expect(r.done.finishReason).toBe('stop');
    expect(r.text).toBe(base.text.slice(0, base.text.indexOf(stop)));
  });

  it('stops when aborted', async () => {
    const ac = new AbortController();
    let n = 0;
    let reason = '';
    for await (const ev of model.createSession().generate('Hello', { maxTokens: 100, temperature: 1, seed: 1, signal: ac.signal })) {
      if (ev.type === 'token' && ++n === 3) ac.abort();
      if (ev.type === 'done') reason = ev.finishReason;
    }
    expect(reason).toBe('abort');
    expect(n).toBeLessThanOrEqual(4);
  });

  it('chat messages go through the chat template; a saved session continues identically', async () => {
    const s = model.createSession();
    await collect(s.generate([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi!' }], { maxTokens: 5, temperature: 0 }));
    const prompt = model.tokenizer!.applyChatTemplate([{ role: 'user', content: 'Hi!' }]);
    expect(prompt).toBe('<|im_user|>user<|im_middle|>Hi!<|im_end|><|im_assistant|>assistant<|im_middle|>');
    const r = Session.restore(model, s.save());
    expect(r.length).toBe(s.length);
    const opts = { maxTokens: 15, temperature: 0.9, seed: 11, repetitionPenalty: 1.3 };
    const a = await collect(s.generate([{ role: 'user', content: 'More.' }], opts));
    const b = await collect(r.generate([{ role: 'user', content: 'More.' }], opts));
    expect(b.tokens).toEqual(a.tokens);
    expect(() => Session.restore(model, new Uint8Array(10))).toThrow(/not a kimi-linear-edge session blob/);
  });

  it('a session saved in parts is save()\'s bytes and restores from any split, whole or streamed', async () => {
    const s = model.createSession();
    await collect(s.generate('Parts of a story', { maxTokens: 6, temperature: 0 }));
    const whole = s.save();
    const parts = [...s.saveParts(777)];
    expect(parts.length).toBeGreaterThan(2);
    const joined = new Uint8Array(whole.length);
    parts.reduce((off, p) => (joined.set(p, off), off + p.length), 0);
    expect(joined).toEqual(whole);
    const opts = { maxTokens: 8, temperature: 0.7, seed: 5 };
    const want = await collect(Session.restore(model, whole).generate(' and', opts));
    // splits inside the 12-byte header, inside the history, at the engine blob's start
    for (const cut of [5, 13, 12 + 4 * s.length, whole.length - 3]) {
      const r = Session.restoreParts(model, [whole.subarray(0, cut), whole.subarray(cut)]);
      expect(r.length).toBe(s.length);
      expect((await collect(r.generate(' and', opts))).tokens).toEqual(want.tokens);
    }
    const streamed = Session.restoreParts(model, (function* () { yield* parts; })(), whole.length);
    expect((await collect(streamed.generate(' and', opts))).tokens).toEqual(want.tokens);
    expect(() => Session.restoreParts(model, [whole.subarray(0, 8)])).toThrow(/truncated/);
    expect(() => Session.restoreParts(model, [whole.subarray(0, whole.length - 1)])).toThrow();
    expect(() => Session.restoreParts(model, (function* () { yield whole; })())).toThrow(/totalBytes/);
  });

  it('decodes streamed multi-byte characters whole', () => {
    const tok = model.tokenizer!;
    const text = 'Ünïcödé 🙂 ok';
    const d = new StreamDecoder(tok);
    const out = tok.encode(text).map((t) => d.push(t)).join('') + d.flush();
    expect(out).toBe(text);
  });
});

describe('loadModel from other sources', () => {
  const ref = (async () => (await loadModelFromDirectory(tinyDir)).createSession().prefill([1, 2, 3, 4, 5]))();

  it('memory, with a progress callback that reaches the total', async () => {
    let last = 0;
    const m = await loadModel(sourceFromFiles(files()), { backend: (await loadModelFromDirectory()).backend, onProgress: (p) => (last = p.bytesDone) });
    expect(last).toBe(files()['model.safetensors']!.length);
    expect(m.createSession().prefill([1, 2, 3, 4, 5])).toEqual(await ref);
  });

  it('a sharded checkpoint with an index, streamed over HTTP from a loopback server (fetch bodies)', async () => {
    const f = files();
    const all = parseSafetensors(f['model.safetensors']!);
    const names = [...all.tensors.keys()];
    const shard = (part: string[]) => writeSafetensors(Object.fromEntries(part.map((n) => { const t = all.tensors.get(n)!; return [n, { dtype: t.dtype, shape: t.shape, data: t.bytes.slice() } as TensorToWrite]; })));
    const a = names.slice(0, 40), b = names.slice(40);
    const served: Record<string, Uint8Array> = {
      'config.json': f['config.json']!, 'tokenizer.json': f['tokenizer.json']!, 'tokenizer_config.json': f['tokenizer_config.json']!,
      'model-00001-of-00002.safetensors': shard(a), 'model-00002-of-00002.safetensors': shard(b),
      'model.safetensors.index.json': new TextEncoder().encode(JSON.stringify({ weight_map: Object.fromEntries([...a.map((n) => [n, 'model-00001-of-00002.safetensors']), ...b.map((n) => [n, 'model-00002-of-00002.safetensors'])]) })),
    };
    const server = createServer((req, res) => {
      const body = served[(req.url ?? '').slice(1)];
      if (!body) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-length': body.length });
      // dribble the body out in small writes so the reader sees many chunk boundaries
      let off = 0;
      const pump = () => {
        while (off < body.length) {
          const ok = res.write(body.subarray(off, off + 4093));
          off += 4093;
          if (!ok) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as AddressInfo).port;
      const m = await loadModel(sourceFromUrl(`http://127.0.0.1:${port}/`), { backend: (await loadModelFromDirectory()).backend });
      expect(m.createSession().prefill([1, 2, 3, 4, 5])).toEqual(await ref);
      expect(m.tokenizer).not.toBeNull();
      await expect(loadModel(sourceFromUrl(`http://127.0.0.1:${port}/missing/`), { backend: m.backend })).rejects.toThrow(/config.json is missing/);
    } finally {
      server.close();
    }
  });
});
