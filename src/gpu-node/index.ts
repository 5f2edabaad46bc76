// kimi-edge GPU node: the same Hono app as every other host (OpenAI-compatible routes, SSE,
// session hand-off), on Node with the engine's CUDA backend, sized for long contexts. The
// router at the edge forwards long prompts here (GPU_NODES).
// The command line is src/gpu-node/main.ts.
import { startNodeServer, type NodeServerOptions } from '../host/node.js';

/** The limits a GPU node starts with: 1M-token prompts, 64 MiB bodies (hand-off blobs), 4 sessions. */
export const GPU_NODE_LIMITS = { maxPromptTokens: 1 << 20, maxTokens: 8192, maxBodyBytes: 64 << 20, maxConcurrent: 4 };

/**
 * Starts a GPU node: the OpenAI-compatible server on the CUDA engine (needs `npm run build:cuda`
 * and an NVIDIA GPU), taking session hand-offs from a router when given `handoffKeys`.
 * @example
 * const node = await startGpuNode({ port: 8788 });
 * // POST node.url + '/v1/chat/completions' with {"model": "kimi-linear-default", "messages": [...]}
 */
export function startGpuNode(o: Omit<NodeServerOptions, 'backend'> = {}): ReturnType<typeof startNodeServer> {
  const given = Object.fromEntries(Object.entries(o.limits ?? {}).filter(([, v]) => v !== undefined));
  // hand-offs when there is a key to check their signatures with
  return startNodeServer({ acceptHandoff: (o.handoffKeys?.length ?? 0) > 0, ...o, backend: 'cuda', limits: { ...GPU_NODE_LIMITS, ...given } });
}
