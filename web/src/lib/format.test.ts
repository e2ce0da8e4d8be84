import { describe, expect, it } from "vitest";
import { changeTone, formatChange, formatValue, isoUtc } from "./format";

describe("formatValue", () => {
  it("formats by unit, and shows a dash for nothing", () => {
    expect(formatValue(1234.5, "currency")).toBe("1,234.50");
    expect(formatValue(2_500_000, "currency")).toBe("2.5M");
    expect(formatValue(42, "count")).toBe("42");
    expect(formatValue(0.1234, "ratio")).toBe("12.3%");
    expect(formatValue(0.0012, "ratio")).toBe("0.12%");
    expect(formatValue(null, "count")).toBe("—");
    expect(formatValue(Number.NaN, "count")).toBe("—");
  });
});

describe("formatChange", () => {
  it("signs the change, uses a real minus, and has no change without a previous period", () => {
    expect(formatChange(0.111)).toBe("+11.1%");
    expect(formatChange(-0.16)).toBe("\u221216.0%");
    expect(formatChange(0.0001)).toBe("0.0%");
    expect(formatChange(null)).toBe("—");
  });
  it("reads failures and refunds going up as bad news", () => {
    expect(changeTone("gmv", 0.2)).toBe("up");
    expect(changeTone("payment_failure_rate", 0.2)).toBe("down");
    expect(changeTone("refunds", -0.1)).toBe("up");
    expect(changeTone("orders", null)).toBe("flat");
  });
});

describe("isoUtc", () => {
  it("drops milliseconds", () => {
    expect(isoUtc(Date.UTC(2026, 11, 1, 10, 0, 0, 123))).toBe("2026-12-01T10:00:00Z");
  });
});
