/** The router's configuration: GPU nodes and the edge budget, from env vars (Worker or Node). */
import { MIN_HANDOFF_KEY_CHARS } from '../server/handoff-auth.js';

export interface NodeConfig {
  /** short name, used in x-kle-route: gpu:<name> */
  readonly name: string;
  /** base URL of an OpenAI-compatible server (our GPU node, vLLM, SGLang) */
  readonly url: string;
  /** bearer token for it (never logged or echoed) */
  readonly token?: string;
  /** longest prompt + max_tokens it takes */
  readonly maxContext: number;
  /** relative share of traffic (default 1) */
  readonly weight: number;
  /** the model id it serves, if it differs from the edge's */
  readonly model?: string;
  /**
   * It runs this project's server with the same model as the edge: a conversation that
   * outgrows the edge moves there with its saved state (no re-prefill of the shared prefix).
   */
  readonly handoff?: boolean;
}

export interface RouterConfig {
  readonly nodes: readonly NodeConfig[];
  /**
   * Largest prompt + max_tokens run at the edge. Default 8192: the edge's wasm engine prefills
   * the default model at about 8.6K tokens/s (bench/generate), so 8K tokens keeps the time to
   * first token near one second, and the MLA latent cache stays a few MB.
   */
  readonly edgeMaxTokens: number;
  /**
   * A conversation past edgeMaxTokens may still run at the edge when its MLA caches are bounded
   * (docs/kv-budget.md): decode then costs what edgeMaxTokens' would, whatever the length. The
   * bound is the request's kv_budget, or this (EDGE_KV_BUDGET; 0: only requests that give one);
   * either must be at most edgeMaxTokens.
   */
  readonly edgeKvBudget: number;
  /**
   * Longest prompt + max_tokens run at the edge under a bound (EDGE_BUDGETED_MAX_TOKENS, default
   * 4 x edgeMaxTokens): a bound caps decode's cost, not the prefill's, which grows with the prompt.
   */
  readonly edgeBudgetedMaxTokens: number;
  /** ms to wait for an upstream's response headers before trying another node */
  readonly firstByteTimeoutMs: number;
  /** consecutive failures that open a node's circuit breaker, and for how long */
  readonly breakerFailures: number;
  readonly breakerOpenMs: number;
  /** active health check period (ms) */
  readonly healthIntervalMs: number;
  /**
   * The secret session hand-offs are signed with (HANDOFF_KEY; the nodes list it in
   * KLE_HANDOFF_KEYS): needed by nodes marked `handoff`.
   */
  readonly handoffKey?: string;
}

export const DEFAULT_EDGE_MAX_TOKENS = 8192;

/** The longest delay setTimeout/setInterval keep (2^31 - 1 ms). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export class RouterConfigError extends Error {
  constructor(message: string) {
    super(`router config: ${message}`);
    this.name = 'RouterConfigError';
  }
}

/**
 * Reads GPU_NODES (a JSON list of {name, url, token?, maxContext, weight?, model?, handoff?}) and
 * the optional EDGE_MAX_TOKENS, EDGE_KV_BUDGET, EDGE_BUDGETED_MAX_TOKENS, FIRST_BYTE_TIMEOUT_MS, BREAKER_FAILURES, BREAKER_OPEN_MS,
 * HEALTH_INTERVAL_MS, HANDOFF_KEY. Tokens may also come as GPU_NODE_TOKEN_<NAME> (secrets).
 */
