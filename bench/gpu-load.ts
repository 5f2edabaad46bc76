// npm run bench:gpu-load [-- --layers 4 --dir /tmp/kle-ckpt --keep]   (on a GPU machine: kernels-cuda/run-gpu.sh load)
// The loader on a checkpoint large enough to take a while: Kimi-Linear-48B-A3B's real shapes (all
// 256 experts, the 163,840-token vocabulary) in the first N layers (3 KDA + 1 MLA for N = 4), BF16,
// written as a sharded safetensors checkpoint (5 GB shards, model.safetensors.index.json) to the
// machine's disk, then loaded by loadModelFromDirectory onto the GPU: every shard streamed through
// the engine, each tensor moved to the device as soon as it is read (kle_model_tensor_ready), its
// upload through two 32 MiB pinned buffers. Reports GB/s next to a plain read of the same files in
// the same run (the page cache holds them after writing, so both are the host's memory speed, not
// the disk's), the peak of the process's resident memory, and one decode step's logits.
// Writes bench/results/gpu-load-<gpu>.json.
import { closeSync, mkdirSync, openSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseKimiConfig } from '../src/engine/config.js';
import { safetensorsHeader } from '../src/formats/safetensors-writer.js';
import { loadCudaBackend, loadModelFromDirectory } from '../src/node.js';
import { checkpointTensors, KIMI_LINEAR_48B_CONFIG } from '../src/weights/synthetic.js';
import { gpuTag, machine, table, writeResultAs } from './lib.js';

const { values } = parseArgs({ options: { layers: { type: 'string', default: '4' }, dir: { type: 'string', default: '/tmp/kle-ckpt' }, keep: { type: 'boolean', default: false }, backend: { type: 'string', default: 'cuda' } } });
// --backend native: the same load into host memory (a check of this script on a machine without a GPU)
const backendName = values.backend === 'native' ? 'native' : 'cuda';
const N = Number(values.layers);
const dir = values.dir!;
const layers = Array.from({ length: N }, (_, i) => i + 1);
const json = {
  ...KIMI_LINEAR_48B_CONFIG,
  num_hidden_layers: N,
  linear_attn_config: { ...KIMI_LINEAR_48B_CONFIG.linear_attn_config, kda_layers: layers.filter((l) => l % 4 !== 0), full_attn_layers: layers.filter((l) => l % 4 === 0) },
};
const c = parseKimiConfig(json);
const SHARD = 5e9;
const GB = 1e9;

