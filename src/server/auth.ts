/** Bearer-token auth for the server and the router. */
import type { MiddlewareHandler } from 'hono';
import { errorResponse } from './errors.js';

const enc = new TextEncoder();

/** compares without an early exit on the first differing byte */
function sameToken(a: string, b: string): boolean {
  const x = enc.encode(a), y = enc.encode(b);
  let d = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) d |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return d === 0;
}

/**
 * Middleware that answers 401 unless the Authorization header carries one of `keys` (none:
 * everything passes). Paths in `open` need no token.
 */
export function bearerAuth(keys: readonly string[] | undefined, open: readonly string[] = []): MiddlewareHandler {
  return async (c, next) => {
    if (keys?.length && !open.includes(c.req.path)) {
      const m = /^Bearer\s+(.+)$/i.exec(c.req.header('authorization') ?? '');
      if (!m || !keys.some((k) => sameToken(k, m[1]!.trim()))) {
        return errorResponse(401, m ? 'invalid API key' : 'missing bearer token in the Authorization header', 'invalid_request_error', null, 'invalid_api_key', { 'www-authenticate': 'Bearer' });
      }
    }
    await next();
  };
}
