// The Worker under `wrangler dev` for the benchmarks that measure it (load, cold start, peers).
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';

export async function freePort(): Promise<number> {
  return new Promise((r) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => r(p));
    });
  });
}

export interface WranglerDev {
  url: string;
  /** ms from spawning wrangler to the first OK answer on readyPath */
  readyMs: number;
  stop(): void;
}

/**
 * Starts `wrangler dev` on a free loopback port (extra args appended) and waits until
 * readyPath answers OK; throws with wrangler's output if it does not within timeoutMs.
 */
export async function startWranglerDev(opts: { args?: string[]; readyPath?: string; timeoutMs?: number } = {}): Promise<WranglerDev> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const t0 = performance.now();
  const wr = spawn('npx', ['wrangler', 'dev', '--ip', '127.0.0.1', '--port', String(port), ...(opts.args ?? [])], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, WRANGLER_SEND_METRICS: 'false' }, detached: true });
  let log = '';
  wr.stdout!.on('data', (d: Buffer) => (log += d));
  wr.stderr!.on('data', (d: Buffer) => (log += d));
  const stop = () => {
    try {
      process.kill(-wr.pid!, 'SIGTERM');
    } catch {}
  };
  process.on('exit', stop);
  for (;;) {
    try {
      if ((await fetch(`${url}${opts.readyPath ?? '/health'}`)).ok) return { url, readyMs: performance.now() - t0, stop };
    } catch {}
    if (performance.now() - t0 > (opts.timeoutMs ?? 60_000)) {
      stop();
      throw new Error(`wrangler dev did not come up:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Peak RSS (VmHWM) of the workerd processes, MiB, or null where /proc does not say. */
export function workerdPeakMiB(): number | null {
  try {
    let best = 0;
    for (const pid of execFileSync('pgrep', ['-f', 'workerd'], { encoding: 'utf8' }).trim().split('\n')) {
      const f = `/proc/${pid}/status`;
      if (existsSync(f)) best = Math.max(best, Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(f, 'utf8'))?.[1] ?? 0) / 1024);
    }
    return best || null;
  } catch {
    return null;
  }
}
