/** kimi-linear-edge/server: the OpenAI-compatible Hono app (portable: Workers, Node, Bun, Deno). */
export { createApp, DEFAULT_LIMITS, LoadTracker, resolveLimits, type Limits, type ServerOptions } from './app.js';
export { buildPrompt, parseRequest, type OpenAIRequest, type PreparedRequest } from './prompt.js';
export { Metrics } from './metrics.js';
export { errorBody, errorResponse, type ErrorType, type OpenAIErrorBody } from './errors.js';
export { chatRequest, completionRequest, type ChatRequest, type CompletionRequest } from './schema.js';
