// Layout documents (GET/PUT /v1/layouts): widgets, their positions on a 12-column grid and
// their queries, never data. linkpulse/layouts/ validates the same shape on the server.

export const COLS = 12;

export type WidgetKind = "kpis" | "chart" | "alerts" | "top_sellers" | "heatmap";

export interface Widget {
  id: string;
  kind: WidgetKind;
  x: number;
  y: number;
  w: number;
  h: number;
  options?: Record<string, string | number>;
}

export interface LayoutDoc {
  id: string;
  name: string;
  owner: string | null;
  mine: boolean;
  shared: boolean;
  template: boolean;
  widgets: Widget[];
}

export interface GridItem {
  i: string;
  x: number;
  y: number;
  w: number;
  h: number;
  minW?: number;
  minH?: number;
  maxH?: number;
}

/** The server's limits (linkpulse/layouts/document.py), so a resize never makes a layout it refuses. */
export const MAX_H = 40;
const MIN_SIZE: Record<WidgetKind, [number, number]> = {
  kpis: [3, 3],
  chart: [3, 5],
  alerts: [3, 4],
  top_sellers: [3, 4],
  heatmap: [4, 5],
};

/** Metrics a chart can show (the live metrics of docs/metrics.md). */
export const CHART_METRICS = [
  "gmv",
  "orders",
  "page_views",
  "active_users",
  "conversion_rate",
  "payment_failure_rate",
  "refunds",
  "refund_amount",
  "signups",
  "order_value",
];

/** What the add-widget menu offers: value "<kind>" or "chart:<metric>". */
export function addChoices(widgets: Widget[]): { value: string; label: string }[] {
  const has = new Set(widgets.map((w) => w.id));
  const out: { value: string; label: string }[] = [];
  const single: [WidgetKind, string][] = [
    ["kpis", "KPI tiles"],
    ["alerts", "Alert feed"],
    ["top_sellers", "Top sellers"],
    ["heatmap", "Activity heatmap"],
  ];
  for (const [kind, label] of single) if (!has.has(idFor(kind))) out.push({ value: kind, label });
  for (const m of CHART_METRICS) if (!has.has(`chart-${m}`)) out.push({ value: `chart:${m}`, label: `Chart: ${m}` });
  return out;
}

function idFor(kind: WidgetKind, metric?: string): string {
  if (kind === "chart") return `chart-${metric}`;
  return kind === "top_sellers" ? "top-sellers" : kind;
}

const SIZES: Record<WidgetKind, [number, number]> = {
  kpis: [12, 4],
  chart: [6, 9],
  alerts: [6, 9],
  top_sellers: [6, 9],
  heatmap: [12, 8],
};

/** A new widget for a menu choice, placed below everything else. */
export function newWidget(choice: string, widgets: Widget[]): Widget {
  const [kindText, metric] = choice.split(":");
  const kind = kindText as WidgetKind;
  if (!(kind in SIZES)) throw new Error(`unknown widget kind ${JSON.stringify(kindText)}`);
  const [w, h] = SIZES[kind];
  const y = widgets.reduce((m, x) => Math.max(m, x.y + x.h), 0);
  const options: Record<string, string | number> = kind === "chart" ? { metric: metric ?? "gmv" } : {};
  return { id: idFor(kind, metric), kind, x: 0, y, w, h, options };
}

export function toGrid(widgets: Widget[]): GridItem[] {
  return widgets.map((w) => {
    const [minW, minH] = MIN_SIZE[w.kind] ?? [1, 1];
    return { i: w.id, x: w.x, y: w.y, w: w.w, h: w.h, minW, minH, maxH: MAX_H };
  });
}

/** Widgets with the grid's new positions; null when nothing moved (nothing to save). */
export function fromGrid(widgets: Widget[], grid: readonly GridItem[]): Widget[] | null {
  const byId = new Map(grid.map((g) => [g.i, g]));
  let moved = false;
  const out = widgets.map((w) => {
    const g = byId.get(w.id);
    if (!g) return w;
    if (g.x !== w.x || g.y !== w.y || g.w !== w.w || g.h !== w.h) moved = true;
    return { ...w, x: g.x, y: g.y, w: g.w, h: g.h };
  });
  return moved ? out : null;
}

/** On a phone-sized screen: one column, in reading order (top to bottom, left to right). */
export function stacked(widgets: Widget[]): Widget[] {
  return [...widgets].sort((a, b) => a.y - b.y || a.x - b.x);
}
