// kimi-edge eval [--model DIR|FILE.gguf] [--backend wasm|wasm-scalar|native|cuda]
//   (--tokens FILE.u16 | --text FILE) [--ctx 256] [--max-windows N] [--json OUT]
// Held-out loss and perplexity under train/evaluate.py's protocol (src/verify/perplexity.ts):
// over token ids as train/prepare.ts writes them (little-endian uint16), or over a text file
// tokenized with the model's own tokenizer ([BOS] first when the model has one).
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { defaultModelDir, loadModelFromDirectory, type NodeBackendName } from '../node.js';
import { EVAL_CTX, heldoutLoss, idsFromU16 } from '../verify/perplexity.js';

export async function evaluate(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      backend: { type: 'string', default: 'native' },
      tokens: { type: 'string' },
      text: { type: 'string' },
      ctx: { type: 'string', default: String(EVAL_CTX) },
      'max-windows': { type: 'string' },
      json: { type: 'string' },
    },
  });
  const backend = values.backend as NodeBackendName;
  if (!['wasm', 'wasm-scalar', 'native', 'cuda'].includes(backend)) throw new Error(`--backend must be wasm, wasm-scalar, native or cuda, not ${backend}`);
  if (!values.tokens === !values.text) throw new Error('give one of --tokens FILE.u16 and --text FILE');
  const dir = values.model ?? defaultModelDir();
  const model = await loadModelFromDirectory(dir, { backend });
  let ids: ArrayLike<number>;
  if (values.tokens) {
    ids = idsFromU16(readFileSync(values.tokens), values.tokens);
  } else {
    if (!model.tokenizer) throw new Error(`${dir} has no tokenizer: pass --tokens`);
    const bos = model.config.bosTokenId;
    ids = [...(bos === null ? [] : [bos]), ...model.tokenizer.encode(readFileSync(values.text!, 'utf8'))];
  }
  const maxWindows = values['max-windows'] === undefined ? undefined : Number(values['max-windows']);
  const t0 = performance.now();
  const r = heldoutLoss(model.engine, ids, {
    ctx: Number(values.ctx),
    maxWindows,
    onWindow: (d, n) => process.stderr.write(`\r${d}/${n} windows`),
  });
  const seconds = (performance.now() - t0) / 1000;
  process.stderr.write('\n');
  const out = { model: dir, backend: model.backend.name, ...r, seconds, tokensPerSecond: r.tokens / seconds };
  console.log(`loss ${r.loss.toFixed(5)} nats/token, perplexity ${r.perplexity.toFixed(3)} over ${r.tokens} tokens (${r.windows} windows) on ${model.backend.name}, ${seconds.toFixed(1)} s`);
  if (values.json) writeFileSync(values.json, JSON.stringify(out, null, 2) + '\n');
  return 0;
}
