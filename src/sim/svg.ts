/** A series of (x, y) points drawn as one polyline with markers. */
export interface Series {
  name: string;
  points: [number, number][];
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  width?: number;
  height?: number;
  /** Draw x on a log2 axis (loads 0.5×, 1×, 2×, 4× sit evenly). */
  logX?: boolean;
}

const PALETTE = ['#1b6ca8', '#d1495b', '#2e933c', '#edae49', '#7b4ea3', '#00798c', '#8d6a9f', '#444444'];

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function ticks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

const fmt = (v: number) => (Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(1) : String(Number(v.toPrecision(4))));

/** A self-contained SVG line chart: axes, ticks, a legend, one line per series. */
export function lineChart(series: readonly Series[], o: ChartOptions): string {
  const W = o.width ?? 640;
  const H = o.height ?? 400;
  const m = { l: 80, r: 130, t: 40, b: 50 };
  const fx = (x: number) => (o.logX ? Math.log2(x) : x);
  const xs = series.flatMap((s) => s.points.map((p) => fx(p[0])));
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite);
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs);
  let y0 = Math.min(0, ...ys);
  let y1 = Math.max(...ys);
  if (!(y1 > y0)) {
    y1 = y0 + 1;
    y0 -= 0;
  }
  const px = (x: number) => m.l + ((fx(x) - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
  const py = (y: number) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l - 50}" y="22" font-size="14">${esc(o.title)}</text>`,
  ];
  const xTicks = o.logX ? [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b) : ticks(x0, x1);
  for (const t of xTicks) {
    parts.push(`<line x1="${px(t)}" y1="${H - m.b}" x2="${px(t)}" y2="${m.t}" stroke="#eee"/>`, `<text x="${px(t)}" y="${H - m.b + 16}" text-anchor="middle">${fmt(t)}</text>`);
  }
  for (const t of ticks(y0, y1)) {
    parts.push(`<line x1="${m.l}" y1="${py(t)}" x2="${W - m.r}" y2="${py(t)}" stroke="#eee"/>`, `<text x="${m.l - 6}" y="${py(t) + 4}" text-anchor="end">${fmt(t)}</text>`);
  }
  parts.push(
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${m.l}" y2="${m.t}" stroke="black"/>`,
    `<text x="${(m.l + W - m.r) / 2}" y="${H - 12}" text-anchor="middle">${esc(o.xLabel)}</text>`,
    `<text x="18" y="${(m.t + H - m.b) / 2}" text-anchor="middle" font-size="11" transform="rotate(-90 18 ${(m.t + H - m.b) / 2})">${esc(o.yLabel)}</text>`,
  );
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length] as string;
    const pts = s.points.filter((p) => Number.isFinite(p[1])).sort((a, b) => a[0] - b[0]);
    parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(' ')}"/>`);
    for (const p of pts) parts.push(`<circle cx="${px(p[0]).toFixed(1)}" cy="${py(p[1]).toFixed(1)}" r="3" fill="${color}"/>`);
    const ly = m.t + 16 + i * 18;
    parts.push(`<line x1="${W - m.r + 12}" y1="${ly - 4}" x2="${W - m.r + 32}" y2="${ly - 4}" stroke="${color}" stroke-width="2"/>`, `<text x="${W - m.r + 38}" y="${ly}">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
