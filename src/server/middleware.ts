/** The app's and the router's middleware: Hono's own (bearer auth, body limit), answering in OpenAI's error shape. */
import type { MiddlewareHandler } from 'hono';
import { bearerAuth } from 'hono/bearer-auth';
import { bodyLimit } from 'hono/body-limit';
import { every } from 'hono/combine';
import { errorResponse } from './errors.js';

const pass: MiddlewareHandler = async (_c, next) => {
  await next();
};

/**
 * 401 unless the Authorization header carries one of `keys` (compared in constant time by
 * Hono's bearer auth); no keys: everything passes. Paths in `open` need no token.
 */
export function requireBearer(keys: readonly string[] | undefined, open: readonly string[] = []): MiddlewareHandler {
  if (!keys?.length) return pass;
  const refuse = (message: string) => () => errorResponse(401, message, 'invalid_request_error', null, 'invalid_api_key', { 'www-authenticate': 'Bearer' });
  const auth = bearerAuth({
    token: [...keys],
    noAuthenticationHeader: { message: refuse('missing bearer token in the Authorization header') },
    invalidAuthenticationHeader: { message: refuse('the Authorization header is not "Bearer <key>"') },
    invalidToken: { message: refuse('invalid API key') },
  });
  return (c, next) => (open.includes(c.req.path) ? next() : auth(c, next));
}

/**
 * 413 for a body over `maxBytes`: by its Content-Length at once, and a chunked body (no
 * Content-Length) as soon as its bytes pass the limit, before any more is read.
 */
export function limitBody(maxBytes: number): MiddlewareHandler {
  return bodyLimit({
    maxSize: maxBytes,
    // and the connection closes: the rest of the body is not read, on this connection or another
    onError: () => errorResponse(413, `request body exceeds the limit of ${maxBytes} bytes`, 'invalid_request_error', null, 'body_too_large', { connection: 'close' }),
  });
}

/**
 * The OpenAI routes take JSON whatever the client labels it (`curl -d` sends JSON as a form):
 * the body is marked as JSON for the validator that reads it next.
 */
export const asJson: MiddlewareHandler = async (c, next) => {
  if (c.req.raw.body && !/^application\/([\w.-]+\+)?json/i.test(c.req.header('content-type') ?? '')) {
    const headers = new Headers(c.req.raw.headers);
    headers.set('content-type', 'application/json');
    c.req.raw = new Request(c.req.raw, { headers });
  }
  await next();
};

/** Both, in order. */
export function jsonBodyOf(maxBytes: number): MiddlewareHandler {
  return every(limitBody(maxBytes), asJson);
}
