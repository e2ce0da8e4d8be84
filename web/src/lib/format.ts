// How numbers are shown: units from the catalog (currency, count, ratio, users).

export type Unit = "currency" | "count" | "ratio" | "users" | string;

const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });
const whole = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
const money = new Intl.NumberFormat("en", { maximumFractionDigits: 2, minimumFractionDigits: 2 });

/** A value for a tile or a tooltip; "—" when there is none. */
export function formatValue(value: number | null | undefined, unit: Unit): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  if (unit === "ratio") return `${(value * 100).toFixed(value < 0.01 && value > 0 ? 2 : 1)}%`;
  if (unit === "currency") return Math.abs(value) >= 100_000 ? compact.format(value) : money.format(value);
  return Math.abs(value) >= 100_000 ? compact.format(value) : whole.format(value);
}

/** A relative change (0.111 -> "+11.1%"); "—" when there is no previous period to compare. */
export function formatChange(change: number | null | undefined): string {
  if (change === null || change === undefined || !Number.isFinite(change)) return "—";
  const pct = change * 100;
  if (Math.abs(pct) < 0.05) return "0.0%";
  // U+2212, the minus sign, reads better than a hyphen next to digits
  return `${pct > 0 ? "+" : "\u2212"}${Math.abs(pct).toFixed(1)}%`;
}

/** Whether a change is good news for this measure (failures and refunds up are bad). */
export function changeTone(name: string, change: number | null | undefined): "up" | "down" | "flat" {
  if (change === null || change === undefined || !Number.isFinite(change) || Math.abs(change) < 0.0005)
    return "flat";
  const badWhenUp = name === "payment_failure_rate" || name === "refunds";
  return change > 0 !== badWhenUp ? "up" : "down";
}

/** ISO 8601 in UTC without milliseconds ("2026-12-01T10:00:00Z"). */
export function isoUtc(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** A short local time for axes and lists ("10:04"). */
export function shortTime(ms: number): string {
  return new Date(ms).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
}
