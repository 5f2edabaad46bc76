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

const { values } = parseArgs({ options: { tokens: { type: 'string', default: '131072' }, 'cpu-tokens': { type: 'string', default: '16384' }, 'max-tokens': { type: 'string', default: '64' } } });
const want = Number(values.tokens), cpuWant = Number(values['cpu-tokens']), maxTokens = Number(values['max-tokens']);

// a prompt of at least n tokens: numbered lines of varied words, measured with the model's tokenizer
const tok = (await loadModelFromDirectory(undefined, { backend: 'wasm' })).tokenizer!;
const words = ['kernel', 'state', 'latent', 'decode', 'chunk', 'router', 'edge', 'gate', 'expert', 'cache', 'token', 'delta'];
function promptOf(n: number): { text: string; tokens: number } {
  const lines: string[] = [];
  let est = 0;
  for (let i = 0; est < n; i++) {
    const line = `${i}: ${words[i % 12]} ${words[(i * 7) % 12]} ${words[(i * 5 + 3) % 12]} ${(i * 2654435761) % 1000}.`;
    lines.push(line);
    if (i % 256 === 255) est = tok.encode(lines.join('\n')).length;
  }
  const text = `${lines.join('\n')}\nSummarize the list above.`;
  return { text, tokens: tok.encode(text).length };
}

interface Run { backend: string; promptChars: number; promptTokens: number; ttftMs: number; completionTokens: number; decodeTokPerS: number; totalMs: number }
async function request(url: string, backend: string, text: string): Promise<Run> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'kimi-linear-default', stream: true, stream_options: { include_usage: true }, max_tokens: maxTokens, temperature: 0, messages: [{ role: 'user', content: text }] }),
  });
  if (!res.ok || !res.body) throw new Error(`${backend}: HTTP ${res.status}: ${await res.text()}`);
  let first = 0, last = 0, n = 0, usage: { prompt_tokens: number; completion_tokens: number } | null = null, buf = '';
  const dec = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += dec.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      const j = JSON.parse(ev.slice(6)) as { choices: { delta?: { content?: string } }[]; usage?: { prompt_tokens: number; completion_tokens: number }; error?: unknown };
      if (j.error) throw new Error(`${backend}: ${JSON.stringify(j.error)}`);
      if (j.usage) usage = j.usage;
      if (j.choices[0]?.delta?.content !== undefined) {
        const now = performance.now();
        if (!first) first = now;
        last = now;
        n++;
      }
    }
  }
  if (!usage) throw new Error(`${backend}: no usage in the stream`);
  const total = performance.now() - t0;
  return { backend, promptChars: text.length, promptTokens: usage.prompt_tokens, ttftMs: first - t0, completionTokens: usage.completion_tokens, decodeTokPerS: usage.completion_tokens > 1 ? (usage.completion_tokens - 1) / ((last - first) / 1000) : NaN, totalMs: total };
}

const cuda = loadCudaBackend();
const runs: Run[] = [];
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
console.log(table(['server engine', 'prompt tokens', 'TTFT ms', 'prefill tok/s', 'completion tokens', 'decode tok/s'], runs.map((r) => [r.backend, r.promptTokens, r.ttftMs.toFixed(0), (r.promptTokens / (r.ttftMs / 1000)).toFixed(0), r.completionTokens, r.decodeTokPerS.toFixed(1)])));
const long = runs.at(-1)!;
if (long.promptTokens < want) throw new Error(`the long prompt had ${long.promptTokens} tokens, fewer than ${want}`);
console.log(`wrote ${writeResultAs(`cuda-gpu-node-${gpuTag(cuda.device)}`, { date: new Date().toISOString(), machine: machine(), gpu: cuda.device, maxTokens, runs })}`);
process.exit(0);
