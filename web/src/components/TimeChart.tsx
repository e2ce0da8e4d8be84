import { useEffect, useMemo, useRef, useState } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { chartData, type ForecastPt, type Mark, moveRange } from "../lib/chart_data";
import { formatValue, isoUtc } from "../lib/format";
import { BAND_FILL, FORECAST_FILL, FORECAST_LINE, MARK_COLOUR, SERIES_COLOUR } from "../lib/palette";
import type { AnomalyScore, Point } from "../lib/series";

export interface TimeChartProps {
  metric: string;
  unit: string;
  points: readonly Point[];
  anomalies: readonly AnomalyScore[];
  forecast: readonly ForecastPt[];
  stale: boolean;
  version: number;
}

const HEIGHT_PAD = 72; // header and toolbar above the canvas

function drawMarks(u: uPlot, marks: Mark[], unit: string): void {
  const layer = u.over;
  for (const old of layer.querySelectorAll(".anomaly-marker")) old.remove();
  const w = layer.clientWidth;
  const h = layer.clientHeight;
  for (const m of marks) {
    const left = u.valToPos(m.t, "x");
    const top = u.valToPos(m.v, "y");
    if (!(left >= 0 && left <= w && top >= 0 && top <= h)) continue;
    const el = document.createElement("span");
    el.className = "anomaly-marker";
    el.dataset.testid = "anomaly-marker";
    el.dataset.t = isoUtc(m.t * 1000);
    el.tabIndex = 0;
    el.setAttribute("role", "img");
    const text = `${isoUtc(m.t * 1000)}: ${formatValue(m.v, unit)}: ${m.text}`;
    el.title = text;
    el.setAttribute("aria-label", text);
    el.style.left = `${left}px`;
    el.style.top = `${top}px`;
    el.style.borderColor = MARK_COLOUR;
    layer.appendChild(el);
  }
}

export function TimeChart({ metric, unit, points, anomalies, forecast, stale, version }: TimeChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const marks = useRef<Mark[]>([]);
  const follow = useRef(true);
  const [zoomed, setZoomed] = useState(false);
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const data = useMemo(() => chartData(points, anomalies, forecast), [version, points, anomalies, forecast]);

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: Math.max(120, el.clientHeight),
      legend: { show: false },
      cursor: { drag: { x: true, y: false, setScale: true } },
      scales: { x: { time: true } },
      axes: [
        {},
        {
          values: (_u, vals) => vals.map((v) => formatValue(v, unit)),
          // wide enough for the longest label (7 px a character at the axis font)
          size: (_u, vals) => (vals ? Math.max(...vals.map((v) => String(v).length)) * 7 + 18 : 48),
        },
      ],
      series: [
        {},
        { label: metric, stroke: SERIES_COLOUR, width: 2, points: { show: true, size: 4 } },
        { label: "expected low", stroke: "transparent", points: { show: false }, spanGaps: true },
        { label: "expected high", stroke: "transparent", points: { show: false }, spanGaps: true },
        { label: "forecast", stroke: FORECAST_LINE, width: 1.5, dash: [6, 4], points: { show: false }, spanGaps: true },
        { label: "forecast low", stroke: "transparent", points: { show: false }, spanGaps: true },
        { label: "forecast high", stroke: "transparent", points: { show: false }, spanGaps: true },
      ],
      bands: [
        { series: [3, 2], fill: BAND_FILL },
        { series: [6, 5], fill: FORECAST_FILL },
      ],
      hooks: {
        draw: [(u) => drawMarks(u, marks.current, unit)],
        // a drag over the chart zooms (uPlot's own select-to-zoom): stop following the live edge
        setSelect: [
          (u) => {
            if (u.select.width > 0) {
              follow.current = false;
              setZoomed(true);
            }
          },
        ],
      },
    };
    const u = new uPlot(opts, data.aligned as uPlot.AlignedData, el);
    plot.current = u;
    const ro = new ResizeObserver(() => {
      u.setSize({ width: Math.max(200, el.clientWidth), height: Math.max(120, el.clientHeight) });
    });
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
    // created once per chart; data goes in through setData below
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [metric, unit]);

  useEffect(() => {
    const u = plot.current;
    if (!u) return;
    marks.current = data.marks;
    u.setData(data.aligned as uPlot.AlignedData, follow.current);
  }, [data]);

  const move = (factor: number, shift: number) => {
    const u = plot.current;
    if (!u) return;
    const { min, max } = u.scales.x;
    if (min === undefined || max === undefined) return;
    const [a, b] = moveRange(min, max, factor, shift);
    follow.current = false; // a user action: stop following the live edge
    setZoomed(true);
    u.setScale("x", { min: a, max: b });
  };
  const live = () => {
    follow.current = true;
    setZoomed(false);
    const u = plot.current;
    if (u) {
      u.setData(data.aligned as uPlot.AlignedData, true);
    }
  };
  const last = points[points.length - 1];
  const summary = last
    ? `${metric}: ${points.length} points, last ${formatValue(last.v, unit)} at ${isoUtc(last.t)}`
    : `${metric}: no data yet`;
  return (
    <div
      className={`chart${stale ? " stale" : ""}`}
      data-testid={`chart-${metric}`}
      data-last-t={last ? isoUtc(last.t) : ""}
      data-last-value={last && last.v !== null ? String(last.v) : ""}
      data-points={String(points.length)}
      data-stale={stale ? "true" : "false"}
      data-zoomed={zoomed ? "true" : "false"}
    >
      <div className="chart-toolbar" role="toolbar" aria-label={`${metric} time axis`}>
        <button type="button" onClick={() => move(1, -0.25)} aria-label="Pan earlier">◀</button>
        <button type="button" onClick={() => move(0.5, 0)} aria-label="Zoom in">+</button>
        <button type="button" onClick={() => move(2, 0)} aria-label="Zoom out">−</button>
        <button type="button" onClick={() => move(1, 0.25)} aria-label="Pan later">▶</button>
        <button type="button" onClick={live} disabled={!zoomed} aria-label="Follow live">Live</button>
        <span className="legend" aria-hidden="true">
          <span className="swatch" style={{ background: SERIES_COLOUR }} /> value
          <span className="swatch" style={{ background: BAND_FILL }} /> expected
          <span className="swatch" style={{ background: FORECAST_FILL }} /> forecast
          <span className="swatch mark" style={{ borderColor: MARK_COLOUR }} /> anomaly
        </span>
      </div>
      <p className="sr-only">{summary}</p>
      <div className="chart-canvas" ref={box} style={{ minHeight: 120 }} data-pad={HEIGHT_PAD} />
      {stale ? <div className="stale-note">not live: data older than its window</div> : null}
    </div>
  );
}
