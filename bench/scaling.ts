// npm run bench:scaling [-- SWEEP.json]
// The architecture comparison in miniature (train/sweep.py's runs on the lent H200): held-out
// loss against training compute for MLA-only, GDN-H and Kimi Linear, a power law
// loss = a * C^b fitted to each (least squares in log-log), and the compute each needs to reach
// the same loss. Also plots the default model's training curve. Reads
// bench/results/train/sweep-h200.json and default-h200.json; writes
// bench/results/scaling-h200.json and SVG plots. The numbers are what the runs gave: nothing
// here is tuned toward the Kimi Linear report's figures.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { lineChart } from './svg.js';
import { table } from './lib.js';

interface Run {
  preset: string;
  arch: string;
  params: { total: number; non_embedding: number; active_compute: number };
  tokens_seen: number;
  epochs: number;
  flops: number;
  flops_6nd: number;
  wall_seconds: number;
  heldout_loss: number;
  device: string;
  steps: number;
  steps_planned: number;
  curve: { tokens: number; loss: number }[];
  heldout: { tokens: number; loss: number }[];
}

const dir = join(import.meta.dirname, 'results');
const sweepPath = process.argv[2] ?? join(dir, 'train', 'sweep-h200.json');
const sweep = JSON.parse(readFileSync(sweepPath, 'utf8')) as { runs: Run[]; wall_seconds: number };
const NAMES: Record<string, string> = { mla: 'MLA only', gdnh: 'GDN-H (3:1)', kimi: 'Kimi Linear (3:1)' };
const archs = ['mla', 'gdnh', 'kimi'].filter((a) => sweep.runs.some((r) => r.arch === a));

/** least squares of log(loss) on log(C): loss = a * C^b */
function fit(runs: Run[]): { a: number; b: number; r2: number } {
  const xs = runs.map((r) => Math.log(r.flops)), ys = runs.map((r) => Math.log(r.heldout_loss));
  const n = xs.length, mx = xs.reduce((s, x) => s + x, 0) / n, my = ys.reduce((s, y) => s + y, 0) / n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i]! - mx) * (ys[i]! - my);
    sxx += (xs[i]! - mx) ** 2;
    syy += (ys[i]! - my) ** 2;
  }
  const b = sxy / sxx;
  return { a: Math.exp(my - b * mx), b, r2: syy ? (sxy * sxy) / (sxx * syy) : 1 };
}
const fits = Object.fromEntries(archs.map((a) => [a, fit(sweep.runs.filter((r) => r.arch === a))]));
/** compute at which an architecture's fit reaches `loss` */
const computeFor = (a: string, loss: number) => (loss / fits[a]!.a) ** (1 / fits[a]!.b);

const rows: Run[] = [...sweep.runs].sort((x, y) => archs.indexOf(x.arch) - archs.indexOf(y.arch) || x.flops - y.flops);
console.log(`${sweep.runs.length} runs on ${sweep.runs[0]?.device}, ${sweep.wall_seconds} s for the whole sweep (runs side by side on one GPU)\n`);
console.log(table(['run', 'params', 'active', 'tokens', 'epochs', 'FLOPs', '6ND', 'steps', 'wall s', 'held-out loss', 'ppl'], rows.map((r) => [
  r.preset, (r.params.total / 1e6).toFixed(2) + 'M', (r.params.active_compute / 1e6).toFixed(2) + 'M', (r.tokens_seen / 1e6).toFixed(2) + 'M', r.epochs.toFixed(2),
  r.flops.toExponential(2), r.flops_6nd.toExponential(2), `${r.steps}/${r.steps_planned}`, r.wall_seconds.toFixed(0), r.heldout_loss.toFixed(4), Math.exp(r.heldout_loss).toFixed(1),
])));
console.log('\nFits, loss = a * C^b (C in FLOPs):\n');
console.log(table(['architecture', 'a', 'b', 'r^2'], archs.map((a) => [NAMES[a]!, fits[a]!.a.toFixed(3), fits[a]!.b.toFixed(4), fits[a]!.r2.toFixed(3)])));
// compare where the runs overlap: at the loss each architecture's middle run reached, and at its best
const targets = archs.includes('kimi') ? [...new Set(rows.filter((r) => r.arch === 'kimi').map((r) => r.heldout_loss))].sort((x, y) => y - x) : [];
const multipliers = targets.map((loss) => ({
  loss,
  mlaOverKimi: archs.includes('mla') ? computeFor('mla', loss) / computeFor('kimi', loss) : null,
  gdnhOverKimi: archs.includes('gdnh') ? computeFor('gdnh', loss) / computeFor('kimi', loss) : null,
}));
console.log('\nCompute to reach the same held-out loss, relative to Kimi Linear (from the fits; > 1: Kimi Linear needs less):\n');
console.log(table(['loss (Kimi Linear run)', 'MLA / Kimi', 'GDN-H / Kimi'], multipliers.map((m) => [m.loss.toFixed(4), m.mlaOverKimi?.toFixed(2) ?? '-', m.gdnhOverKimi?.toFixed(2) ?? '-'])));

