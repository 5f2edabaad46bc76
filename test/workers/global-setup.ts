// Runs in Node before the workerd tests: a real GPU-node stand-in (the project's own server on
// the native engine) on a fixed loopback port that the Worker's GPU_NODES binding names.
import { spawn, type ChildProcess } from 'node:child_process';

export const NODE_PORT = 18911;
let proc: ChildProcess | null = null;

export async function setup(): Promise<void> {
  proc = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', String(NODE_PORT), '--backend', 'native', '--api-key', 'node-secret'], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    proc!.once('exit', (c) => reject(new Error(`node server exited with ${c}`)));
    proc!.stdout!.once('data', () => resolve());
  });
}

export async function teardown(): Promise<void> {
  proc?.kill('SIGKILL');
}
