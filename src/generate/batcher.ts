/**
 * Continuous batching of decode steps: generations of one model that run at the same time ask
 * for their next step here, and every step whose session is ready by the next turn of the event
 * loop runs in one engine forward (EngineModel.stepBatch: weights read once for all of them,
 * each session's state its own). A generation that ends or is abandoned simply stops asking, and
 * one that starts joins at the next step; nothing waits for a batch to fill.
 *
 * @example
 * const batcher = new StepBatcher(model.engine);
 * for await (const ev of session.generate(prompt, { batcher })) ...
 */
import { EngineError, type EngineModel, type EngineSession } from '../engine/engine.js';

interface Pending {
  readonly session: EngineSession;
  readonly token: number;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

/** Counts of what the batcher did, for /metrics. */
export interface BatcherStats {
  /** engine forwards run (each one step for 1..maxBatch sessions) */
  steps: number;
  /** tokens those forwards advanced */
  tokens: number;
  /** sessions in the last forward */
  lastBatch: number;
  /** the largest forward so far */
  largestBatch: number;
}

/** a macrotask turn: the requests of every stream that became ready meanwhile join the step */
const nextTurn: (f: () => void) => void =
  typeof setImmediate === 'function' ? (f) => setImmediate(f) : (f) => setTimeout(f, 0);

export class StepBatcher {
  private pending: Pending[] = [];
  private scheduled = false;
  /** (time, tokens) of recent forwards, for the decode rate */
  private recent: [number, number][] = [];
  readonly stats: BatcherStats = { steps: 0, tokens: 0, lastBatch: 0, largestBatch: 0 };

  constructor(
    readonly model: EngineModel,
    /** the most sessions in one forward (default: what the engine takes) */
    readonly maxBatch = model.maxBatch,
  ) {}

  /** Runs `token` through `session` together with the other steps asked for by the next turn. */
  step(session: EngineSession, token: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ session, token, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        nextTurn(() => this.flush());
      }
    });
  }

  /** Steps asked for and not yet run. */
  get waiting(): number {
    return this.pending.length;
  }

  /** Tokens per second the forwards of the last `windowMs` advanced. */
  tokensPerSecond(windowMs = 5000): number {
    const since = performance.now() - windowMs;
    this.recent = this.recent.filter(([t]) => t >= since);
    return this.recent.reduce((n, [, k]) => n + k, 0) / (windowMs / 1000);
  }

  private flush(): void {
    this.scheduled = false;
    const all = this.pending;
    this.pending = [];
    // a session with a kv budget (whose drops the host decides) steps alone; so does a session
    // asked twice (it cannot be two rows)
    const alone: Pending[] = [], batch: Pending[] = [];
    const seen = new Set<EngineSession>();
    for (const p of all) {
      // a generation whose client left may have freed its session while the step waited: it
      // fails alone (nothing here may throw: this runs from the event loop, not from a caller)
      if (p.session.isFreed) {
        p.reject(new EngineError('kle_session', -1, 'the session was freed while its step waited'));
        continue;
      }
      if (p.session.kvSettings().kvBudget > 0 || seen.has(p.session)) alone.push(p);
      else {
        seen.add(p.session);
        batch.push(p);
      }
    }
    for (let i = 0; i < batch.length; i += this.maxBatch) this.run(batch.slice(i, i + this.maxBatch));
    for (const p of alone) this.run([p]);
  }

  private run(group: Pending[]): void {
    try {
      if (group.length === 1) group[0]!.session.step([group[0]!.token]);
      else this.model.stepBatch(group.map((p) => p.session), group.map((p) => p.token));
    } catch (e) {
      // a batch refused before it ran (a session freed meanwhile, say): each on its own, so
      // that only the session at fault fails; any other failure is every row's
      if (group.length > 1 && (e instanceof RangeError || (e instanceof EngineError && e.code === -1))) {
        for (const p of group) this.run([p]);
        return;
      }
      for (const p of group) p.reject(e);
      return;
    }
    this.stats.steps++;
    this.stats.tokens += group.length;
    this.stats.lastBatch = group.length;
    this.stats.largestBatch = Math.max(this.stats.largestBatch, group.length);
    this.recent.push([performance.now(), group.length]);
    if (this.recent.length > 4096) this.recent.splice(0, this.recent.length - 4096);
    for (const p of group) p.resolve();
  }
}
