import type { Api, Params } from "../lib/api";
import { changeTone, formatChange, formatValue } from "../lib/format";
import { isStale } from "../lib/stale";
import { usePoll } from "../hooks";

export const KPI_NAMES = ["gmv", "orders", "conversion", "active_users", "payment_failure_rate", "refunds"];
const LABELS: Record<string, string> = {
  gmv: "GMV",
  orders: "Orders",
  conversion: "Conversion",
  active_users: "Active users",
  payment_failure_rate: "Payment failure rate",
  refunds: "Refunds",
};
const UNITS: Record<string, string> = { gmv: "currency", conversion: "ratio", payment_failure_rate: "ratio" };
/** A tile is refreshed every REFRESH_MS; older than its window (a minute), it is greyed out. */
const REFRESH_MS = 10_000;
export const TILE_WINDOW_MS = 60_000;

interface Kpi {
  name: string;
  label?: string;
  unit?: string;
  value: number | null;
  change: number | null;
  previous?: number | null;
}

export function KpiTiles({ api, scope, period, now }: { api: Api; scope: Params; period: string; now: number }) {
  const res = usePoll(() => api.get<{ kpis: Kpi[] }>("/v1/kpis", { period, ...scope }), REFRESH_MS, [
    api,
    period,
    JSON.stringify(scope),
  ]);
  const stale = isStale(res.at, TILE_WINDOW_MS, now);
  const byName = new Map((res.data?.kpis ?? []).map((k) => [k.name, k]));
  return (
    <div className="kpis">
      {KPI_NAMES.map((name) => {
        const k = byName.get(name);
        const unit = k?.unit ?? UNITS[name] ?? "count";
        const tone = changeTone(name, k?.change);
        return (
          <section
            key={name}
            className={`kpi${stale ? " stale" : ""}`}
            data-testid={`kpi-${name}`}
            data-stale={stale ? "true" : "false"}
            aria-label={LABELS[name]}
          >
            <h3 className="kpi-label">{k?.label ?? LABELS[name]}</h3>
            <div className="kpi-value" data-testid="kpi-value">
              {formatValue(k?.value, unit)}
            </div>
            <div className={`kpi-change tone-${tone}`} data-testid="kpi-change" title={`vs the previous ${period}`}>
              <span aria-hidden="true">{tone === "up" ? "▲ " : tone === "down" ? "▼ " : ""}</span>
              {formatChange(k?.change)}
              <span className="sr-only"> vs the previous {period}</span>
            </div>
            {stale ? <div className="stale-note">{res.error ? `not updated: ${res.error}` : "not updated"}</div> : null}
          </section>
        );
      })}
    </div>
  );
}
