// One SSE stream that never goes quietly stale: reconnects with backoff, resumes with
// Last-Event-ID, and tells the page what it is doing (live, reconnecting, offline).
//
// Pure logic: the transport (the network) and the timers are injected, so the resume rules are
// tested without a browser or a server (stream_client.test.ts). docs/streams.md is the wire.

export type ConnState = "live" | "reconnecting" | "offline";

/** One SSE event as the transport parsed it. */
export interface SseMessage {
  event: string;
  id?: string;
  data: string;
}

export interface TransportHandlers {
  onOpen(): void;
  onMessage(m: SseMessage): void;
}

/** Opens one connection; resolves when the server ends it, rejects when it fails. */
export type Transport = (
  url: string,
  headers: Record<string, string>,
  handlers: TransportHandlers,
  signal: AbortSignal,
) => Promise<void>;

/** A refusal that retrying cannot fix (401, 403, 400): the stream goes offline. */
export class FatalStreamError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "FatalStreamError";
  }
}

export interface Backoff {
  initialMs: number;
  maxMs: number;
  factor: number;
  jitter: number; // 0..1: the share of the delay that is random
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 10_000, factor: 2, jitter: 0.3 };

/** The wait before reconnect attempt ``attempt`` (0 first): exponential, capped, jittered. */
export function backoffDelay(attempt: number, b: Backoff, random: () => number): number {
  const base = Math.min(b.maxMs, b.initialMs * b.factor ** Math.max(0, attempt));
  return Math.round(base * (1 - b.jitter) + base * b.jitter * random());
}

export interface StreamCallbacks {
  /** The latest value of every series in scope (first connect, or after a reset). */
  onSnapshot?(items: unknown[], id: string | undefined): void;
  /** The server lost our position: what we hold may have a gap, reload it. */
  onReset?(reason: unknown): void;
  /** A live update (``metric``, ``anomaly``, ``alert``). */
  onUpdate(event: string, data: unknown, id: string | undefined): void;
  onState?(state: ConnState, detail: string): void;
}

export interface StreamOptions {
  backoff?: Backoff;
  random?: () => number;
  setTimer?: (fn: () => void, ms: number) => unknown;
  clearTimer?: (handle: unknown) => void;
  /** Failed attempts in a row after which the page says offline (it keeps trying). */
  offlineAfter?: number;
}

function parse(data: string): unknown {
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

export class StreamClient {
  lastEventId: string | null = null;
  state: ConnState = "reconnecting";
  detail = "connecting";
  failures = 0;
  private stopped = true;
  private controller: AbortController | null = null;
  private timer: unknown = null;
  private readonly backoff: Backoff;
  private readonly random: () => number;
  private readonly setTimer: (fn: () => void, ms: number) => unknown;
  private readonly clearTimer: (handle: unknown) => void;
  private readonly offlineAfter: number;

  constructor(
    private readonly url: string,
    private readonly headers: () => Record<string, string>,
    private readonly transport: Transport,
    private readonly cb: StreamCallbacks,
    opts: StreamOptions = {},
  ) {
    this.backoff = opts.backoff ?? DEFAULT_BACKOFF;
    this.random = opts.random ?? Math.random;
    this.setTimer = opts.setTimer ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = opts.clearTimer ?? ((h) => clearTimeout(h as ReturnType<typeof setTimeout>));
    this.offlineAfter = opts.offlineAfter ?? 6;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.controller?.abort();
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
  }

  /** The headers of the next attempt: credentials, and where to resume from. */
  requestHeaders(): Record<string, string> {
    const h: Record<string, string> = { ...this.headers() };
    if (this.lastEventId !== null) h["last-event-id"] = this.lastEventId;
    return h;
  }

  private setState(state: ConnState, detail: string): void {
    if (state === this.state && detail === this.detail) return;
    this.state = state;
    this.detail = detail;
    this.cb.onState?.(state, detail);
  }

  private async connect(): Promise<void> {
    this.timer = null;
    const controller = new AbortController();
    this.controller = controller;
    let fatal: FatalStreamError | null = null;
    let why = "the server closed the stream";
    try {
      await this.transport(
        this.url,
        this.requestHeaders(),
        {
          onOpen: () => {
            this.failures = 0;
            this.setState("live", "live");
          },
          onMessage: (m) => {
            let end: FatalStreamError | null = null;
            try {
              end = this.handle(m);
            } catch (e) {
              // one event the page cannot use is skipped (and said), not a reason to reconnect
              console.warn(`stream ${this.url}: event ${m.event} ${m.id ?? ""} skipped:`, e);
            }
            if (end !== null) {
              fatal = end;
              controller.abort();
            }
          },
        },
        controller.signal,
      );
    } catch (e) {
      if (e instanceof FatalStreamError) fatal = e;
      else why = e instanceof Error ? e.message : String(e);
      console.warn(`stream ${this.url}:`, e); // for the browser's console: why it dropped
    }
    if (this.stopped || controller !== this.controller) return;
    if (fatal !== null) {
      this.setState("offline", (fatal as FatalStreamError).message);
      return;
    }
    this.scheduleRetry(why);
  }

  private scheduleRetry(why: string): void {
    this.failures += 1;
    const offline = this.failures >= this.offlineAfter;
    this.setState(offline ? "offline" : "reconnecting", why);
    const delay = backoffDelay(this.failures - 1, this.backoff, this.random);
    this.timer = this.setTimer(() => {
      if (!this.stopped) void this.connect();
    }, delay);
  }

  /** Apply one event; a non-null result ends the stream for good. */
  handle(m: SseMessage): FatalStreamError | null {
    // the snapshot's id is the position it covers, so every id is a resume point
    if (m.id) this.lastEventId = m.id;
    switch (m.event) {
      case "snapshot": {
        const doc = parse(m.data) as { items?: unknown[] } | null;
        this.cb.onSnapshot?.(Array.isArray(doc?.items) ? doc.items : [], m.id);
        return null;
      }
      case "reset":
        this.cb.onReset?.(parse(m.data));
        return null;
      case "overflow":
        return null; // the server ends the stream; we resume from lastEventId
      case "revoked":
        return new FatalStreamError(401, "the key was revoked or has expired");
      default:
        this.cb.onUpdate(m.event, parse(m.data), m.id);
        return null;
    }
  }
}
