// npm run bench:quality
// Held-out perplexity of the trained default model in every weight format the engine runs:
// F32 (the training run's master weights, train/checkpoints/default), BF16 (models/default, what
// is embedded) and the GGUF conversions Q8_0 and Q4_0 (kimi-edge convert's quantizers), scored
// by the engine (kimi-edge eval's protocol, src/verify/perplexity.ts) on the Brown held-out
// split, next to PyTorch's numbers for the same weights (train/evaluate.py) and the smoothed
// bigram baseline. Needs train/data from `npm run train:prepare`. Writes
// bench/results/quality-default-<machine>.json.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Kernels } from '../src/engine/kernels.js';
import { writeGguf } from '../src/formats/gguf-writer.js';
import { parseSafetensors } from '../src/formats/safetensors.js';
import { sourceFromFiles } from '../src/formats/source.js';
import { loadModel } from '../src/model/load.js';
import { hfToGgufParts } from '../src/weights/to-gguf.js';
import { heldoutLoss, idsFromU16 } from '../src/verify/perplexity.js';
import { loadNativeBackend, loadWasmBackend, packageRoot } from '../src/node.js';
import { machine, table, writeResult } from './lib.js';

const root = packageRoot();
const heldPath = join(root, 'train', 'data', 'heldout.u16');
if (!existsSync(heldPath)) {
  console.error(`${heldPath} is missing: run npm run train:prepare first`);
  process.exit(2);
}
const ids = idsFromU16(readFileSync(heldPath), heldPath);
const dir = join(root, 'models', 'default');
const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
const pytorch = JSON.parse(readFileSync(join(root, 'bench', 'results', 'train', 'default-eval-pytorch.json'), 'utf8')) as Record<string, { loss: number } | number | unknown>;
const native = loadNativeBackend();
const kernels = new Kernels(await loadWasmBackend('simd'));
const file = (p: string) => new Uint8Array(readFileSync(p));
const hf = (weights: Uint8Array) => sourceFromFiles({ 'config.json': JSON.stringify(config), 'model.safetensors': weights });
const gguf = (type: 'Q8_0' | 'Q4_0') => {
  const p = hfToGgufParts(config, parseSafetensors(file(join(root, 'train', 'checkpoints', 'default', 'model-f32.safetensors'))), kernels, { weights: type });
  return sourceFromFiles({ 'model.gguf': writeGguf(p.metadata, p.tensors) });
};
const formats = [
  { name: 'F32', source: hf(file(join(root, 'train', 'checkpoints', 'default', 'model-f32.safetensors'))), pytorch: (pytorch.f32 as { loss: number } | undefined)?.loss },
  { name: 'BF16', source: hf(file(join(dir, 'model.safetensors'))), pytorch: (pytorch.bf16 as { loss: number } | undefined)?.loss },
  { name: 'Q8_0', source: gguf('Q8_0'), pytorch: undefined },
  { name: 'Q4_0', source: gguf('Q4_0'), pytorch: undefined },
];
const rows: { format: string; weightMiB: number; loss: number; perplexity: number; pytorchLoss: number | null; tokens: number; seconds: number }[] = [];
for (const f of formats) {
  const m = await loadModel(f.source, { backend: native });
  const t0 = performance.now();
  const r = heldoutLoss(m.engine, ids);
  rows.push({ format: f.name, weightMiB: m.weightBytes / 2 ** 20, loss: r.loss, perplexity: r.perplexity, pytorchLoss: f.pytorch ?? null, tokens: r.tokens, seconds: (performance.now() - t0) / 1000 });
  console.error(`${f.name}: ${r.loss.toFixed(5)}`);
}
const bigram = (pytorch.bf16 as { bigram: { loss: number; ppl: number } }).bigram;
console.log(`machine: ${JSON.stringify(machine())}\nheld-out: ${rows[0]!.tokens} tokens of the Brown corpus's held-out documents, scored in windows of 256\n`);
console.log(table(['weights', 'engine MiB', 'loss (nats)', 'perplexity', 'vs F32', 'PyTorch loss', 'engine - PyTorch'], [
  ...rows.map((r) => [r.format, r.weightMiB.toFixed(2), r.loss.toFixed(5), r.perplexity.toFixed(3), `${(((r.perplexity / rows[0]!.perplexity) - 1) * 100).toFixed(2)}%`, r.pytorchLoss?.toFixed(5) ?? '-', r.pytorchLoss === null ? '-' : (r.loss - r.pytorchLoss).toExponential(1)]),
  ['bigram baseline', '-', bigram.loss.toFixed(5), bigram.ppl.toFixed(3), '-', '-', '-'],
]));
writeResult('quality-default', { rows, bigram, heldoutTokens: rows[0]!.tokens });
