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

/** The sequences' state, read when /metrics is scraped. */
export interface SequenceGauges {
  /** generations decoding now */
  running: number;
  /** prompts being prefilled, and decode steps queued for the next batch */
  waiting: number;
  /** sessions in the last batched step, and in the largest so far */
  lastBatch: number;
  largestBatch: number;
  /** batched steps run (engine forwards of the decode) */
  steps: number;
  /** tokens per second the decode steps of the last 5 s advanced */
  tokensPerSecond: number;
  /** bytes the running sessions' states hold in the engine's memory (states, caches, logits) */
  stateBytes: number;
}

export class Metrics {
  readonly requests = new Counter('kle_requests_total', 'HTTP requests by route and status');
  readonly tokens = new Counter('kle_tokens_total', 'Tokens processed, by kind (prompt, completion)');
  readonly duration = new Histogram('kle_request_duration_seconds', 'Time from request to the last byte, by route');
  readonly ttft = new Histogram('kle_time_to_first_token_seconds', 'Time from request to the first generated token');
  readonly tpot = new Histogram('kle_time_per_output_token_seconds', 'Mean time per generated token after the first, per request', [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1]);
  activeSessions = 0;
  /** set by the app: the sequences' gauges */
  sequences: (() => SequenceGauges) | null = null;

  render(): string {
    const g = this.sequences?.();
    const gauge = (name: string, help: string, v: number) => [`# HELP ${name} ${help}`, `# TYPE ${name} gauge`, `${name} ${v}`].join('\n');
    return [
      this.requests.render(),
      this.tokens.render(),
      this.duration.render(),
      this.ttft.render(),
      this.tpot.render(),
      '# HELP kle_active_sessions Generations in progress',
      '# TYPE kle_active_sessions gauge',
      `kle_active_sessions ${this.activeSessions}`,
      ...(g
        ? [
            gauge('kle_running_sequences', 'Generations decoding now', g.running),
            gauge('kle_waiting_sequences', 'Prompts being prefilled and decode steps queued for the next batch', g.waiting),
            gauge('kle_batch_size', 'Sessions in the last batched decode step', g.lastBatch),
            gauge('kle_batch_size_max', 'Sessions in the largest batched decode step so far', g.largestBatch),
            ['# HELP kle_decode_steps_total Batched decode steps (engine forwards)', '# TYPE kle_decode_steps_total counter', `kle_decode_steps_total ${g.steps}`].join('\n'),
            gauge('kle_decode_tokens_per_second', 'Tokens per second the decode steps of the last 5 seconds advanced', Number(g.tokensPerSecond.toFixed(3))),
            gauge('kle_state_bytes', "Bytes the running sessions' states hold in the engine's memory", g.stateBytes),
          ]
        : []),
      '',
    ].join('\n');
  }
}
