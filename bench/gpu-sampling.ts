// npm run bench:gpu-sampling   (on a GPU machine: kernels-cuda/run-gpu.sh sampling)
// A token drawn where the logits are (kle_session_sample, kernels-cuda/src/sample.cu) at Kimi's
// vocabulary (163,840), every sampling mode over three logit distributions (flat ones keep most
// tokens in play, peaked ones few): median ms a draw, the call included (the penalties' lists
// uploaded, the token downloaded), next to what the GPU node would do without it in the same run:
// copying the logits to the host and drawing there with the runtime's sampler. The draw is what
// a sampled stream adds to every decode step. Writes bench/results/gpu-sampling-<gpu>[-LABEL].json.
//
// --addon PATH --label NAME: another build of the addon (an older commit's, from
// kernels-cuda/carry.sh BEFORE_REV), to compare in the same call; --draws N (default 200)
import { parseArgs } from 'node:util';
import { CudaBackend } from '../src/engine/cuda-backend.js';
import { loadCudaBackend } from '../src/node.js';
import { Sampler, type SamplingOptions } from '../src/generate/sampler.js';
import { gaussianLogits, KIMI_VOCAB, logitsSession } from '../test/helpers/gpu-logits.js';
import { gpuTag, machine, table, timeIt, writeResultAs } from './lib.js';

const { values } = parseArgs({ options: { addon: { type: 'string' }, label: { type: 'string' }, draws: { type: 'string', default: '200' } } });
const DRAWS = Number(values.draws);
if (!Number.isInteger(DRAWS) || DRAWS < 3) throw new Error(`--draws ${values.draws}: expected an integer of at least 3`);
const cuda = values.addon ? CudaBackend.load(values.addon) : loadCudaBackend();

const LOGITS: Record<string, Float32Array> = {
  'flat (sd 0.5)': gaussianLogits(3, 0.5),
  'sd 3': gaussianLogits(1, 3),
  'peaked (sd 10)': gaussianLogits(2, 10),
};
const MODES: Record<string, SamplingOptions> = {
  greedy: { temperature: 0 },
  'temperature 0.7': { temperature: 0.7 },
  'top-k 40': { temperature: 0.7, topK: 40 },
  'top-p 0.9': { temperature: 0.7, topP: 0.9 },
  'top-p 0.95, min-p 0.05': { temperature: 1, topP: 0.95, minP: 0.05 },
  'top-p 0.9, penalties (300 tokens)': { temperature: 0.7, topP: 0.9, repetitionPenalty: 1.1, frequencyPenalty: 0.2 },
};
const context = Array.from({ length: 300 }, (_, i) => (i * 7919) % 20000);

const ls = logitsSession(cuda);
interface Row { logits: string; mode: string; gpuMs: number; hostMs: number; hostOverGpu: number }
const rows: Row[] = [];
for (const [lname, l] of Object.entries(LOGITS)) {
  ls.set(l);
  for (const [mode, o] of Object.entries(MODES)) {
    const dev = new Sampler({ ...o, seed: 1 }), host = new Sampler({ ...o, seed: 1 });
    const gpuMs = timeIt(() => dev.sample(ls.session.logitsRef()!, context), DRAWS).median; // its warm-up draw sizes the scratch
    const hostMs = timeIt(() => host.sample(ls.session.logitsRef()!.copy(), context), DRAWS).median;
    rows.push({ logits: lname, mode, gpuMs, hostMs, hostOverGpu: hostMs / gpuMs });
    console.error(`${lname}, ${mode}: GPU ${gpuMs.toFixed(3)} ms, copy + host ${hostMs.toFixed(3)} ms`);
  }
}
const label = values.label ?? '';
console.log(`machine: ${JSON.stringify(machine())}, GPU: ${cuda.device}${label ? `, addon: ${label} (${values.addon})` : ''}\n`);
console.log(`A draw at ${KIMI_VOCAB.toLocaleString('en-US')} logits: median ms of ${DRAWS} (the call included)\n`);
console.log(table(['logits', 'mode', 'on the GPU', 'copy + host sampler', 'host / GPU'],
  rows.map((r) => [r.logits, r.mode, r.gpuMs.toFixed(3), r.hostMs.toFixed(3), `${r.hostOverGpu.toFixed(2)}x`])));
console.log(`wrote ${writeResultAs(`gpu-sampling-${gpuTag(cuda.device)}${label ? `-${label}` : ''}`, { date: new Date().toISOString(), machine: machine(), gpu: cuda.device, addon: label || 'build/cuda', vocab: KIMI_VOCAB, draws: DRAWS, rows })}`);
