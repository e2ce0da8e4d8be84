import type { Api, Params } from "../lib/api";
import { formatValue, isoUtc } from "../lib/format";
import { DAYS, heatGrid, type QueryResult } from "../lib/heatmap";
import { heatColour, heatText } from "../lib/palette";
import { usePoll } from "../hooks";

const REFRESH_MS = 300_000;

export function Heatmap({ api, scope, measure, days }: { api: Api; scope: Params; measure: string; days: number }) {
  const res = usePoll(
    () => {
      const end = Math.ceil(Date.now() / 3_600_000) * 3_600_000;
      return api.post<QueryResult>("/v1/query", {
        measures: [measure],
        dimensions: ["day_of_week", "hour_of_day"],
        start: isoUtc(end - days * 86_400_000),
        end: isoUtc(end),
        limit: 1000,
        ...(scope.tenant ? { tenant: scope.tenant } : {}),
      });
    },
    REFRESH_MS,
    [api, measure, days, JSON.stringify(scope)],
  );
  let heat = null;
  let problem = res.error;
  try {
    heat = res.data ? heatGrid(res.data, measure) : null;
  } catch (e) {
    problem = e instanceof Error ? e.message : String(e);
  }
  return (
    <div className="heatmap" data-testid="heatmap" data-total={heat ? String(heat.total) : ""}>
      {problem && !heat ? <p className="error">{problem}</p> : null}
      <div className="heat-scroll">
        <table className="heat">
          <caption className="sr-only">
            {measure} by day of week and hour of day (UTC), last {days} days
          </caption>
          <thead>
            <tr>
              <th scope="col">
                <span className="sr-only">Day</span>
              </th>
              {Array.from({ length: 24 }, (_, h) => (
                <th scope="col" key={h}>
                  {h % 3 === 0 ? h : <span className="sr-only">{h}</span>}
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {DAYS.map((d, di) => (
              <tr key={d}>
                <th scope="row">{d}</th>
                {Array.from({ length: 24 }, (_, h) => {
                  const v = heat?.cells[di][h] ?? 0;
                  const share = heat && heat.max > 0 ? v / heat.max : 0;
                  return (
                    <td
                      key={h}
                      style={{ background: heatColour(share), color: heatText(share) }}
                      title={`${d} ${h}:00 UTC: ${formatValue(v, "count")}`}
                      data-day={di}
                      data-hour={h}
                      data-value={String(v)}
                    >
                      <span className="sr-only">{formatValue(v, "count")}</span>
                    </td>
                  );
                })}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}
