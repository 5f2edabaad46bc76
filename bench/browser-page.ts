// Runs a page in headless Chromium and returns what it posts to /result: a static server on
// loopback with the headers that make the page cross-origin isolated (COOP same-origin, COEP
// require-corp: SharedArrayBuffer and shared wasm memory need them), a fresh profile directory,
// removed once the browser has exited; and the page's script bundled. Used by bench/browser-threads.ts and bench/wllama.ts.
import { spawn } from 'node:child_process';
import { createReadStream, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';

/** A page's module source (imports resolved from resolveDir) bundled for Chromium by esbuild. */
export async function bundlePage(source: string, resolveDir: string): Promise<string> {
  const out = await build({ stdin: { contents: source, resolveDir, loader: 'js' }, bundle: true, format: 'esm', platform: 'browser', write: false,
    target: 'chrome120', external: ['node:*'], logLevel: 'warning' });
  return out.outputFiles[0]!.text;
}

/** a route's body: bytes or text with their content type, or a file streamed from disk */
export type PageAsset = { type: string; data: string | Uint8Array } | { type: string; file: string };

const ISOLATION = { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' };

/**
 * Serves `/` (a page loading `/app.js` as a module), `/app.js` and `assets` (by URL path), opens
 * it in Chromium, resolves with the JSON the page POSTs to `/result`.
 */
export async function runPageInChromium<T>(o: { chromium: string; appJs: string; assets?: Record<string, PageAsset>; timeoutMs: number }): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'kle-browser-'));
  let exited: Promise<unknown> = Promise.resolve();
  try {
    return await new Promise<T>((resolve, reject) => {
      const server = createServer((req, res) => {
        if (req.url === '/result') {
          let body = '';
          req.on('data', (c) => (body += c));
          req.on('end', () => {
            res.end();
            server.close();
            resolve(JSON.parse(body) as T);
          });
          return;
        }
        const a: PageAsset = req.url === '/app.js' ? { type: 'text/javascript', data: o.appJs } : (o.assets?.[req.url ?? ''] ?? { type: 'text/html', data: '<!doctype html><script type="module" src="/app.js"></script>' });
        if ('file' in a) {
          res.writeHead(200, { 'content-type': a.type, 'content-length': statSync(a.file).size, ...ISOLATION });
          createReadStream(a.file).pipe(res);
          return;
        }
        res.writeHead(200, { 'content-type': a.type, ...ISOLATION });
        res.end(a.data);
      });
      server.listen(0, '127.0.0.1', () => {
        const port = (server.address() as { port: number }).port;
        const browser = spawn(o.chromium, ['--headless=new', '--no-sandbox', '--disable-gpu', `--user-data-dir=${dir}`, `http://127.0.0.1:${port}/`], { stdio: 'ignore' });
        exited = new Promise((r) => browser.once('exit', r));
        const timer = setTimeout(() => {
          server.close();
          reject(new Error(`no result from the page in ${o.timeoutMs / 1000} s`));
        }, o.timeoutMs);
        server.on('close', () => {
          clearTimeout(timer);
          browser.kill();
        });
        browser.on('error', reject);
      });
    });
  } finally {
    await exited; // the browser writes its profile until it is gone
    rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
  }
}
