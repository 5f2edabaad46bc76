// The chart of bench:gpu-batch's results: total tokens/s against concurrent streams, per context
// and precision, beside the bytes-read limit of the same run. bench/gpu-batch.ts draws it when it
// writes its results; this file also redraws a results file's:
//   npx tsx bench/gpu-batch-chart.ts bench/results/gpu-batch-h200.json   (writes the .svg beside it)
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { lineChart, type Series } from './svg.js';

/** One measured point of bench:gpu-batch (its results' rows). */
export interface BatchPoint {
  readonly context: number;
  readonly streams: number;
  readonly precision: string;
  readonly tokPerS: number;
  readonly limitMs: number;
}

const contextName = (c: number) => (c >= 1024 ? `${c / 1024}K` : String(c));

/** The SVG: a line per context and precision, and per context the limit's tokens/s. */
export function batchChart(title: string, rows: readonly BatchPoint[]): string {
  const series: Series[] = [];
  for (const context of [...new Set(rows.map((r) => r.context))]) {
    const at = rows.filter((r) => r.context === context);
    for (const precision of [...new Set(at.map((r) => r.precision))])
      series.push({ name: `${contextName(context)}, ${precision}`, points: at.filter((r) => r.precision === precision).map((r) => [r.streams, r.tokPerS]) });
    const limit = new Map(at.map((r) => [r.streams, (r.streams * 1000) / r.limitMs]));
    series.push({ name: `${contextName(context)}, limit`, points: [...limit].sort((a, b) => a[0] - b[0]) });
  }
  return lineChart(title, 'concurrent streams (log scale)', 'tokens/s, all streams', series);
}

/** The chart's title for a results file's fields. */
export function batchChartTitle(gpu: string, weights: string): string {
  return `Kimi-Linear-48B-A3B, continuous batching, ${weights.toUpperCase()} weights (${gpu})`;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const file = process.argv[2];
  if (!file?.endsWith('.json')) throw new Error('usage: tsx bench/gpu-batch-chart.ts bench/results/gpu-batch-<gpu>.json');
  const r = JSON.parse(readFileSync(file, 'utf8')) as { gpu: string; weights: string; rows: BatchPoint[] };
  const out = file.replace(/\.json$/, '.svg');
  writeFileSync(out, batchChart(batchChartTitle(r.gpu, r.weights), r.rows));
  console.log(`wrote ${out}`);
}
