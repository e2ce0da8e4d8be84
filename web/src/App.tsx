import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import ReactGridLayout, { type Layout, useContainerWidth } from "react-grid-layout";
import "react-grid-layout/css/styles.css";
import { AlertFeed } from "./components/AlertFeed";
import { ConnectionStatus } from "./components/ConnectionStatus";
import { Heatmap } from "./components/Heatmap";
import { KeyForm } from "./components/KeyForm";
import { KpiTiles } from "./components/KpiTiles";
import { TimeChart } from "./components/TimeChart";
import { TopSellers } from "./components/TopSellers";
import { useLive, useNow } from "./hooks";
import { Api, ApiError, type Params, withParams } from "./lib/api";
import type { ForecastPt } from "./lib/chart_data";
import { isoUtc } from "./lib/format";
import { forgetKey, type KeyEnv, saveKey, takeKey } from "./lib/key";
import {
  addChoices,
  COLS,
  fromGrid,
  type LayoutDoc,
  newWidget,
  stacked,
  toGrid,
  type Widget,
} from "./lib/layout";
import { type AlertChange, CHART_WINDOW, LiveData } from "./lib/live";
import { type AnomalyScore, type MetricWindow, parseSeries, scopeDims } from "./lib/series";
import { combineStates, isStale, STALE_GRACE_MS, windowMs } from "./lib/stale";
import { type ConnState, StreamClient } from "./lib/stream_client";
import { fetchTransport } from "./lib/sse_transport";

interface Me {
  id: string;
  role: string;
  tenant: string | null;
  seller: string | null;
  tenants: string[];
}

const browserEnv: KeyEnv = {
  get href() {
    return window.location.href;
  },
  storage: window.sessionStorage,
  replaceUrl: (url) => window.history.replaceState(null, "", url),
};

const UNITS: Record<string, string> = {
  gmv: "currency",
  refund_amount: "currency",
  order_value: "currency",
  conversion_rate: "ratio",
  payment_failure_rate: "ratio",
};
const HISTORY_MS = 60 * 60_000;
// Live metrics the query API has no measure for with the same definition (its `conversion`
// counts every page view, the flow's conversion_rate product pages only): live points only.
const LIVE_ONLY = new Set(["conversion_rate", "order_value"]);
const OPERATOR_ROLES = new Set(["admin", "operator"]);

export function App() {
  const [key, setKey] = useState<string | null>(() => takeKey(browserEnv));
  const [error, setError] = useState<string | null>(null);
  if (!key) {
    return (
      <KeyForm
        error={error}
        onKey={(k) => {
          saveKey(browserEnv, k);
          setError(null);
          setKey(k);
        }}
      />
    );
  }
  return (
    <Dashboard
      apiKey={key}
      onBadKey={(msg) => {
        forgetKey(browserEnv);
        setError(msg);
        setKey(null);
      }}
    />
  );
}

function Dashboard({ apiKey, onBadKey }: { apiKey: string; onBadKey(msg: string): void }) {
  const api = useMemo(() => new Api(apiKey), [apiKey]);
  const [me, setMe] = useState<Me | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  useEffect(() => {
    api
      .get<Me>("/v1/me")
      .then(setMe)
      .catch((e: unknown) => {
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) onBadKey(e.detail || e.title);
        else setProblem(e instanceof Error ? e.message : String(e));
      });
  }, [api, onBadKey]);
  const layout = useLayout(api); // asked at once, beside /v1/me: the first render waits for both
  if (!me) {
    return (
      <main className="loading" aria-busy="true">
        <p>{problem ? `The API does not answer: ${problem}` : "Loading…"}</p>
      </main>
    );
  }
  return <Operations api={api} me={me} layout={layout} onSignOut={() => onBadKey("signed out")} />;
}

