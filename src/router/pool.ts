/**
 * The GPU node pool: per-node health (active /health checks and passive failures), a circuit
 * breaker per node, in-flight counts, and the choice of node (least loaded for its weight).
 */
import type { NodeConfig, RouterConfig } from './config.js';

export type BreakerState = 'closed' | 'open' | 'half-open';

export interface NodeStatus {
  readonly name: string;
  readonly healthy: boolean;
  readonly breaker: BreakerState;
  readonly inflight: number;
  readonly failures: number;
  readonly lastError: string | null;
}

class NodeState {
  healthy = true;
  failures = 0;
  openUntil = 0;
  inflight = 0;
  lastError: string | null = null;
  probing = false;
  constructor(readonly cfg: NodeConfig) {}

  breaker(now: number): BreakerState {
    if (this.openUntil === 0) return 'closed';
    return now < this.openUntil ? 'open' : 'half-open';
  }
}

export class NodePool {
  private readonly nodes: NodeState[];
  private lastHealthCheck = 0;

  constructor(
    private readonly cfg: RouterConfig,
    private readonly fetchImpl: typeof fetch = fetch,
    private readonly now: () => number = Date.now,
  ) {
    this.nodes = cfg.nodes.map((n) => new NodeState(n));
  }

  get size(): number {
    return this.nodes.length;
  }

  /** Nodes that could take a job of `tokens` tokens at all (by their max context). */
  canAnyTake(tokens: number): boolean {
    return this.nodes.some((n) => n.cfg.maxContext >= tokens);
  }

  /**
   * The node for a job: it must fit the job, be healthy, not have an open breaker (a half-open
   * one takes a single probe request), and not be in `exclude`; among those the lowest
   * in-flight count per unit of weight, ties to the higher weight.
   */
  choose(tokens: number, exclude: ReadonlySet<string> = new Set()): NodeConfig | null {
    const now = this.now();
    let best: NodeState | null = null;
    for (const n of this.nodes) {
      if (exclude.has(n.cfg.name) || n.cfg.maxContext < tokens || !n.healthy) continue;
      const b = n.breaker(now);
      if (b === 'open' || (b === 'half-open' && n.probing)) continue;
      if (!best || n.inflight / n.cfg.weight < best.inflight / best.cfg.weight || (n.inflight / n.cfg.weight === best.inflight / best.cfg.weight && n.cfg.weight > best.cfg.weight)) best = n;
    }
    return best?.cfg ?? null;
  }

  private state(name: string): NodeState {
    const n = this.nodes.find((x) => x.cfg.name === name);
    if (!n) throw new Error(`no node ${name}`);
    return n;
  }

  begin(name: string): void {
    const n = this.state(name);
    n.inflight++;
    if (n.breaker(this.now()) === 'half-open') n.probing = true;
  }

  end(name: string): void {
    this.state(name).inflight--;
  }

  /** A request reached the node and was answered (the breaker closes). */
  success(name: string): void {
    const n = this.state(name);
    n.failures = 0;
    n.openUntil = 0;
    n.probing = false;
    n.healthy = true;
  }

  /** A passive failure: connection error, timeout, 5xx, or a stream that broke. */
  failure(name: string, why: string): void {
    const n = this.state(name);
    n.failures++;
    n.lastError = why;
    n.probing = false;
    if (n.failures >= this.cfg.breakerFailures || n.openUntil !== 0) n.openUntil = this.now() + this.cfg.breakerOpenMs;
  }

  /** Active health checks of every node (at most once per interval unless forced). */
  async checkHealth(force = false): Promise<void> {
    const now = this.now();
    if (!force && now - this.lastHealthCheck < this.cfg.healthIntervalMs) return;
    this.lastHealthCheck = now;
    await Promise.all(
      this.nodes.map(async (n) => {
        const ctl = new AbortController();
        const t = stallTolerantTimeout(() => ctl.abort(), Math.min(this.cfg.firstByteTimeoutMs, 3000));
        try {
          const r = await this.fetchImpl(`${n.cfg.url}/health`, { headers: n.cfg.token ? { authorization: `Bearer ${n.cfg.token}` } : {}, signal: ctl.signal });
          n.healthy = r.ok;
          if (!r.ok) n.lastError = `health check: HTTP ${r.status}`;
          await r.body?.cancel();
        } catch (e) {
          n.healthy = false;
          n.lastError = `health check: ${(e as Error).name === 'AbortError' ? 'timeout' : (e as Error).message}`;
        } finally {
          t.clear();
        }
      }),
    );
  }

  status(): NodeStatus[] {
    const now = this.now();
    return this.nodes.map((n) => ({ name: n.cfg.name, healthy: n.healthy, breaker: n.breaker(now), inflight: n.inflight, failures: n.failures, lastError: n.lastError }));
  }
}

/**
 * A timeout that does not blame the other side for our own stall: when it fires it waits one
 * more short turn of the event loop, so that a response that arrived while this thread was busy
 * (an edge prefill in the same isolate) is seen before the request is given up.
 */
export function stallTolerantTimeout(fire: () => void, ms: number): { clear(): void } {
  let inner: ReturnType<typeof setTimeout> | null = null;
  const outer = setTimeout(() => {
    inner = setTimeout(fire, 50);
  }, ms);
  return {
    clear() {
      clearTimeout(outer);
      if (inner) clearTimeout(inner);
    },
  };
}