const series = archs.flatMap((a, i) => {
  const rs = rows.filter((r) => r.arch === a);
  const lo = Math.min(...rs.map((r) => r.flops)), hi = Math.max(...rs.map((r) => r.flops));
  return [
    { name: `${NAMES[a]} (runs)`, points: rs.map((r) => [r.flops, r.heldout_loss] as [number, number]) },
    { name: `fit ${fits[a]!.a.toFixed(2)}·C^${fits[a]!.b.toFixed(3)}`, points: [lo, Math.sqrt(lo * hi), hi].map((c) => [c, fits[a]!.a * c ** fits[a]!.b] as [number, number]), i },
  ];
});
writeFileSync(join(dir, 'train', 'sweep-curves-h200.svg'), lineChart(`Sweep: held-out loss during training (${sweep.runs[0]?.device})`, 'tokens seen (log scale)', 'held-out loss (256 windows), nats/token', rows.map((r) => ({ name: r.preset, points: r.heldout.map((p) => [p.tokens, p.loss] as [number, number]) }))));
writeFileSync(join(dir, 'scaling-h200.svg'), lineChart(`Held-out loss vs training compute (Brown corpus, ${sweep.runs[0]?.device})`, 'training FLOPs (log scale)', 'held-out loss, nats/token (log scale)', series, { logY: true }));
const out: Record<string, unknown> = { date: new Date().toISOString(), source: sweepPath, device: sweep.runs[0]?.device, fits, multipliers, runs: rows.map(({ curve: _c, heldout: _h, ...r }) => r) };
try {
  const d = JSON.parse(readFileSync(join(dir, 'train', 'default-h200.json'), 'utf8')) as Run & { eval?: { loss: number; bigram: { loss: number } } };
  writeFileSync(join(dir, 'train', 'default-curve-h200.svg'), lineChart(`Default model training (${(d.params.total / 1e6).toFixed(2)}M parameters, ${d.device})`, 'tokens seen (log scale)', 'loss, nats/token', [
    { name: 'training batch', points: d.curve.filter((p) => p.tokens >= 1e5).map((p) => [p.tokens, p.loss] as [number, number]) },
    { name: 'held-out (256 windows)', points: d.heldout.map((p) => [p.tokens, p.loss] as [number, number]) },
  ]));
  out.default = { params: d.params, tokens: d.tokens_seen, epochs: d.epochs, flops: d.flops, wall_seconds: d.wall_seconds, heldout_loss: d.heldout_loss, bigram_loss: d.eval?.bigram.loss };
} catch (e) {
  console.error(`no default training log: ${(e as Error).message}`);
}
writeFileSync(join(dir, 'scaling-h200.json'), JSON.stringify(out, null, 1) + '\n');
console.log(`\nwrote ${join(dir, 'scaling-h200.json')} and SVG plots`);
