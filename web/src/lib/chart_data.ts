// The arrays uPlot draws for one chart: the series, the detector's expected band, the forecast
// interval, all on one time axis (seconds), and the anomalous points to mark.
import { type AnomalyScore, MARK_SCORE, type Point } from "./series";

export interface ForecastPt {
  time: string;
  value: number | null;
  lower: number | null;
  upper: number | null;
}

export interface Mark {
  t: number; // seconds
  v: number;
  score: number;
  text: string;
}

export type Aligned = [number[], ...(number | null)[][]];

export interface ChartData {
  aligned: Aligned; // x, value, band low, band high, forecast, forecast low, forecast high
  marks: Mark[];
}

export function chartData(points: readonly Point[], anomalies: readonly AnomalyScore[], forecast: readonly ForecastPt[]): ChartData {
  const rows = new Map<number, (number | null)[]>();
  const row = (t: number) => {
    let r = rows.get(t);
    if (!r) {
      r = [null, null, null, null, null, null];
      rows.set(t, r);
    }
    return r;
  };
  for (const p of points) row(p.t / 1000)[0] = p.v;
  const marks: Mark[] = [];
  for (const a of anomalies) {
    const t = Date.parse(a.time) / 1000;
    if (!Number.isFinite(t)) continue;
    if (a.lower !== null && a.upper !== null) {
      const r = row(t);
      r[1] = a.lower;
      r[2] = a.upper;
    }
    const v = a.value ?? rows.get(t)?.[0] ?? null;
    if (a.score >= MARK_SCORE && v !== null) {
      const pct = (a.score * 100).toFixed(1);
      marks.push({ t, v, score: a.score, text: `${a.explanation || "anomalous value"} (score ${pct}%)` });
    }
  }
  for (const f of forecast) {
    const t = Date.parse(f.time) / 1000;
    if (!Number.isFinite(t)) continue;
    const r = row(t);
    r[3] = f.value;
    r[4] = f.lower;
    r[5] = f.upper;
  }
  const xs = [...rows.keys()].sort((a, b) => a - b);
  const cols: (number | null)[][] = [[], [], [], [], [], []];
  for (const t of xs) {
    const r = rows.get(t)!;
    for (let i = 0; i < 6; i++) cols[i].push(r[i]);
  }
  return { aligned: [xs, ...cols], marks };
}

/** A zoomed x range: zoom by ``factor`` (<1 in) around the middle, or pan by ``shift`` widths. */
export function moveRange(min: number, max: number, factor: number, shift: number): [number, number] {
  const mid = (min + max) / 2 + (max - min) * shift;
  const half = ((max - min) * factor) / 2;
  return [mid - half, mid + half];
}
