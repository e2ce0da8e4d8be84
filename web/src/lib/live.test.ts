import { describe, expect, it } from "vitest";
import { heatGrid } from "./heatmap";
import { addChoices, fromGrid, newWidget, stacked, toGrid, type Widget } from "./layout";
import { LiveData } from "./live";
import { chartData, moveRange } from "./chart_data";
import { takeKey } from "./key";
import { scopeDims, SeriesBuffer } from "./series";

const win = (metric: string, minute: number, value: number, dims = "", window = "1m", tenant = "acme") => ({
  metric,
  tenant,
  dims_key: dims,
  window,
  window_start: new Date(Date.UTC(2026, 11, 1, 10, minute)).toISOString(),
  window_end: new Date(Date.UTC(2026, 11, 1, 10, minute + 1)).toISOString(),
  value,
});

describe("SeriesBuffer", () => {
  it("keeps points sorted, replaces a republished window, and drops the oldest past its size", () => {
    const b = new SeriesBuffer(3);
    b.upsert(20, 2);
    b.upsert(10, 1);
    b.upsert(20, 5); // a revision
    b.upsert(30, 3);
    b.upsert(40, 4);
    expect(b.points()).toEqual([
      { t: 20, v: 5 },
      { t: 30, v: 3 },
      { t: 40, v: 4 },
    ]);
    expect(b.between(25, 40)).toEqual([{ t: 30, v: 3 }]);
  });
});

describe("LiveData", () => {
  it("keeps only the scope's series: tenant-wide for a tenant key, its own for a seller", () => {
    const tenant = new LiveData({ tenant: "acme", seller: null, dims: scopeDims(null) }, () => 5);
    expect(tenant.applyWindow(win("gmv", 0, 10))).toBe(true);
    expect(tenant.applyWindow(win("gmv", 0, 3, "seller_id=s1"))).toBe(false);
    expect(tenant.applyWindow(win("gmv", 0, 3, "", "5m/10s"))).toBe(false);
    expect(tenant.applyWindow(win("gmv", 0, 3, "", "1m", "beta"))).toBe(false);
    const seller = new LiveData({ tenant: "acme", seller: "s1", dims: scopeDims("s1") });
    expect(seller.applyWindow(win("gmv", 0, 10))).toBe(false);
    expect(seller.applyWindow(win("gmv", 0, 3, "seller_id=s1"))).toBe(true);
    expect(tenant.buffer("gmv").points()).toEqual([{ t: Date.UTC(2026, 11, 1, 10, 0), v: 10 }]);
    expect(tenant.lastAt.get("gmv")).toBe(5);
  });

  it("history fills behind the stream without overwriting newer live values; a reset clears", () => {
    const d = new LiveData({ tenant: null, seller: null, dims: "" });
    d.applyWindow(win("orders", 2, 7));
    d.applyHistory("orders", [
      { t: new Date(Date.UTC(2026, 11, 1, 10, 1)).toISOString(), value: 4 },
      { t: new Date(Date.UTC(2026, 11, 1, 10, 2)).toISOString(), value: 6 },
    ]);
    expect(d.buffer("orders").points().map((p) => p.v)).toEqual([4, 7]);
    d.clearSeries();
    expect(d.buffer("orders").length).toBe(0);
    expect(d.lastAt.size).toBe(0);
  });

  it("keeps the newest change of each alert, firing first", () => {
    const d = new LiveData({ tenant: "acme", seller: null, dims: "" });
    const a = (id: string, state: string, minute: number) => ({
      alert_id: id,
      rule: "r",
      tenant: "acme",
      series: "s",
      state,
      at: new Date(Date.UTC(2026, 11, 1, 10, minute)).toISOString(),
      severity: "warning",
      labels: {},
      summary: "",
      explanation: "",
      value: null,
    });
    d.applyAlert(a("x", "firing", 1));
    d.applyAlert(a("x", "acknowledged", 3));
    d.applyAlert(a("x", "firing", 2)); // late and older: ignored
    d.applyAlert(a("y", "firing", 0));
    d.applyAlert({ ...a("z", "firing", 5), tenant: "beta" });
    expect(d.alertList().map((x) => [x.alert_id, x.state])).toEqual([
      ["y", "firing"],
      ["x", "acknowledged"],
    ]);
  });
});

