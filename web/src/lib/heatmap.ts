// The heatmap of activity by day of week x hour of day, from POST /v1/query's columns and rows.

export interface QueryResult {
  columns: { name: string; type?: string }[];
  rows: unknown[][];
}

export interface Heat {
  cells: number[][]; // [day 0..6][hour 0..23]
  max: number;
  total: number;
}

export const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/** day_of_week follows PostgreSQL's EXTRACT(dow): 0 is Sunday. */
export function heatGrid(res: QueryResult, measure: string): Heat {
  const col = (name: string) => res.columns.findIndex((c) => c.name === name);
  const d = col("day_of_week");
  const h = col("hour_of_day");
  const m = col(measure);
  if (d < 0 || h < 0 || m < 0) throw new Error(`the query result lacks day_of_week, hour_of_day or ${measure}`);
  const cells = Array.from({ length: 7 }, () => new Array<number>(24).fill(0));
  let max = 0;
  let total = 0;
  for (const row of res.rows) {
    const day = Number(row[d]);
    const hour = Number(row[h]);
    const v = Number(row[m] ?? 0);
    if (!(day >= 0 && day < 7 && hour >= 0 && hour < 24) || !Number.isFinite(v)) continue;
    cells[day][hour] += v;
    max = Math.max(max, cells[day][hour]);
    total += v;
  }
  return { cells, max, total };
}
