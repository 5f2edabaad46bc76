// Property-based fuzzing of what reads untrusted bytes on the TypeScript side: safetensors and
// GGUF files (random and mutated), the tokenizer (any string, lone surrogates included) and the
// HTTP API (mutated and random request bodies). Each must give a valid result or a clear error
// (FormatError / ConfigError / an OpenAI error body with a 4xx status): never a crash, a hang or
// an engine that has grown past a bound. Seeds vary per run; a failure prints its seed and path.
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/engine/config.js';
import { readGgufStream } from '../../src/formats/gguf.js';
import { writeGguf } from '../../src/formats/gguf-writer.js';
import { FormatError, parseSafetensors } from '../../src/formats/safetensors.js';
import { bytesToStream } from '../../src/formats/safetensors-stream.js';
import { loadModelFromDirectory } from '../../src/node.js';
import { createApp } from '../../src/server/app.js';
import { Kernels } from '../../src/engine/kernels.js';
import { StreamDecoder, TokenizerError } from '../../src/tokenizer/tokenizer.js';
import { hfToGgufParts } from '../../src/weights/to-gguf.js';
import { tinyDir } from '../helpers/tiny-model.js';

/** runs per property: these in CI; KLE_FUZZ_RUNS=N multiplies them for a longer hunt (npm run fuzz) */
const runs = (n: number) => n * Math.max(1, Number(process.env.KLE_FUZZ_RUNS ?? 1));

const clear = (e: unknown) => e instanceof FormatError || e instanceof ConfigError || e instanceof TokenizerError;

/** a copy of `base` with a few bytes overwritten, cut short, or padded */
const mutated = (base: Uint8Array) =>
  fc.tuple(fc.array(fc.tuple(fc.nat(base.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 12 }), fc.option(fc.nat(base.length)), fc.uint8Array({ maxLength: 16 })).map(([edits, cut, tail]) => {
    const b = base.slice(0, cut ?? base.length);
    for (const [i, v] of edits) if (i < b.length) b[i] = v;
    const out = new Uint8Array(b.length + tail.length);
    out.set(b);
    out.set(tail, b.length);
    return out;
  });

describe('property fuzzing of the TypeScript parsers and the HTTP API', async () => {
  const model = await loadModelFromDirectory();
  const st = new Uint8Array(readFileSync(join(tinyDir, 'model.safetensors')));
  // a small valid file to mutate: the header and the first tensors of the default model
  const headerLen = Number(new DataView(st.buffer, st.byteOffset).getBigUint64(0, true));
  const smallSt = st.slice(0, 8 + headerLen + 4096);

  it('safetensors: random and mutated files parse or fail with a FormatError', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 256 }), mutated(smallSt.subarray(0, Math.min(smallSt.length, 8 + headerLen))), mutated(st)), (bytes) => {
        try {
          parseSafetensors(bytes, 'fuzz.safetensors');
        } catch (e) {
          if (!clear(e)) throw e;
        }
      }),
      { numRuns: runs(300) },
    );
  });

  it('GGUF: mutated headers parse or fail with a FormatError or ConfigError', async () => {
    const cfg = JSON.parse(readFileSync(join(tinyDir, 'config.json'), 'utf8')) as Record<string, unknown>;
    const p = hfToGgufParts(cfg, parseSafetensors(st), new Kernels(model.backend), { weights: 'Q8_0' });
    const gguf = writeGguf(p.metadata, p.tensors).slice(0, 64 << 10); // the header and some data
    await fc.assert(
      fc.asyncProperty(mutated(gguf), async (bytes) => {
        try {
          await readGgufStream(bytesToStream(bytes), 'fuzz.gguf', () => null);
        } catch (e) {
          if (!clear(e)) throw e;
        }
      }),
      { numRuns: runs(200) },
    );
  });

  it('the tokenizer takes any string; well-formed ones decode back to themselves', () => {
    const tok = model.tokenizer!;
    const loneSurrogates = fc.array(fc.integer({ min: 0xd800, max: 0xdfff }), { maxLength: 4 }).map((u) => String.fromCharCode(...u));
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'grapheme', maxLength: 200 }), fc.string({ unit: 'binary', maxLength: 200 }), fc.tuple(fc.string(), loneSurrogates, fc.string()).map((p) => p.join('')), fc.constantFrom('a'.repeat(5000), '9'.repeat(3000), '🙂'.repeat(500))), (s) => {
        const ids = tok.encode(s);
        expect(ids.every((i) => Number.isInteger(i) && i >= 0 && i < model.config.vocabSize)).toBe(true);
        const wellFormed = !/[\uD800-\uDFFF]/.test(s.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, ''));
        if (wellFormed) expect(tok.decode(ids, false)).toBe(s);
      }),
      { numRuns: runs(300) },
    );
  });

  it('streamed decoding of any token sequence equals decoding it at once', () => {
    const tok = model.tokenizer!;
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: model.config.vocabSize - 1 }), { maxLength: 64 }), (ids) => {
        const d = new StreamDecoder(tok);
        expect(ids.map((i) => d.push(i)).join('') + d.flush()).toBe(tok.decode(ids));
      }),
      { numRuns: runs(300) },
    );
  });

  it('the HTTP API: mutated and random bodies get a result or a 4xx with an OpenAI error, never a 500', async () => {
    const app = createApp({ model, modelId: 'm', limits: { maxTokens: 8, maxPromptTokens: 512, maxConcurrent: 64 } });
    const chat = { model: 'm', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 3, temperature: 0 };
    const body = fc.oneof(
      fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
      fc.record({ key: fc.constantFrom(...Object.keys(chat), 'prompt', 'stream', 'stop', 'top_p', 'seed', 'kle_session', 'messages'), value: fc.jsonValue({ maxDepth: 2 }) }).map(({ key, value }) => JSON.stringify({ ...chat, [key]: value })),
      fc.string({ maxLength: 64 }),
    );
    const memBefore = (model.backend as { memory?: WebAssembly.Memory }).memory?.buffer.byteLength ?? 0;
    await fc.assert(
      fc.asyncProperty(body, fc.constantFrom('/v1/chat/completions', '/v1/completions'), async (text, path) => {
        const r = await app.request(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: text });
        expect(r.status, text).toBeLessThan(500);
        const ct = r.headers.get('content-type') ?? '';
        if (ct.startsWith('text/event-stream')) {
          const all = await r.text();
          expect(all.trimEnd().endsWith('data: [DONE]')).toBe(true);
        } else {
          const j = (await r.json()) as { error?: { message: string; type: string }; choices?: unknown[] };
          if (r.status >= 400) expect(j.error?.message.length).toBeGreaterThan(0);
          else expect(j.choices?.length).toBe(1);
        }
      }),
      { numRuns: runs(300) },
    );
    // the engine's memory stays bounded: sessions are freed whatever the request was
    const memAfter = (model.backend as { memory?: WebAssembly.Memory }).memory?.buffer.byteLength ?? 0;
    expect(memAfter - memBefore).toBeLessThan(64 << 20);
  });
});
