import type { ConnState } from "../lib/stream_client";

const TEXT: Record<ConnState, string> = {
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

export function ConnectionStatus({ state, detail }: { state: ConnState; detail: string }) {
  return (
    <div className="conn" data-testid="connection-status" data-state={state} role="status" aria-live="polite" title={detail}>
      <span className={`conn-dot conn-${state}`} aria-hidden="true" />
      <span>{TEXT[state]}</span>
      {state !== "live" && detail ? <span className="conn-detail"> ({detail})</span> : null}
    </div>
  );
}
