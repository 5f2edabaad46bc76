/** OpenAI-shaped error responses. */

export type ErrorType = 'invalid_request_error' | 'authentication_error' | 'rate_limit_error' | 'server_error' | 'not_found_error';

export interface OpenAIErrorBody {
  error: { message: string; type: ErrorType; param: string | null; code: string | null };
}

export function errorBody(message: string, type: ErrorType, param: string | null = null, code: string | null = null): OpenAIErrorBody {
  return { error: { message, type, param, code } };
}

export function errorResponse(status: number, message: string, type: ErrorType, param: string | null = null, code: string | null = null, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(errorBody(message, type, param, code)), { status, headers: { 'content-type': 'application/json', ...headers } });
}
