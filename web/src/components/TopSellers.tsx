import type { Api, Params } from "../lib/api";
import { formatValue, isoUtc } from "../lib/format";
import { isStale } from "../lib/stale";
import { usePoll } from "../hooks";

const REFRESH_MS = 30_000;
const WINDOW_MS = 3_600_000;

export function TopSellers({
  api,
  scope,
  measure,
  limit,
  now,
}: {
  api: Api;
  scope: Params;
  measure: string;
  limit: number;
  now: number;
}) {
  const res = usePoll(
    () => {
      const end = Math.ceil(Date.now() / 60_000) * 60_000;
      return api.get<{ rows: { key: string; value: number }[] }>("/v1/top", {
        measure,
        dimension: "seller_id",
        limit,
        start: isoUtc(end - WINDOW_MS),
        end: isoUtc(end),
        ...scope,
      });
    },
    REFRESH_MS,
    [api, measure, limit, JSON.stringify(scope)],
  );
  const stale = isStale(res.at, REFRESH_MS * 2, now);
  const rows = res.data?.rows ?? [];
  const max = rows.reduce((m, r) => Math.max(m, r.value), 0);
  return (
    <div className={`top${stale ? " stale" : ""}`} data-testid="top-sellers" data-stale={stale ? "true" : "false"}>
      {res.error && !res.data ? <p className="error">{res.error}</p> : null}
      <table>
        <caption className="sr-only">Top sellers by {measure}, last hour</caption>
        <thead>
          <tr>
            <th scope="col">Seller</th>
            <th scope="col">{measure}, last hour</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((r) => (
            <tr key={r.key} data-testid="top-row" data-key={r.key} data-value={String(r.value)}>
              <th scope="row">{r.key}</th>
              <td>
                <span className="bar" style={{ width: `${max > 0 ? (100 * r.value) / max : 0}%` }} aria-hidden="true" />
                <span className="num">{formatValue(r.value, measure === "gmv" ? "currency" : "count")}</span>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