describe("chartData", () => {
  it("aligns the series, the expected band and the forecast, and marks scores >= 0.99", () => {
    const t0 = Date.UTC(2026, 11, 1, 10);
    const out = chartData(
      [
        { t: t0, v: 1 },
        { t: t0 + 60_000, v: 9 },
      ],
      [
        { series: "acme|gmv||1m", time: new Date(t0).toISOString(), score: 0.2, value: 1, expected: 1, lower: 0, upper: 2, explanation: "" },
        { series: "acme|gmv||1m", time: new Date(t0 + 60_000).toISOString(), score: 0.999, value: 9, expected: 1, lower: 0, upper: 2, explanation: "9 is 8 sigmas above" },
      ],
      [{ time: new Date(t0 + 120_000).toISOString(), value: 1, lower: 0.5, upper: 1.5 }],
    );
    expect(out.aligned[0]).toEqual([t0 / 1000, t0 / 1000 + 60, t0 / 1000 + 120]);
    expect(out.aligned[1]).toEqual([1, 9, null]);
    expect(out.aligned[2]).toEqual([0, 0, null]);
    expect(out.aligned[6]).toEqual([null, null, 1.5]);
    expect(out.marks).toEqual([{ t: t0 / 1000 + 60, v: 9, score: 0.999, text: "9 is 8 sigmas above (score 99.9%)" }]);
  });
  it("zooms and pans a range", () => {
    expect(moveRange(0, 100, 0.5, 0)).toEqual([25, 75]);
    expect(moveRange(0, 100, 1, 0.25)).toEqual([25, 125]);
  });
});

describe("layouts", () => {
  const ws: Widget[] = [
    { id: "kpis", kind: "kpis", x: 0, y: 0, w: 12, h: 4 },
    { id: "chart-gmv", kind: "chart", x: 6, y: 4, w: 6, h: 9, options: { metric: "gmv" } },
  ];
  it("gives the grid the server's size limits", () => {
    expect(toGrid(ws)[1]).toEqual({ i: "chart-gmv", x: 6, y: 4, w: 6, h: 9, minW: 3, minH: 5, maxH: 40 });
  });
  it("reads moves off the grid, and nothing when nothing moved", () => {
    expect(fromGrid(ws, toGrid(ws))).toBeNull();
    const moved = fromGrid(ws, [{ i: "chart-gmv", x: 0, y: 4, w: 12, h: 10 }]);
    expect(moved?.[1]).toMatchObject({ x: 0, w: 12, h: 10, options: { metric: "gmv" } });
  });
  it("adds a widget below the others and offers only what is not there", () => {
    expect(newWidget("chart:orders", ws)).toEqual({ id: "chart-orders", kind: "chart", x: 0, y: 13, w: 6, h: 9, options: { metric: "orders" } });
    const offered = addChoices(ws).map((c) => c.value);
    expect(offered).toContain("chart:orders");
    expect(offered).not.toContain("chart:gmv");
    expect(offered).not.toContain("kpis");
    expect(stacked([ws[1], ws[0]]).map((w) => w.id)).toEqual(["kpis", "chart-gmv"]);
  });
});

describe("takeKey", () => {
  it("takes ?key= once, stores it for the tab, and cleans the address bar", () => {
    const store = new Map<string, string>();
    const storage = {
      getItem: (k: string) => store.get(k) ?? null,
      setItem: (k: string, v: string) => void store.set(k, v),
      removeItem: (k: string) => void store.delete(k),
    };
    let url = "";
    const env = { href: "http://h/?key=lp_abc&x=1#top", storage, replaceUrl: (u: string) => (url = u) };
    expect(takeKey(env)).toBe("lp_abc");
    expect(url).toBe("/?x=1#top");
    expect(takeKey({ ...env, href: "http://h/" })).toBe("lp_abc"); // a reload keeps it
    const bare = { href: "http://h/?key=lp_1", storage, replaceUrl: (u: string) => (url = u) };
    takeKey(bare);
    expect(url).toBe("/");
  });
});

describe("heatGrid", () => {
  it("fills day x hour from the query's columns, in any column order", () => {
    const h = heatGrid(
      {
        columns: [{ name: "hour_of_day" }, { name: "events" }, { name: "day_of_week" }],
        rows: [
          [13, 420, 0],
          [13, 80, 0],
          [2, 5, 6],
          [99, 1, 1],
        ],
      },
      "events",
    );
    expect(h.cells[0][13]).toBe(500);
    expect(h.cells[6][2]).toBe(5);
    expect(h.max).toBe(500);
    expect(h.total).toBe(505);
    expect(() => heatGrid({ columns: [], rows: [] }, "events")).toThrow(/lacks/);
  });
});