function useStreams(api: Api, live: LiveData, params: Params, onReset: () => void) {
  type S = { state: ConnState; detail: string; since: number };
  const init: S = { state: "reconnecting", detail: "connecting", since: Date.now() };
  const [states, setStates] = useState<Record<string, S>>({ metrics: init, anomalies: init, alerts: init });
  const resetRef = useRef(onReset);
  resetRef.current = onReset;
  const paramKey = JSON.stringify(params);
  useEffect(() => {
    let pending = false;
    const bump = () => {
      if (pending) return;
      pending = true;
      setTimeout(() => {
        pending = false;
        live.changed();
      }, 150);
    };
    const make = (kind: string, extra: Params, handle: (event: string, data: unknown) => boolean) =>
      new StreamClient(withParams(`/v1/stream/${kind}`, { ...params, ...extra }), () => api.headers(), fetchTransport, {
        onSnapshot: (items) => {
          let any = false;
          for (const it of items) any = handle("snapshot", it) || any;
          if (any) bump();
        },
        onReset: () => {
          if (kind === "metrics") live.clearSeries();
          resetRef.current();
        },
        onUpdate: (event, data) => {
          if (handle(event, data)) bump();
        },
        // `since`: when the stream went live, or stopped being live (retries don't move it)
        onState: (state, detail) =>
          setStates((prev) => {
            const was = prev[kind];
            const since = (was.state === "live") === (state === "live") ? was.since : Date.now();
            return { ...prev, [kind]: { state, detail, since } };
          }),
      });
    const streams = [
      make("metrics", { window: CHART_WINDOW }, (_e, d) => live.applyWindow(d as MetricWindow)),
      make("anomalies", {}, (_e, d) => live.applyAnomaly(d as AnomalyScore)),
      make("alerts", {}, (_e, d) => {
        live.applyAlert(d as AlertChange);
        return true;
      }),
    ];
    for (const s of streams) s.start();
    return () => {
      for (const s of streams) s.stop();
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [api, live, paramKey]);
  return states;
}

function useLayout(api: Api) {
  const [items, setItems] = useState<LayoutDoc[]>([]);
  const [doc, setDoc] = useState<LayoutDoc | null>(null);
  const [error, setError] = useState<string | null>(null);
  const load = useCallback(async () => {
    try {
      const res = await api.get<{ items: LayoutDoc[]; current: string }>("/v1/layouts");
      setItems(res.items);
      setDoc(res.items.find((l) => l.id === res.current) ?? res.items[0] ?? null);
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  }, [api]);
  useEffect(() => {
    void load();
  }, [load]);
  const docRef = useRef<LayoutDoc | null>(null);
  useEffect(() => {
    docRef.current = doc;
  }, [doc]);
  const saving = useRef<Promise<void>>(Promise.resolve());
  const save = useCallback(
    (widgets: Widget[], shared?: boolean) => {
      if (!doc) return;
      const next = { ...doc, widgets, shared: shared ?? doc.shared };
      setDoc(next);
      // saves run one after another: a copy of a template is created once, then updated
      saving.current = saving.current.then(async () => {
        try {
          const body = { name: next.mine ? next.name : `My ${next.name}`, shared: next.mine ? next.shared : false, widgets };
          const current = docRef.current;
          const out =
            current && current.mine
              ? await api.put<LayoutDoc>(`/v1/layouts/${encodeURIComponent(current.id)}`, body)
              : await api.post<LayoutDoc>("/v1/layouts", body);
          docRef.current = out;
          // keep the widgets on screen (a later change may be on its way), take the saved identity
          // (and its sharing: a copy of a template, which every key sees, starts unshared)
          setDoc((d) =>
            d ? { ...d, id: out.id, name: out.name, owner: out.owner, shared: out.shared, mine: true, template: false } : out,
          );
          setItems((list) => [out, ...list.filter((l) => l.id !== out.id)]);
          setError(null);
        } catch (e) {
          setError(`layout not saved: ${e instanceof Error ? e.message : String(e)}`);
        }
      });
    },
    [api, doc],
  );
  const remove = useCallback(async () => {
    if (!doc?.mine) return;
    try {
      await api.delete(`/v1/layouts/${encodeURIComponent(doc.id)}`);
      await load();
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  }, [api, doc, load]);
  return { items, doc, setDoc, save, remove, error };
}

type LayoutState = ReturnType<typeof useLayout>;

function Operations({ api, me, layout, onSignOut }: { api: Api; me: Me; layout: LayoutState; onSignOut(): void }) {
  const admin = me.role === "admin";
  const [tenant, setTenant] = useState<string | null>(me.tenant);
  const scope = useMemo(
    () => ({ tenant: admin ? tenant : me.tenant, seller: me.seller, dims: scopeDims(me.seller) }),
    [admin, tenant, me],
  );
  // what the query and stream routes are asked: the tenant only for admins, the seller for sellers
  const params: Params = useMemo(
    () => ({ tenant: admin ? tenant : null, seller: me.seller }),
    [admin, tenant, me.seller],
  );
  const live = useMemo(() => new LiveData(scope), [scope]);
  useLive(live);
  const now = useNow(2000);
  const [reload, setReload] = useState(0);
  const states = useStreams(api, live, params, () => setReload((n) => n + 1));
  const overall = combineStates(Object.values(states));
  const widgets = layout.doc?.widgets ?? [];
  const chartMetrics = widgets.filter((w) => w.kind === "chart").map((w) => String(w.options?.metric ?? "gmv"));
  const chartKey = [...new Set(chartMetrics)].sort().join(",");
  const [forecasts, setForecasts] = useState<Record<string, ForecastPt[]>>({});

  useEffect(() => {
    // history behind the live edge: on start, on a scope change and after a stream reset
    // up to the end of the current minute: a later bucket holds no event yet, and the API would
    // answer it with a 0 that draws as a drop at the live edge
    const end = Math.ceil((Date.now() + 1) / 60_000) * 60_000;
    const range = { start: isoUtc(end - HISTORY_MS), end: isoUtc(end) };
    const metrics = chartKey ? chartKey.split(",") : [];
    // a request lost to an outage (the API restarting) is asked again once it is back;
    // a refusal (4xx) is not: it would be refused again
    let retry: ReturnType<typeof setTimeout> | null = null;
    let done = false;
    const failed = (what: string) => (e: unknown) => {
      console.warn(`${what}:`, e);
      const transient = !(e instanceof ApiError) || e.status === 0 || e.status === 429 || e.status >= 500;
      if (transient && !done && retry === null) retry = setTimeout(() => setReload((n) => n + 1), 3000);
    };
    for (const m of metrics) {
      if (!LIVE_ONLY.has(m))
        api
          .get<{ points: { t: string; value: number | null }[] }>("/v1/series", { metric: m, step: "1m", ...range, ...params })
          .then((r) => {
            live.applyHistory(m, r.points ?? []);
            live.changed();
          })
          .catch(failed(`history of ${m}`));
      api
        .get<{ items: AnomalyScore[] }>("/v1/anomalies", { metric: m, ...range, ...params, limit: 1000 })
        .then((r) => {
          for (const a of r.items ?? []) live.applyAnomaly(a);
          live.changed();
        })
        .catch(failed(`anomalies of ${m}`));
      api
        .get<{ items: (ForecastPt & { series: string })[] }>("/v1/forecasts", {
          metric: m,
          start: isoUtc(end - HISTORY_MS),
          end: isoUtc(end + HISTORY_MS),
          ...params,
        })
        .then((r) => {
          const mine = (r.items ?? []).filter((f) => parseSeries(f.series).dims === scope.dims);
          setForecasts((prev) => ({ ...prev, [m]: mine }));
        })
        .catch(failed(`forecasts of ${m}`));
    }
    api
      .get<AlertChange[]>("/v1/alerts", { limit: 100, tenant: params.tenant })
      .then((list) => {
        for (const a of list) live.applyAlert(a);
        live.changed();
      })
      .catch(failed("alerts"));
    return () => {
      done = true;
      if (retry !== null) clearTimeout(retry);
    };
  }, [api, live, chartKey, reload, params, scope.dims]);

  const metricsState = states.metrics;
  const staleFor = (lastAt: number | null, lostAt: number, window: number, streamLive: boolean) =>
    !streamLive && isStale(Math.max(lastAt ?? 0, lostAt), window + STALE_GRACE_MS, now);

  const { width, containerRef, mounted } = useContainerWidth();
  const phone = width > 0 && width < 720;
  const canEdit = !phone;
  const commit = (grid: Layout) => {
    const moved = fromGrid(widgets, grid);
    if (moved) layout.save(moved);
  };
  const add = (choice: string) => {
    if (!choice) return;
    layout.save([...widgets, newWidget(choice, widgets)]);
  };
  const removeWidget = (id: string) => layout.save(widgets.filter((w) => w.id !== id));
  const scopeText = `${scope.tenant ?? "?"} — ${me.seller ? `seller ${me.seller}` : "all sellers"}`;

  const body = (w: Widget) => {
    switch (w.kind) {
      case "kpis":
        return <KpiTiles api={api} scope={params} period={String(w.options?.period ?? "1h")} now={now} />;
      case "chart": {
        const m = String(w.options?.metric ?? "gmv");
        const buf = live.buffer(m);
        const streamLive = metricsState.state === "live";
        const stale = staleFor(live.lastAt.get(m) ?? null, metricsState.since, windowMs(CHART_WINDOW), streamLive);
        return (
          <TimeChart
            metric={m}
            unit={UNITS[m] ?? "count"}
            points={buf.points()}
            anomalies={live.anomalies.get(m) ?? []}
            forecast={forecasts[m] ?? []}
            stale={stale}
            version={live.version}
          />
        );
      }
      case "alerts": {
        const st = states.alerts;
        return (
          <AlertFeed
            api={api}
            alerts={live.alertList()}
            canAct={OPERATOR_ROLES.has(me.role)}
            stale={staleFor(live.alertsAt, st.since, 60_000, st.state === "live")}
            onChange={(a) => {
              live.applyAlert(a);
              live.changed();
            }}
          />
        );
      }
      case "top_sellers":
        return (
          <TopSellers
            api={api}
            scope={params}
            measure={String(w.options?.measure ?? "gmv")}
            limit={Number(w.options?.limit ?? 10)}
            now={now}
          />
        );
      case "heatmap":
        return <Heatmap api={api} scope={params} measure={String(w.options?.measure ?? "events")} days={Number(w.options?.days ?? 7)} />;
      default:
        return <p>Unknown widget {w.kind}</p>;
    }
  };
  const title = (w: Widget) =>
    w.kind === "chart"
      ? `${String(w.options?.metric ?? "gmv")} (${CHART_WINDOW})`
      : { kpis: "Key figures", alerts: "Alerts", top_sellers: "Top sellers", heatmap: "Activity by hour and day" }[w.kind];
  const frame = (w: Widget) => (
    <section className="widget" aria-labelledby={`wt-${w.id}`}>
      <header className="widget-head">
        <span className="widget-drag-handle" title="Drag to move" aria-hidden="true">
          ⠿
        </span>
        <h2 id={`wt-${w.id}`}>{title(w)}</h2>
        {canEdit ? (
          <button
            type="button"
            className="icon"
            data-testid="remove-widget"
            aria-label={`Remove ${title(w)}`}
            onClick={() => removeWidget(w.id)}
          >
            ×
          </button>
        ) : null}
      </header>
      {/* lists scroll: focusable, so a keyboard can scroll them too */}
      <div className="widget-body" tabIndex={w.kind === "chart" ? undefined : 0} aria-labelledby={`wt-${w.id}`}>
        {body(w)}
      </div>
    </section>
  );

  return (
    <div className="app">
      <a className="skip" href="#widgets">
        Skip to the dashboard
      </a>
      <header className="top">
        <h1>linkpulse</h1>
        <p className="scope" data-testid="scope-label">
          {scopeText}
        </p>
        {admin ? (
          <label className="field">
            <span>Tenant</span>
            <select data-testid="tenant-picker" value={tenant ?? ""} onChange={(e) => setTenant(e.target.value || null)}>
              {[...new Set([me.tenant, ...me.tenants].filter((t): t is string => !!t))].sort().map((t) => (
                <option key={t} value={t}>
                  {t}
                </option>
              ))}
            </select>
          </label>
        ) : null}
        <ConnectionStatus state={overall.state} detail={overall.detail} />
        <div className="toolbar">
          {layout.items.length > 1 ? (
            <label className="field">
              <span>Layout</span>
              <select
                data-testid="layout-picker"
                value={layout.doc?.id ?? ""}
                onChange={(e) => layout.setDoc(layout.items.find((l) => l.id === e.target.value) ?? null)}
              >
                {layout.items.map((l) => (
                  <option key={l.id} value={l.id}>
                    {l.name}
                    {l.template ? " (template)" : l.mine ? "" : ` (shared by ${l.owner})`}
                  </option>
                ))}
              </select>
            </label>
          ) : null}
          {canEdit ? (
            <label className="field">
              <span className="sr-only">Add widget</span>
              <select data-testid="add-widget" value="" onChange={(e) => add(e.target.value)}>
                <option value="">Add widget…</option>
                {addChoices(widgets).map((c) => (
                  <option key={c.value} value={c.value}>
                    {c.label}
                  </option>
                ))}
              </select>
            </label>
          ) : null}
          {layout.doc?.mine ? (
            <label className="field check">
              <input
                type="checkbox"
                data-testid="share-layout"
                checked={layout.doc.shared}
                onChange={(e) => layout.save(widgets, e.target.checked)}
              />
              <span>Share with {scope.tenant}</span>
            </label>
          ) : null}
          {layout.doc?.mine ? (
            <button type="button" data-testid="delete-layout" onClick={() => void layout.remove()}>
              Delete layout
            </button>
          ) : null}
          <button type="button" onClick={onSignOut}>
            Sign out
          </button>
        </div>
      </header>
      {layout.error ? (
        <p className="error" role="alert">
          {layout.error}
        </p>
      ) : null}
      <main id="widgets" ref={containerRef} className="grid-host" tabIndex={-1}>
        {mounted && phone ? (
          <div className="stack">
            {stacked(widgets).map((w) => (
              <div key={w.id} data-testid={`widget-${w.id}`}>
                {frame(w)}
              </div>
            ))}
          </div>
        ) : null}
        {mounted && !phone ? (
          <ReactGridLayout
            width={width}
            layout={toGrid(widgets)}
            gridConfig={{ cols: COLS, rowHeight: 30, margin: [12, 12] }}
            dragConfig={{ enabled: true, handle: ".widget-drag-handle" }}
            resizeConfig={{ enabled: true, handles: ["se"] }}
            onDragStop={commit}
            onResizeStop={commit}
            // the grid re-packs widgets after an add or a remove: an own layout is saved as
            // shown, so a reload shows the same; a template is saved only when the user moves
            onLayoutChange={(grid) => {
              if (layout.doc?.mine) commit(grid);
            }}
          >
            {/* the grid item holds the widget, its drag handle and its resize handle */}
            {widgets.map((w) => (
              <div key={w.id} data-testid={`widget-${w.id}`}>
                {frame(w)}
              </div>
            ))}
          </ReactGridLayout>
        ) : null}
      </main>
    </div>
  );
}
