// Staleness: a tile or chart whose newest data is older than its window is shown greyed out,
// never as live.

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** The length of a window spec: "1m", "5m/10s" (a sliding window's size), "1h", "24h", "7d". */
export function windowMs(spec: string): number {
  const size = spec.split("/")[0] ?? "";
  const m = /^(\d+)([smhd])$/.exec(size.trim());
  if (!m) throw new Error(`not a window: ${JSON.stringify(spec)} (expected like 1m, 5m/10s, 1h)`);
  return Number(m[1]) * (UNIT_MS[m[2]] ?? 0);
}

/** Whether data last confirmed at ``lastAt`` (ms epoch, null: never) is stale at ``now``. */
export function isStale(lastAt: number | null, windowLength: number, now: number): boolean {
  return lastAt === null || now - lastAt > windowLength;
}

/** Slack past a window before greying out: per-seller series are published every 10 s. */
export const STALE_GRACE_MS = 10_000;

/** The page's connection: offline if a stream is, reconnecting if one is, else live. */
export function combineStates<T extends { state: "live" | "reconnecting" | "offline"; detail: string }>(
  states: T[],
): { state: T["state"]; detail: string } {
  for (const want of ["offline", "reconnecting"] as const) {
    const s = states.find((x) => x.state === want);
    if (s) return { state: want, detail: s.detail };
  }
  return { state: "live", detail: "live" };
}
