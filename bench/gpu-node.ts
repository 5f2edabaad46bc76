// npm run bench:gpu-node [-- --tokens 131072]   (on a machine with an NVIDIA GPU, after `npm run build:cuda`)
// A real long-context request end to end: the GPU node (src/gpu-node: the Hono app on Node with
// the CUDA engine) on loopback, one streamed /v1/chat/completions request whose prompt is at
// least --tokens tokens (default 131072) of the embedded default model's tokenizer; time to first
// token and decode tokens/s as the client sees them. For comparison in the same run, the same
// client against the same server code on the native CPU engine with a 16K-token prompt.
// Writes bench/results/cuda-gpu-node-<gpu>.json.
import { parseArgs } from 'node:util';
import { startNodeServer } from '../src/host/node.js';
import { startGpuNode } from '../src/gpu-node/index.js';
import { loadCudaBackend, loadModelFromDirectory } from '../src/node.js';
import { gpuTag, machine, table, writeResultAs } from './lib.js';
import { promptOf as promptOfTokens, streamChat, type ChatRun } from './chat-client.js';

const { values } = parseArgs({ options: { tokens: { type: 'string', default: '131072' }, 'cpu-tokens': { type: 'string', default: '16384' }, 'max-tokens': { type: 'string', default: '64' } } });
const want = Number(values.tokens), cpuWant = Number(values['cpu-tokens']), maxTokens = Number(values['max-tokens']);

const tok = (await loadModelFromDirectory(undefined, { backend: 'wasm' })).tokenizer!;
const promptOf = (n: number) => promptOfTokens(tok, n);
const request = async (url: string, backend: string, text: string) => streamChat(url, backend, text, { maxTokens });

const cuda = loadCudaBackend();
const runs: ChatRun[] = [];
{
  const p = promptOf(cpuWant);
  const cpu = await startNodeServer({ port: 0, backend: 'native', limits: { maxPromptTokens: 1 << 20, maxBodyBytes: 64 << 20 } });
  runs.push(await request(cpu.url, 'native CPU', p.text));
  await cpu.close();
  const gpu = await startGpuNode({ port: 0 });
  runs.push(await request(gpu.url, `CUDA (${cuda.device})`, p.text));
  const long = promptOf(want);
  console.error(`long prompt: ${long.text.length} chars, ${long.tokens} tokens`);
  runs.push(await request(gpu.url, `CUDA (${cuda.device})`, long.text));
  await gpu.close();
}
console.log(`machine: ${JSON.stringify(machine())}, GPU: ${cuda.device}\n`);
console.log(table(['server engine', 'prompt tokens', 'TTFT ms', 'prefill tok/s', 'completion tokens', 'decode tok/s'], runs.map((r) => [r.label, r.promptTokens, r.ttftMs.toFixed(0), (r.promptTokens / (r.ttftMs / 1000)).toFixed(0), r.completionTokens, r.decodeTokPerS.toFixed(1)])));
const long = runs.at(-1)!;
if (long.promptTokens < want) throw new Error(`the long prompt had ${long.promptTokens} tokens, fewer than ${want}`);
console.log(`wrote ${writeResultAs(`cuda-gpu-node-${gpuTag(cuda.device)}`, { date: new Date().toISOString(), machine: machine(), gpu: cuda.device, maxTokens, runs })}`);
process.exit(0);
