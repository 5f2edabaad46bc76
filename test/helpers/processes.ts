import { spawn, type ChildProcess } from 'node:child_process';
import { packageRoot } from '../../src/engine/node-kernels.js';

export interface NodeProcess {
  url: string;
  proc: ChildProcess;
  kill(): void;
}

/** Starts `kimi-edge serve` as its own process on a free port (with `env` added to this one's); resolves once it listens. */
export function startServeProcess(args: string[], env: Record<string, string> = {}): Promise<NodeProcess> {
  const proc = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', ...args], { cwd: packageRoot(), stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  return new Promise((resolve, reject) => {
    let err = '';
    proc.stderr!.on('data', (d: Buffer) => (err += d));
    proc.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${err}`)));
    proc.stdout!.once('data', (d: Buffer) => resolve({ url: d.toString().trim().split('\n')[0]!, proc, kill: () => proc.kill('SIGKILL') }));
  });
}

/**
 * A real HTTP server process that passes its health check but answers every completion with
 * HTTP 500: a broken upstream that only passive checks catch.
 */
export function startFailingProcess(): Promise<NodeProcess> {
  const src = "const s=require('http').createServer((q,r)=>{if(q.url==='/health'){r.writeHead(200,{'content-type':'application/json'});return r.end('{\"status\":\"ok\"}')}r.writeHead(500,{'content-type':'application/json'});r.end('{\"error\":{\"message\":\"boom\"}}')});s.listen(0,'127.0.0.1',()=>console.log('http://127.0.0.1:'+s.address().port))";
  const proc = spawn(process.execPath, ['-e', src], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve) => proc.stdout!.once('data', (d: Buffer) => resolve({ url: d.toString().trim(), proc, kill: () => proc.kill('SIGKILL') })));
}

/**
 * An OpenAI-compatible upstream on loopback in this process that records every completion
 * request's body and answers each with one fixed chat completion: for what a router forwards.
 */
export async function startRecordingUpstream(): Promise<{ url: string; seen: Record<string, unknown>[]; close: () => void }> {
  const { createServer } = await import('node:http');
  const seen: Record<string, unknown>[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d));
    req.on('end', () => {
      if (req.url === '/health') return res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
      seen.push(JSON.parse(body) as Record<string, unknown>);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: 'x', object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }] }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, seen, close: () => server.close() };
}
