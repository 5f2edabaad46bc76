/** Prometheus metrics of the server: counters, histograms and gauges in the text format. */

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

type Labels = Record<string, string>;
const key = (l: Labels) => Object.entries(l).sort().map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, '_')}"`).join(',');

class Counter {
  private v = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}
  inc(l: Labels = {}, n = 1) {
    const k = key(l);
    this.v.set(k, (this.v.get(k) ?? 0) + n);
  }
  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const [k, v] of this.v) lines.push(`${this.name}${k ? `{${k}}` : ''} ${v}`);
    return lines.join('\n');
  }
}

class Histogram {
  private v = new Map<string, { counts: number[]; sum: number; n: number }>();
  constructor(readonly name: string, readonly help: string, readonly buckets = LATENCY_BUCKETS) {}
  observe(x: number, l: Labels = {}) {
    const k = key(l);
    const h = this.v.get(k) ?? { counts: this.buckets.map(() => 0), sum: 0, n: 0 };
    this.buckets.forEach((b, i) => x <= b && h.counts[i]!++);
    h.sum += x;
    h.n++;
    this.v.set(k, h);
  }
  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const [k, h] of this.v) {
      const pre = k ? `${k},` : '';
      this.buckets.forEach((b, i) => lines.push(`${this.name}_bucket{${pre}le="${b}"} ${h.counts[i]}`));
      lines.push(`${this.name}_bucket{${pre}le="+Inf"} ${h.n}`, `${this.name}_sum${k ? `{${k}}` : ''} ${h.sum}`, `${this.name}_count${k ? `{${k}}` : ''} ${h.n}`);
    }
    return lines.join('\n');
  }
}

export class Metrics {
  readonly requests = new Counter('kle_requests_total', 'HTTP requests by route and status');
  readonly tokens = new Counter('kle_tokens_total', 'Tokens processed, by kind (prompt, completion)');
  readonly duration = new Histogram('kle_request_duration_seconds', 'Time from request to the last byte, by route');
  readonly ttft = new Histogram('kle_time_to_first_token_seconds', 'Time from request to the first generated token');
  readonly tpot = new Histogram('kle_time_per_output_token_seconds', 'Mean time per generated token after the first, per request', [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1]);
  activeSessions = 0;

  render(): string {
    return [
      this.requests.render(),
      this.tokens.render(),
      this.duration.render(),
      this.ttft.render(),
      this.tpot.render(),
      '# HELP kle_active_sessions Generations in progress',
      '# TYPE kle_active_sessions gauge',
      `kle_active_sessions ${this.activeSessions}`,
      '',
    ].join('\n');
  }
}
