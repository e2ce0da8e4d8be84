// What the page holds from the streams and the query API, for the scope it shows: one series
// per charted metric, recent anomaly scores, the alerts, and when each was last confirmed.
// Plain TS (tested in live.test.ts); React subscribes through subscribe()/version.
import { type AnomalyScore, belongs, type MetricWindow, parseSeries, SeriesBuffer } from "./series";

export interface Scope {
  tenant: string | null; // null: the key's own tenant (the server applies it)
  seller: string | null;
  dims: string; // the dims_key shown: "" tenant-wide, "seller_id=s1" a seller's
}

export interface AlertChange {
  alert_id: string;
  rule: string;
  tenant: string;
  series: string;
  state: string;
  at: string;
  severity: string;
  labels: Record<string, string>;
  summary: string;
  explanation: string;
  value: number | null;
}

export const CHART_WINDOW = "1m";

export class LiveData {
  readonly series = new Map<string, SeriesBuffer>();
  readonly lastAt = new Map<string, number>();
  readonly anomalies = new Map<string, AnomalyScore[]>();
  readonly alerts = new Map<string, AlertChange>();
  alertsAt: number | null = null;
  version = 0;
  private listeners = new Set<() => void>();

  constructor(
    readonly scope: Scope,
    private readonly now: () => number = Date.now,
  ) {}

  subscribe = (fn: () => void): (() => void) => {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  };

  getVersion = (): number => this.version;

  changed(): void {
    this.version += 1;
    for (const fn of this.listeners) fn();
  }

  buffer(metric: string): SeriesBuffer {
    let b = this.series.get(metric);
    if (!b) {
      b = new SeriesBuffer();
      this.series.set(metric, b);
    }
    return b;
  }

  /** A live or replayed window update; false when it is not this page's series. */
  applyWindow(w: MetricWindow): boolean {
    const q = { metric: w.metric, window: CHART_WINDOW, tenant: this.scope.tenant, dims: this.scope.dims };
    if (!belongs(w, q)) return false;
    this.buffer(w.metric).upsert(Date.parse(w.window_start), w.value);
    this.lastAt.set(w.metric, this.now());
    return true;
  }

  /** History from GET /v1/series, behind what the stream brought: a window the stream
   * already delivered keeps the stream's value (it is at least as new as the store's). */
  applyHistory(metric: string, points: { t: string; value: number | null }[]): void {
    const b = this.buffer(metric);
    for (const p of points) {
      const t = Date.parse(p.t);
      if (!b.has(t)) b.upsert(t, p.value);
    }
    this.lastAt.set(metric, this.now());
  }

  /** After a stream reset: everything may have a gap, so it is dropped and reloaded. */
  clearSeries(): void {
    for (const b of this.series.values()) b.clear();
    this.lastAt.clear();
  }

  applyAnomaly(a: AnomalyScore): boolean {
    const s = parseSeries(a.series);
    if (s.dims !== this.scope.dims) return false;
    if (this.scope.tenant !== null && s.tenant !== this.scope.tenant) return false;
    const list = this.anomalies.get(s.metric) ?? [];
    const t = Date.parse(a.time);
    const i = list.findIndex((x) => Date.parse(x.time) === t && x.series === a.series);
    if (i >= 0) list[i] = a;
    else list.push(a);
    list.sort((x, y) => Date.parse(x.time) - Date.parse(y.time));
    if (list.length > 2000) list.splice(0, list.length - 2000);
    this.anomalies.set(s.metric, list);
    return true;
  }

  applyAlert(a: AlertChange): void {
    if (this.scope.tenant !== null && a.tenant !== this.scope.tenant) return;
    const had = this.alerts.get(a.alert_id);
    if (!had || Date.parse(had.at) <= Date.parse(a.at)) this.alerts.set(a.alert_id, a);
    this.alertsAt = this.now();
  }

  /** Alerts newest first: firing, then acknowledged, then resolved. */
  alertList(limit = 50): AlertChange[] {
    const rank: Record<string, number> = { firing: 0, pending: 1, acknowledged: 2, resolved: 3 };
    return [...this.alerts.values()]
      .sort((a, b) => (rank[a.state] ?? 4) - (rank[b.state] ?? 4) || Date.parse(b.at) - Date.parse(a.at))
      .slice(0, limit);
  }
}