export function routerConfigFromEnv(env: Readonly<Record<string, string | undefined>>): RouterConfig {
  let raw: unknown = [];
  if (env.GPU_NODES) {
    try {
      raw = JSON.parse(env.GPU_NODES);
    } catch (e) {
      throw new RouterConfigError(`GPU_NODES is not JSON (${(e as Error).message})`);
    }
  }
  if (!Array.isArray(raw)) throw new RouterConfigError('GPU_NODES must be a JSON list');
  const names = new Set<string>();
  const handoffKey = env.HANDOFF_KEY || undefined;
  if (handoffKey !== undefined && handoffKey.length < MIN_HANDOFF_KEY_CHARS) throw new RouterConfigError(`HANDOFF_KEY must have at least ${MIN_HANDOFF_KEY_CHARS} characters`);
  const nodes = raw.map((n: unknown, i): NodeConfig => {
    const o = (n ?? {}) as Record<string, unknown>;
    const name = typeof o.name === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(o.name) ? o.name : null;
    if (!name) throw new RouterConfigError(`GPU_NODES[${i}].name must be 1-64 letters, digits, _ . -`);
    if (names.has(name)) throw new RouterConfigError(`GPU_NODES[${i}].name "${name}" is used twice`);
    names.add(name);
    if (typeof o.url !== 'string' || !/^https?:\/\//.test(o.url)) throw new RouterConfigError(`GPU_NODES[${i}].url must be an http(s) URL`);
    let url: URL;
    try {
      url = new URL(o.url);
    } catch {
      throw new RouterConfigError(`GPU_NODES[${i}].url is not a valid URL`);
    }
    // credentials in a URL end up in error messages and /health (and fetch refuses them):
    // they belong in token / GPU_NODE_TOKEN_<NAME>, a secret
    if (url.username || url.password) throw new RouterConfigError(`GPU_NODES[${i}].url must not carry credentials (user:password@); give the node's bearer token as token or the secret GPU_NODE_TOKEN_${name.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`);
    const maxContext = Number(o.maxContext);
    if (!Number.isInteger(maxContext) || maxContext <= 0) throw new RouterConfigError(`GPU_NODES[${i}].maxContext must be a positive integer`);
    const weight = o.weight === undefined ? 1 : Number(o.weight);
    if (!(weight > 0)) throw new RouterConfigError(`GPU_NODES[${i}].weight must be positive`);
    const token = typeof o.token === 'string' ? o.token : env[`GPU_NODE_TOKEN_${name.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`];
    if (o.handoff === true && !handoffKey) throw new RouterConfigError(`GPU_NODES[${i}].handoff needs the secret HANDOFF_KEY, which signs the states handed to the node`);
    return { name, url: o.url.replace(/\/+$/, ''), maxContext, weight, ...(token ? { token } : {}), ...(typeof o.model === 'string' ? { model: o.model } : {}), ...(o.handoff === true ? { handoff: true } : {}) };
  });
  const num = (k: string, d: number, max = Number.MAX_SAFE_INTEGER) => {
    const v = env[k];
    if (v === undefined || v === '') return d;
    const n = Number(v);
    if (!(n > 0) || !(n <= max)) throw new RouterConfigError(`${k} must be a positive number up to ${max}`);
    return n;
  };
  // timers take at most 2^31 - 1 ms (about 24.8 days): a larger delay fires at once, which
  // would make every forward time out
  const ms = (k: string, d: number) => num(k, d, MAX_TIMER_MS);
  const edgeMaxTokens = num('EDGE_MAX_TOKENS', DEFAULT_EDGE_MAX_TOKENS);
  const edgeKvBudget = env.EDGE_KV_BUDGET === '0' ? 0 : num('EDGE_KV_BUDGET', 0, edgeMaxTokens);
  if (!Number.isInteger(edgeKvBudget)) throw new RouterConfigError('EDGE_KV_BUDGET must be an integer');
  return {
    nodes,
    edgeMaxTokens,
    edgeKvBudget,
    edgeBudgetedMaxTokens: num('EDGE_BUDGETED_MAX_TOKENS', 4 * edgeMaxTokens),
    firstByteTimeoutMs: ms('FIRST_BYTE_TIMEOUT_MS', 10_000),
    breakerFailures: num('BREAKER_FAILURES', 3),
    breakerOpenMs: ms('BREAKER_OPEN_MS', 15_000),
    healthIntervalMs: ms('HEALTH_INTERVAL_MS', 5_000),
    ...(handoffKey ? { handoffKey } : {}),
  };
}
