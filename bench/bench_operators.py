"""Throughput of pre-aggregation + window aggregation, full registry, all windows.

Run: ``.venv/bin/python bench/bench_operators.py [--events 300000] [--batch 1000]``

Prints events/s for: a baseline loop that only reads each event's time and
type (the floor of any per-event Python work), pre-aggregation alone, and
pre-aggregation + aggregator (with the clock advancing like live traffic:
50k events per second, emit interval 1 s, so windows close and sliding windows
are composed as in production), with ratios to the baseline and to the
150k events/s target.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta

from linkpulse.operators import MetricsConfig
from linkpulse.schemas.events import EVENT_CLASS_BY_TYPE

TARGET = 150_000
# The type mix: (cumulative share, type).
_MIX = ((0.70, "page_view"), (0.80, "order_placed"), (0.90, "payment_settled"),
        (0.93, "payment_failed"), (0.95, "refund_issued"), (1.01, "user_signup"))  # fmt: skip


def make_events(
    n: int, rate: float, seed: int = 1, tenants: int = 5, sellers: int = 500, users: int = 20_000
) -> list[object]:
    """A realistic mix: mostly page views, some orders/payments, few refunds and signups."""
    rnd = random.Random(seed)
    # 20 s past the hour: the run is steady state, not the hourly burst of closing windows
    t0 = datetime(2026, 11, 24, 10, 0, 20, tzinfo=UTC)
    out: list[object] = []
    pages = ("home", "search", "category", "product", "product", "cart", "checkout")
    for i in range(n):
        t = t0 + timedelta(seconds=i / rate + rnd.uniform(-2, 0))
        tenant = f"t{rnd.randrange(tenants)}"
        u = f"u{rnd.randrange(users)}"
        s = f"s{rnd.randrange(sellers)}"
        r = rnd.random()
        common = {"event_id": f"e{i}", "event_time": t, "tenant": tenant}
        amount = round(rnd.lognormvariate(3, 1), 2)
        money = {"user_id": u, "seller_id": s, "amount": amount, "currency": "USD"}
        order = {**money, "properties": {"order_id": f"o{i}"}}
        kind = next(k for share, k in _MIX if r < share)
        fields: dict[str, object] = {
            "page_view": {"user_id": u, "properties": {"page": rnd.choice(pages)}},
            "order_placed": order,
            "payment_settled": order,
            "payment_failed": order,
            "refund_issued": order,
            "user_signup": {"user_id": u},
        }[kind]
        out.append(EVENT_CLASS_BY_TYPE[kind](**common, **fields))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=50_000, help="simulated events/s of event time")
    args = ap.parse_args()
    events = make_events(args.events, args.rate)
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
    t0 = events[0].event_time  # type: ignore[attr-defined]

    # Live traffic: the clock moves with the events (rate events per second), so live
    # updates, closes and the per-seller cadence happen as in production. The first
    # quarter builds the series and is not timed; close() (end-of-input flush of every
    # open window) is timed apart. Each batch is timed in two parts: pre-aggregation
    # (per input partition) and the aggregator (keyed step).
    clock = [t0]
    cfg = MetricsConfig(now_getter=lambda: clock[0])
    pre, agg = cfg.build_preaggregator(), cfg.build_aggregator()
    warm = len(batches) // 4
    pre_s = agg_s = base_s = 0.0
    emitted = finals = 0
    for i, b in enumerate(batches):
        clock[0] = t0 + timedelta(seconds=(i + 1) * args.batch / args.rate)
        # the baseline runs interleaved, batch by batch, so a loaded machine slows both alike
        t0b = time.perf_counter()
        n = 0
        for ev in b:
            n += ev.event_time.timestamp() > 0 and type(ev) is not None  # type: ignore[attr-defined]
        t1 = time.perf_counter()
        pb = pre.process(b)
        t2 = time.perf_counter()
        out = agg.add(pb.partials, pb.max_event_time)
        t3 = time.perf_counter()
        if i >= warm:
            base_s += t1 - t0b
            pre_s += t2 - t1
            agg_s += t3 - t2
            emitted += len(out)
            finals += sum(w.final for w in out)
    timed = sum(len(b) for b in batches[warm:])
    start = time.perf_counter()
    closed = len(agg.close())
    close_s = time.perf_counter() - start

    base = timed / base_s
    pre_rate, agg_rate, full = timed / pre_s, timed / agg_s, timed / (pre_s + agg_s)
    sim_s = timed / args.rate
    print(
        f"events: {len(events)} ({timed} timed), batch {args.batch}, "
        f"clock at {args.rate:,.0f} ev/s ({sim_s:.0f} s of traffic timed)"
    )
    print(f"baseline loop (read time + type)  : {base:12,.0f} ev/s")
    print(
        f"pre-aggregation (per partition)   : {pre_rate:12,.0f} ev/s  "
        f"({pre_rate / base:.3f} x baseline)"
    )
    print(
        f"aggregator (keyed step)           : {agg_rate:12,.0f} ev/s  "
        f"({agg_rate / base:.3f} x baseline)"
    )
    print(
        f"pre-aggregation + aggregator      : {full:12,.0f} ev/s  ({full / base:.3f} x baseline, "
        f"{full / TARGET:.2f} x target {TARGET:,})"
    )
    print(f"CPU per second of {args.rate:,.0f} ev/s traffic: {(pre_s + agg_s) / sim_s:.2f} s")
    print(
        f"windows emitted while timed: {emitted} ({finals} final, "
        f"{emitted / sim_s:,.0f}/s); close() flushed {closed} windows in {close_s:.2f} s "
        f"({close_s / max(closed, 1) * 1e6:.0f} us each)"
    )


if __name__ == "__main__":
    main()
