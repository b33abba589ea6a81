import uPlot from 'uplot';

export const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563', '#65a30d', '#ea580c'];

/** Keeps every chart as wide as its card. */
const charts = new Set<{ resize(): void }>();
let resizeTimer: number | undefined;
window.addEventListener('resize', () => {
  window.clearTimeout(resizeTimer);
  resizeTimer = window.setTimeout(() => charts.forEach((c) => c.resize()), 100);
});

const HEIGHT = 170;

function size(host: HTMLElement): { width: number; height: number } {
  return { width: Math.max(200, host.clientWidth), height: HEIGHT };
}

export interface SeriesSpec {
  label: string;
  color?: string;
  /** A second y scale on the right (e.g. KV rent beside the token price). */
  right?: boolean;
  /** Dashed, e.g. a reserve price beneath the price in force. */
  dash?: number[];
}

export interface TimeChartOptions {
  /** Formats y-axis ticks and legend values. */
  format?: (v: number) => string;
  formatRight?: (v: number) => string;
  /** Fixed y range (e.g. 0–1 for fractions). */
  range?: [number, number];
  /** Seconds of history kept. */
  keep?: number;
}

/** A time-series chart over the last N seconds; series may be added as they appear (429 reasons). */
export class TimeChart {
  private plot: uPlot | undefined;
  private readonly specs: SeriesSpec[] = [];
  private readonly xs: number[] = [];
  private readonly ys: Array<Array<number | null>> = [];
  private windowSeconds = 300;
  private readonly keep: number;

  constructor(
    private readonly host: HTMLElement,
    series: SeriesSpec[],
    private readonly opts: TimeChartOptions = {},
  ) {
    this.keep = opts.keep ?? 900;
    for (const s of series) this.addSpec(s);
    this.build();
    charts.add(this);
  }

  private addSpec(s: SeriesSpec): void {
    this.specs.push({ ...s, color: s.color ?? COLORS[this.specs.length % COLORS.length] });
    this.ys.push(this.xs.map(() => null));
  }

  has(label: string): boolean {
    return this.specs.some((s) => s.label === label);
  }

  /** Adds a series (filled with nothing for the past) and redraws. */
  ensureSeries(spec: SeriesSpec): void {
    if (this.has(spec.label)) return;
    this.addSpec(spec);
    this.build();
  }

  private build(): void {
    this.plot?.destroy();
    const fmt = this.opts.format ?? ((v: number) => String(v));
    const fmtRight = this.opts.formatRight ?? fmt;
    const hasRight = this.specs.some((s) => s.right);
    const opts: uPlot.Options = {
      ...size(this.host),
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true },
        y: this.opts.range ? { range: this.opts.range } : { range: (_u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] },
        ...(hasRight ? { r: { range: (_u: uPlot, min: number, max: number) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] as [number, number] } } : {}),
      },
      axes: [
        { stroke: '#6b7280', grid: { stroke: '#eef0f3' }, values: (_u, ticks) => ticks.map(hhmmss) },
        { stroke: '#6b7280', grid: { stroke: '#eef0f3' }, size: 64, values: (_u, ticks) => ticks.map(fmt) },
        ...(hasRight ? [{ scale: 'r', side: 1 as const, stroke: '#6b7280', grid: { show: false }, size: 64, values: (_u: uPlot, ticks: number[]) => ticks.map(fmtRight) }] : []),
      ],
      series: [
        {},
        ...this.specs.map((s) => ({
          label: s.label,
          stroke: s.color as string,
          width: 1.5,
          scale: s.right ? 'r' : 'y',
          ...(s.dash ? { dash: s.dash } : {}),
          spanGaps: false,
          points: { show: false },
          value: (_u: uPlot, v: number | null) => (v === null ? '–' : (s.right ? fmtRight : fmt)(v)),
        })),
      ],
    };
    this.plot = new uPlot(opts, [this.xs, ...this.ys] as uPlot.AlignedData, this.host);
    this.render();
  }

  /** Appends the values at time t (seconds), one per series in order (missing ones are gaps). */
  push(t: number, values: Record<string, number | null>): void {
    this.xs.push(t);
    this.specs.forEach((s, i) => (this.ys[i] as Array<number | null>).push(values[s.label] ?? null));
    let drop = 0;
    while (drop < this.xs.length && (this.xs[drop] as number) < t - this.keep) drop++;
    if (drop > 0) {
      this.xs.splice(0, drop);
      for (const y of this.ys) y.splice(0, drop);
    }
  }

  clear(): void {
    this.xs.length = 0;
    for (const y of this.ys) y.length = 0;
  }

  setWindow(seconds: number): void {
    this.windowSeconds = seconds;
    this.render();
  }

  render(): void {
    const p = this.plot;
    if (p === undefined) return;
    p.batch(() => {
      p.setData([this.xs, ...this.ys] as uPlot.AlignedData, true);
      const last = this.xs[this.xs.length - 1] ?? Date.now() / 1000;
      p.setScale('x', { min: last - this.windowSeconds, max: last });
    });
  }

  resize(): void {
    this.plot?.setSize(size(this.host));
  }
}

