/** kimi-linear-edge/router: the edge-to-GPU router (Hono), its node pool and its policy. */
export { createRouter, type RouterOptions } from './router.js';
export { NodePool, type BreakerState, type NodeStatus } from './pool.js';
export { routerConfigFromEnv, DEFAULT_EDGE_MAX_TOKENS, RouterConfigError, type NodeConfig, type RouterConfig } from './config.js';
export { countPromptTokens, sessionBytes, type RouteReason } from './policy.js';
