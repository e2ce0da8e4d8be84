import { describe, expect, it } from "vitest";
import {
  backoffDelay,
  DEFAULT_BACKOFF,
  FatalStreamError,
  type SseMessage,
  StreamClient,
  type Transport,
  type TransportHandlers,
} from "./stream_client";

/** A scripted server: each connection attempt is handed to the test to drive. */
class FakeServer {
  attempts: { headers: Record<string, string>; h: TransportHandlers; end(e?: Error): void }[] = [];
  transport: Transport = (_url, headers, h, signal) =>
    new Promise<void>((resolve, reject) => {
      const end = (e?: Error) => (e ? reject(e) : resolve());
      signal.addEventListener("abort", () => resolve());
      this.attempts.push({ headers, h, end });
    });
  get last() {
    return this.attempts[this.attempts.length - 1];
  }
}

class FakeTimers {
  queue: { fn: () => void; ms: number }[] = [];
  set = (fn: () => void, ms: number) => {
    this.queue.push({ fn, ms });
    return this.queue.length;
  };
  clear = () => undefined;
  fire() {
    const next = this.queue.shift();
    if (!next) throw new Error("no timer pending");
    next.fn();
    return next.ms;
  }
}

const tick = () => new Promise((r) => setTimeout(r, 0));

function setup() {
  const server = new FakeServer();
  const timers = new FakeTimers();
  const seen: { kind: string; data: unknown }[] = [];
  const states: string[] = [];
  const client = new StreamClient(
    "/v1/stream/metrics",
    () => ({ Authorization: "Bearer k" }),
    server.transport,
    {
      onSnapshot: (items) => seen.push({ kind: "snapshot", data: items }),
      onReset: (r) => seen.push({ kind: "reset", data: r }),
      onUpdate: (event, data) => seen.push({ kind: event, data }),
      onState: (s) => states.push(s),
    },
    { setTimer: timers.set, clearTimer: timers.clear, random: () => 0.5, offlineAfter: 3 },
  );
  return { server, timers, seen, states, client };
}

const msg = (event: string, id: string | undefined, data: unknown): SseMessage => ({
  event,
  id,
  data: JSON.stringify(data),
});

describe("StreamClient", () => {
  it("connects without Last-Event-ID, then resumes from the last id it processed", async () => {
    const { server, timers, seen, states, client } = setup();
    client.start();
    expect(server.last.headers).toEqual({ Authorization: "Bearer k" });
    server.last.h.onOpen();
    server.last.h.onMessage(msg("snapshot", "metrics-10", { position: "metrics-10", items: [{ v: 1 }] }));
    server.last.h.onMessage(msg("metric", "metrics-11", { v: 2 }));
    server.last.h.onMessage(msg("metric", "metrics-12", { v: 3 }));
    expect(states).toEqual(["live"]);
    server.last.end(new Error("network error")); // the API was killed
    await tick();
    expect(client.state).toBe("reconnecting");
    timers.fire();
    expect(server.attempts).toHaveLength(2);
    expect(server.last.headers["last-event-id"]).toBe("metrics-12");
    server.last.h.onOpen();
    server.last.h.onMessage(msg("metric", "metrics-13", { v: 4 })); // replayed, no snapshot
    expect(seen.map((s) => s.kind)).toEqual(["snapshot", "metric", "metric", "metric"]);
    expect(states).toEqual(["live", "reconnecting", "live"]);
    client.stop();
  });

  it("a snapshot's id is a resume point too", async () => {
    const { server, timers, client } = setup();
    client.start();
    server.last.h.onOpen();
    server.last.h.onMessage(msg("snapshot", "metrics-41", { items: [] }));
    server.last.end(); // the server closed the stream (shutdown)
    await tick();
    timers.fire();
    expect(server.last.headers["last-event-id"]).toBe("metrics-41");
    client.stop();
  });

  it("hands a reset on, then the snapshot that follows it", async () => {
    const { server, seen, client } = setup();
    client.lastEventId = "metrics-3";
    client.start();
    server.last.h.onOpen();
    server.last.h.onMessage(msg("reset", undefined, { reason: "position no longer retained" }));
    server.last.h.onMessage(msg("snapshot", "metrics-900", { items: [{ a: 1 }, { a: 2 }] }));
    expect(seen).toEqual([
      { kind: "reset", data: { reason: "position no longer retained" } },
      { kind: "snapshot", data: [{ a: 1 }, { a: 2 }] },
    ]);
    expect(client.lastEventId).toBe("metrics-900");
    client.stop();
  });

  it("backs off exponentially while the API is down, says offline after a while, and recovers", async () => {
    const { server, timers, states, client } = setup();
    client.start();
    const waits: number[] = [];
    for (let i = 0; i < 5; i++) {
      server.last.end(new Error("connection refused"));
      await tick();
      waits.push(timers.fire());
    }
    expect(waits).toEqual([425, 850, 1700, 3400, 6800]); // 500 * 2^n * 0.85 (jitter 0.3, random 0.5)
    expect(client.state).toBe("offline"); // after 3 failures in a row it says so, and keeps trying
    server.last.h.onOpen();
    expect(client.state).toBe("live");
    expect(client.failures).toBe(0);
    expect(states.filter((s, i) => s !== states[i - 1])).toEqual(["reconnecting", "offline", "live"]);
    client.stop();
  });

  it("an overflow reconnects from the last id; a revoked key or a 401 stops for good", async () => {
    const { server, timers, client } = setup();
    client.start();
    server.last.h.onOpen();
    server.last.h.onMessage(msg("metric", "metrics-5", {}));
    server.last.h.onMessage(msg("overflow", undefined, { detail: "too slow" }));
    server.last.end();
    await tick();
    timers.fire();
    expect(server.last.headers["last-event-id"]).toBe("metrics-5");
    server.last.h.onOpen();
    server.last.h.onMessage(msg("revoked", undefined, {}));
    await tick();
    expect(client.state).toBe("offline");
    expect(timers.queue).toHaveLength(0); // no retry with a dead key
    const other = setup();
    other.client.start();
    other.server.last.end(new FatalStreamError(401, "bad key"));
    await tick();
    expect(other.client.state).toBe("offline");
    expect(other.client.detail).toBe("bad key");
    expect(other.timers.queue).toHaveLength(0);
  });

  it("stop() ends the stream and schedules nothing", async () => {
    const { server, timers, client } = setup();
    client.start();
    client.stop();
    server.last.end(new Error("aborted"));
    await tick();
    expect(timers.queue).toHaveLength(0);
  });
});

describe("backoffDelay", () => {
  it("is capped and its jitter stays within bounds", () => {
    for (const r of [0, 0.5, 1]) {
      const d = backoffDelay(20, DEFAULT_BACKOFF, () => r);
      expect(d).toBeGreaterThanOrEqual(DEFAULT_BACKOFF.maxMs * 0.7);
      expect(d).toBeLessThanOrEqual(DEFAULT_BACKOFF.maxMs);
    }
    expect(backoffDelay(0, DEFAULT_BACKOFF, () => 0)).toBe(350);
  });
});