/**
 * A price against utilization: the operator's reserve curve, the market's path over the last
 * minute, and where it stands now (above the curve when demand clears higher than the reserve).
 */
export class CurveChart {
  private readonly plot: uPlot;

  constructor(
    private readonly host: HTMLElement,
    color: string,
    format: (v: number) => string,
  ) {
    const opts: uPlot.Options = {
      ...size(host),
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false, range: [0, 1] }, y: { range: (_u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] } },
      axes: [
        { stroke: '#6b7280', grid: { stroke: '#eef0f3' }, values: (_u, ticks) => ticks.map((t) => `${Math.round(t * 100)}%`) },
        { stroke: '#6b7280', grid: { stroke: '#eef0f3' }, size: 64, values: (_u, ticks) => ticks.map(format) },
      ],
      series: [
        { value: (_u, v) => (v === null ? '–' : `${(v * 100).toFixed(1)}%`) },
        { label: 'reserve curve', stroke: color, width: 1.5, spanGaps: true, points: { show: false }, value: (_u, v) => (v === null ? '–' : format(v)) },
        { label: 'last minute', stroke: `${color}88`, width: 1, paths: () => null, points: { show: true, size: 6, width: 1, stroke: `${color}aa`, fill: `${color}33` }, value: (_u, v) => (v === null ? '–' : format(v)) },
        { label: 'now', stroke: '#111827', width: 0, paths: () => null, points: { show: true, size: 11, width: 2, stroke: '#111827', fill: color }, value: (_u, v) => (v === null ? '–' : format(v)) },
      ],
    };
    this.plot = new uPlot(opts, [[], [], [], []], host);
    charts.add(this);
  }

  update(curveU: number[], curveP: number[], trail: Array<[number, number]>, now: [number, number]): void {
    type Row = [number, number | null, number | null, number | null];
    const rows: Row[] = [];
    curveU.forEach((u, i) => rows.push([u, curveP[i] ?? null, null, null]));
    // One point per distinct position: an idle market sits still, and so does its picture.
    const seen = new Set<string>();
    for (const [u, p] of trail) {
      const key = `${u}:${p}`;
      if (seen.has(key)) continue;
      seen.add(key);
      rows.push([clamp01(u), null, p, null]);
    }
    rows.push([clamp01(now[0]), null, null, now[1]]);
    rows.sort((a, b) => a[0] - b[0]);
    this.plot.setData([rows.map((r) => r[0]), rows.map((r) => r[1]), rows.map((r) => r[2]), rows.map((r) => r[3])] as uPlot.AlignedData, true);
  }

  resize(): void {
    this.plot.setSize(size(this.host));
  }
}

function hhmmss(t: number): string {
  return new Date(t * 1000).toLocaleTimeString('en-GB', { hour12: false });
}

function clamp01(u: number): number {
  return u < 0 ? 0 : u > 1 ? 1 : u;
}
