// Small React glue: polling a query, a clock for staleness, a store's version.
import { useEffect, useRef, useState, useSyncExternalStore } from "react";
import type { LiveData } from "./lib/live";

export interface Polled<T> {
  data: T | null;
  error: string | null;
  at: number | null; // when data was last fetched successfully
}

/** Run ``fetcher`` now and every ``everyMs``; ``deps`` restart it (scope changes). */
export function usePoll<T>(fetcher: () => Promise<T>, everyMs: number, deps: unknown[]): Polled<T> {
  const [state, setState] = useState<Polled<T>>({ data: null, error: null, at: null });
  const ref = useRef(fetcher);
  ref.current = fetcher;
  useEffect(() => {
    let alive = true;
    setState({ data: null, error: null, at: null });
    const run = async () => {
      try {
        const data = await ref.current();
        if (alive) setState({ data, error: null, at: Date.now() });
      } catch (e) {
        if (alive) setState((s) => ({ ...s, error: e instanceof Error ? e.message : String(e) }));
      }
    };
    void run();
    const h = setInterval(run, everyMs);
    return () => {
      alive = false;
      clearInterval(h);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [everyMs, ...deps]);
  return state;
}

/** The wall clock, ticking every ``ms`` (staleness is re-judged on each tick). */
export function useNow(ms = 2000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const h = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(h);
  }, [ms]);
  return now;
}

export function useLive(live: LiveData): number {
  return useSyncExternalStore(live.subscribe, live.getVersion);
}
