import { useState } from "react";
import type { Api } from "../lib/api";
import { shortTime } from "../lib/format";
import type { AlertChange } from "../lib/live";

/** Matchers silencing exactly this alert: every label it carries (Alertmanager syntax). */
export function silenceMatchers(labels: Record<string, string>): string[] {
  return Object.entries(labels)
    .filter(([k]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
    .map(([k, v]) => `${k}="${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`);
}

export function AlertFeed({
  api,
  alerts,
  canAct,
  stale,
  onChange,
}: {
  api: Api;
  alerts: AlertChange[];
  canAct: boolean;
  stale: boolean;
  onChange(a: AlertChange): void;
}) {
  const [busy, setBusy] = useState<string | null>(null);
  const [message, setMessage] = useState<string | null>(null);
  const act = async (a: AlertChange, what: "ack" | "silence") => {
    setBusy(a.alert_id);
    setMessage(null);
    try {
      if (what === "ack") {
        const out = await api.post<AlertChange>(`/v1/alerts/${encodeURIComponent(a.alert_id)}/ack`, {
          comment: "acknowledged from the dashboard",
        });
        onChange(out);
        setMessage(`Acknowledged ${a.rule}`);
      } else {
        await api.post("/v1/silences", {
          matchers: silenceMatchers(a.labels),
          duration: "1h",
          comment: `silenced from the dashboard (${a.rule})`,
        });
        setMessage(`Silenced ${a.rule} for 1 hour`);
      }
    } catch (e) {
      setMessage(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(null);
    }
  };
  return (
    <div className={`alert-feed${stale ? " stale" : ""}`} data-testid="alert-feed" data-stale={stale ? "true" : "false"}>
      {message ? (
        <p className="feed-message" role="status">
          {message}
        </p>
      ) : null}
      {alerts.length === 0 ? <p className="empty">No alerts.</p> : null}
      <ul>
        {alerts.map((a) => (
          <li
            key={a.alert_id}
            className={`alert-item state-${a.state} sev-${a.severity}`}
            data-testid="alert-item"
            data-alert-id={a.alert_id}
            data-state={a.state}
          >
            <div className="alert-head">
              <span className={`badge badge-${a.state}`}>{a.state}</span>
              <span className="badge">{a.severity}</span>
              <strong>{a.summary || a.rule}</strong>
              <time dateTime={a.at}>{shortTime(Date.parse(a.at))}</time>
            </div>
            {a.explanation ? <p className="alert-why">{a.explanation}</p> : null}
            <p className="alert-series">{a.series}</p>
            {canAct && (a.state === "firing" || a.state === "acknowledged") ? (
              <div className="alert-actions">
                {a.state === "firing" ? (
                  <button type="button" data-testid="ack-button" disabled={busy === a.alert_id} onClick={() => act(a, "ack")}>
                    Acknowledge
                  </button>
                ) : null}
                <button
                  type="button"
                  data-testid="silence-button"
                  disabled={busy === a.alert_id}
                  onClick={() => act(a, "silence")}
                >
                  Silence 1 h
                </button>
              </div>
            ) : null}
          </li>
        ))}
      </ul>
    </div>
  );
}
