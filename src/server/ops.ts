/** The operational routes as a sub-app: GET /health (no auth) and GET /metrics (Prometheus). */
import { Hono } from 'hono';
import type { GenerationDeps } from './generation.js';

export function opsRoutes(d: GenerationDeps): Hono {
  return new Hono()
    .get('/health', async (c) => {
      const m = await d.getModel();
      const mem = (m.backend as { memory?: WebAssembly.Memory }).memory;
      return c.json({ status: 'ok', model: d.modelId, backend: m.backend.name, layers: m.config.numLayers, activeSessions: d.load.active, maxConcurrent: d.limits.maxConcurrent, engineMemoryBytes: mem ? mem.buffer.byteLength : null });
    })
    .get('/metrics', () => new Response(d.metrics.render(), { headers: { 'content-type': 'text/plain; version=0.0.4' } }));
}