// ---------------------------------------------------------------- write the checkpoint
// the values: one block of small random BF16 numbers (and one of f32 ones near 1 for the f32
// tensors: norms, gates, the router), repeated; the loader reads bytes, not meaning
const block = new Uint16Array(1 << 22);
let x = 0x12345678;
for (let i = 0; i < block.length; i++) {
  x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
  block[i] = (0x3c00 + ((x >>> 0) % 0x300)) ^ ((x & 1) << 15); // |v| in about [0.008, 0.06], either sign
}
const f32block = new Float32Array(1 << 20).map((_, i) => 1 + ((i * 2654435761) % 1000) / 1e4);
const tensors = checkpointTensors(c).map((t) => ({ ...t, dtype: t.f32 ? ('F32' as const) : ('BF16' as const), byteLength: t.rows * t.cols * (t.f32 ? 4 : 2) }));
const shards: (typeof tensors)[] = [[]];
let size = 0;
for (const t of tensors) {
  if (size > 0 && size + t.byteLength > SHARD) shards.push([]), (size = 0);
  shards[shards.length - 1]!.push(t);
  size += t.byteLength;
}
rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
const names = shards.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`);
const tw = performance.now();
let fileBytes = 0;
for (const [i, list] of shards.entries()) {
  const fd = openSync(join(dir, names[i]!), 'w');
  const head = safetensorsHeader(list, { format: 'pt' });
  writeSync(fd, head);
  for (const t of list) {
    const src = t.f32 ? new Uint8Array(f32block.buffer) : new Uint8Array(block.buffer);
    for (let off = 0; off < t.byteLength; off += src.length) writeSync(fd, src, 0, Math.min(src.length, t.byteLength - off));
  }
  closeSync(fd);
  fileBytes += statSync(join(dir, names[i]!)).size;
}
const weightMap = Object.fromEntries(shards.flatMap((list, i) => list.map((t) => [t.name, names[i]!])));
const totalSize = tensors.reduce((a, t) => a + t.byteLength, 0);
writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }));
writeFileSync(join(dir, 'config.json'), JSON.stringify(json));
const writeS = (performance.now() - tw) / 1000;
console.error(`wrote ${shards.length} shards, ${(fileBytes / GB).toFixed(2)} GB in ${writeS.toFixed(1)} s`);

// ---------------------------------------------------------------- a plain read, then the load
const readBuf = Buffer.allocUnsafe(64 << 20);
const tr = performance.now();
for (const n of names) {
  const fd = openSync(join(dir, n), 'r');
  while (readSync(fd, readBuf, 0, readBuf.length, null) > 0);
  closeSync(fd);
}
const readS = (performance.now() - tr) / 1000;

const device = backendName === 'cuda' ? loadCudaBackend().device : 'none (native CPU engine)';
let peakRss = process.memoryUsage().rss;
const rssBefore = peakRss;
const timer = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);
let lastPrint = 0;
const tl = performance.now();
const model = await loadModelFromDirectory(dir, {
  backend: backendName,
  onProgress: (p) => {
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
    const now = performance.now();
    if (now - lastPrint > 2000 && p.bytesTotal) {
      lastPrint = now;
      console.error(`  loading: ${(p.bytesDone / GB).toFixed(1)} of ${(p.bytesTotal / GB).toFixed(1)} GB (shard ${p.shardsDone + 1} of ${p.shardsTotal})`);
    }
  },
});
const loadS = (performance.now() - tl) / 1000;
clearInterval(timer);
const free = model.engine.deviceFree() ?? 0;
const weightsBytes = model.engine.bytes();
const s = model.engine.createSession();
const logits = s.forward([1, 2, 3]);
const finite = logits.every(Number.isFinite);
s.free();
model.engine.free();
if (!values.keep) rmSync(dir, { recursive: true, force: true });

const row = {
  layers: N, shards: shards.length, fileGB: fileBytes / GB, writeS, plainReadGBps: fileBytes / GB / readS, loadS, loadGBps: fileBytes / GB / loadS,
  peakRssGiB: peakRss / 2 ** 30, rssBeforeGiB: rssBefore / 2 ** 30, weightsGiB: weightsBytes / 2 ** 30, deviceFreeAfterGiB: free / 2 ** 30, logitsFinite: finite,
};
console.log(`machine: ${JSON.stringify(machine())}, GPU: ${device}\n`);
console.log(`Loading a sharded BF16 checkpoint of Kimi-Linear-48B-A3B's shapes, first ${N} layers (${c.layerKinds.join(', ')}), onto ${backendName === 'cuda' ? 'the GPU' : 'the native CPU engine'}\n`);
console.log(table(['shards', 'GB', 'plain read GB/s', 'load s', 'load GB/s', 'load / plain read', 'peak RSS GiB', 'device free after GiB', 'logits finite'],
  [[row.shards, row.fileGB.toFixed(2), row.plainReadGBps.toFixed(2), row.loadS.toFixed(1), row.loadGBps.toFixed(2), `${(100 * row.loadGBps / row.plainReadGBps).toFixed(0)}%`, row.peakRssGiB.toFixed(2), row.deviceFreeAfterGiB.toFixed(1), String(finite)]]));
if (backendName === 'cuda') console.log(`wrote ${writeResultAs(`gpu-load-${gpuTag(device)}`, { date: new Date().toISOString(), machine: machine(), gpu: device, ...row })}`);
if (!finite) process.exitCode = 1;
