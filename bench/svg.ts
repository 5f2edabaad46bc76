/** A small SVG line chart (log-scale x), enough to look at a benchmark's curves. */
export interface Series {
  name: string;
  points: [number, number][];
}

export function lineChart(title: string, xLabel: string, yLabel: string, series: Series[], opts: { logY?: boolean } = {}): string {
  const W = 720, H = 420, L = 70, R = 170, T = 40, B = 50;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const lx = (x: number) => Math.log2(x);
  const ly = (y: number) => (opts.logY ? Math.log10(Math.max(y, 1e-9)) : y);
  const x0 = lx(Math.min(...xs)), x1 = lx(Math.max(...xs));
  const y0 = opts.logY ? ly(Math.min(...ys)) : 0, y1 = ly(Math.max(...ys)) * (opts.logY ? 1 : 1.08);
  const px = (x: number) => L + ((lx(x) - x0) / (x1 - x0 || 1)) * (W - L - R);
  const py = (y: number) => H - B - ((ly(y) - y0) / (y1 - y0 || 1)) * (H - T - B);
  const colors = ['#d62728', '#1f77b4', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`, `<rect width="${W}" height="${H}" fill="white"/>`, `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${title}</text>`];
  out.push(`<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/>`, `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>`);
  for (const x of [...new Set(xs)].sort((a, b) => a - b)) out.push(`<text x="${px(x)}" y="${H - B + 16}" text-anchor="middle">${x >= 1024 ? `${x / 1024}K` : x}</text>`);
  for (let i = 0; i <= 5; i++) {
    const yv = opts.logY ? 10 ** (y0 + ((y1 - y0) * i) / 5) : (y1 * i) / 5;
    out.push(`<text x="${L - 6}" y="${py(yv) + 4}" text-anchor="end">${yv >= 100 ? yv.toFixed(0) : yv.toPrecision(2)}</text>`, `<line x1="${L}" y1="${py(yv)}" x2="${W - R}" y2="${py(yv)}" stroke="#eee"/>`);
  }
  out.push(`<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">${xLabel}</text>`, `<text x="16" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 16 ${(T + H - B) / 2})">${yLabel}</text>`);
  series.forEach((s, i) => {
    const c = colors[i % colors.length];
    out.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${s.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ')}"/>`);
    for (const [x, y] of s.points) out.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${c}"/>`);
    out.push(`<rect x="${W - R + 12}" y="${T + i * 20}" width="14" height="4" fill="${c}"/>`, `<text x="${W - R + 32}" y="${T + i * 20 + 6}">${s.name}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}

/** A grouped bar chart: one group per category, one bar per series. */
export function barChart(title: string, yLabel: string, categories: string[], series: { name: string; values: (number | null)[] }[]): string {
  const W = 820, H = 420, L = 70, R = 250, T = 40, B = 70;
  const max = Math.max(...series.flatMap((s) => s.values.filter((v): v is number => v !== null)), 1e-9) * 1.1;
  const gw = (W - L - R) / categories.length, bw = (gw * 0.8) / series.length;
  const colors = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];
  const y = (v: number) => H - B - (v / max) * (H - T - B);
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`, `<rect width="${W}" height="${H}" fill="white"/>`, `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${title}</text>`];
  for (let i = 0; i <= 5; i++) {
    const v = (max * i) / 5;
    out.push(`<line x1="${L}" y1="${y(v)}" x2="${W - R}" y2="${y(v)}" stroke="#eee"/>`, `<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${v >= 100 ? v.toFixed(0) : v.toPrecision(2)}</text>`);
  }
  out.push(`<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/>`, `<text x="16" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 16 ${(T + H - B) / 2})">${yLabel}</text>`);
  categories.forEach((c, ci) => {
    out.push(`<text x="${L + gw * ci + gw / 2}" y="${H - B + 18}" text-anchor="middle">${c}</text>`);
    series.forEach((s, si) => {
      const v = s.values[ci];
      if (v === null || v === undefined) return;
      const x = L + gw * ci + gw * 0.1 + bw * si;
      out.push(`<rect x="${x.toFixed(1)}" y="${y(v).toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${(H - B - y(v)).toFixed(1)}" fill="${colors[si % colors.length]}"/>`);
    });
  });
  series.forEach((s, i) => out.push(`<rect x="${W - R + 12}" y="${T + i * 20}" width="14" height="10" fill="${colors[i % colors.length]}"/>`, `<text x="${W - R + 32}" y="${T + i * 20 + 9}">${s.name}</text>`));
  out.push('</svg>');
  return out.join('\n');
}

/** Charts side by side in one SVG (each keeps its own size): a multi-panel figure. */
export function panels(title: string, charts: string[]): string {
  const size = (svg: string): [number, number] => {
    const m = /width="(\d+)" height="(\d+)"/.exec(svg);
    return m ? [Number(m[1]), Number(m[2])] : [720, 420];
  };
  const sizes = charts.map(size);
  const W = sizes.reduce((a, [w]) => a + w, 0), H = Math.max(...sizes.map(([, h]) => h)) + 30;
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`, `<rect width="${W}" height="${H}" fill="white"/>`, `<text x="${W / 2}" y="20" text-anchor="middle" font-size="16">${title}</text>`];
  let x = 0;
  charts.forEach((c, i) => {
    out.push(c.replace('<svg ', `<svg x="${x}" y="30" `));
    x += sizes[i]![0];
  });
  out.push('</svg>');
  return out.join('\n');
}
