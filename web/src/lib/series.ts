// Live series: points keyed by window start, updated in place when a window is republished
// (live updates, late-data revisions), bounded in size.

export interface MetricWindow {
  metric: string;
  tenant: string;
  dims_key: string;
  window: string;
  window_start: string;
  window_end: string;
  value: number | null;
  revision?: number;
}

export interface Point {
  t: number; // ms epoch of the window's start
  v: number | null;
}

/** The dims_key of the series a scope shows: a seller's own, else the tenant-wide one (""). */
export function scopeDims(seller: string | null): string {
  return seller ? `seller_id=${encodeURIComponent(seller)}` : "";
}

export class SeriesBuffer {
  private pts: Point[] = [];
  constructor(readonly maxPoints = 1440) {}

  get length(): number {
    return this.pts.length;
  }

  points(): readonly Point[] {
    return this.pts;
  }

  last(): Point | undefined {
    return this.pts[this.pts.length - 1];
  }

  has(t: number): boolean {
    return this.index(t) >= 0;
  }

  private index(t: number): number {
    const i = this.lowerBound(t);
    return i < this.pts.length && this.pts[i].t === t ? i : -1;
  }

  private lowerBound(t: number): number {
    let lo = 0;
    let hi = this.pts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.pts[mid].t < t) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  clear(): void {
    this.pts = [];
  }

  /** Insert or replace the point at ``t`` (kept sorted; the oldest dropped past maxPoints). */
  upsert(t: number, v: number | null): void {
    const lo = this.lowerBound(t);
    if (lo < this.pts.length && this.pts[lo].t === t) this.pts[lo] = { t, v };
    else this.pts.splice(lo, 0, { t, v });
    if (this.pts.length > this.maxPoints) this.pts.splice(0, this.pts.length - this.maxPoints);
  }

  /** Points with t in [start, end), for a gap check or a zoomed view. */
  between(start: number, end: number): Point[] {
    return this.pts.filter((p) => p.t >= start && p.t < end);
  }
}

/** Whether a window update belongs to the series a chart shows. */
export function belongs(
  w: MetricWindow,
  q: { metric: string; window: string; tenant: string | null; dims: string },
): boolean {
  return (
    w.metric === q.metric &&
    w.window === q.window &&
    w.dims_key === q.dims &&
    (q.tenant === null || w.tenant === q.tenant)
  );
}

export interface AnomalyScore {
  series: string; // tenant|metric|dims_key|window
  time: string;
  score: number;
  value: number | null;
  expected: number | null;
  lower: number | null;
  upper: number | null;
  explanation: string;
  warm?: boolean;
}

/** The parts of an anomaly score's series key. */
export function parseSeries(key: string): { tenant: string; metric: string; dims: string; window: string } {
  const [tenant = "", metric = "", dims = "", window = ""] = key.split("|");
  return { tenant, metric, dims, window };
}

/** The score from which a point is marked as anomalous (about one false mark per series-month). */
export const MARK_SCORE = 0.99;
