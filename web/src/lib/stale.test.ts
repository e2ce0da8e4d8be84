import { describe, expect, it } from "vitest";
import { combineStates, isStale, windowMs } from "./stale";

describe("windowMs", () => {
  it("reads tumbling and sliding window specs and periods", () => {
    expect(windowMs("1m")).toBe(60_000);
    expect(windowMs("5m/10s")).toBe(300_000);
    expect(windowMs("1h")).toBe(3_600_000);
    expect(windowMs("7d")).toBe(604_800_000);
    expect(() => windowMs("5 minutes")).toThrow(/not a window/);
  });
});

describe("isStale", () => {
  it("is stale when never confirmed or older than its window, not at the edge", () => {
    const now = 1_000_000;
    expect(isStale(null, 60_000, now)).toBe(true);
    expect(isStale(now - 60_000, 60_000, now)).toBe(false);
    expect(isStale(now - 60_001, 60_000, now)).toBe(true);
    expect(isStale(now, 60_000, now)).toBe(false);
  });
});

describe("combineStates", () => {
  it("offline beats reconnecting beats live", () => {
    const live = { state: "live" as const, detail: "live" };
    const rec = { state: "reconnecting" as const, detail: "refused" };
    const off = { state: "offline" as const, detail: "revoked" };
    expect(combineStates([live, live])).toEqual({ state: "live", detail: "live" });
    expect(combineStates([live, rec])).toEqual({ state: "reconnecting", detail: "refused" });
    expect(combineStates([rec, off, live])).toEqual({ state: "offline", detail: "revoked" });
  });
});
