// The browser's transport for StreamClient: fetch-based SSE (@microsoft/fetch-event-source),
// because EventSource cannot send the Authorization header the stream routes read.
import { EventStreamContentType, fetchEventSource } from "@microsoft/fetch-event-source";
import { FatalStreamError, type Transport } from "./stream_client";

/** Statuses worth retrying: rate limit, the hub not connected yet, the API restarting. */
const RETRYABLE = new Set([408, 425, 429, 500, 502, 503, 504]);

export const fetchTransport: Transport = (url, headers, handlers, signal) =>
  fetchEventSource(url, {
    headers,
    signal,
    openWhenHidden: true, // a dashboard left in a background tab stays current
    async onopen(resp) {
      const type = resp.headers.get("content-type") ?? "";
      if (resp.ok && type.startsWith(EventStreamContentType)) {
        handlers.onOpen();
        return;
      }
      let detail = `HTTP ${resp.status}`;
      try {
        const body = (await resp.json()) as { detail?: string; title?: string };
        detail = body.detail ?? body.title ?? detail;
      } catch {
        // not problem+json: the status says enough
      }
      if (RETRYABLE.has(resp.status)) throw new Error(detail);
      throw new FatalStreamError(resp.status, detail);
    },
    onmessage(ev) {
      // the parser dispatches at every blank line, also after a comment-only block (the
      // opening comment, heartbeats): those carry nothing
      if (!ev.event && !ev.data && !ev.id) return;
      handlers.onMessage({ event: ev.event || "message", id: ev.id || undefined, data: ev.data });
    },
    onerror(err) {
      throw err; // StreamClient owns the retries (backoff, state, Last-Event-ID)
    },
  });
