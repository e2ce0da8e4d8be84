"""Cost of pseudonymisation in the dataflow's decode step (events/s, same run).

Run: ``.venv/bin/python bench/bench_privacy.py [--events 200000] [--rounds 5]``

The decode step (``live_metrics.decode_chunk``: JSON decoding and
validation of chunks of 1,000 messages) is timed without pseudonymisation
(the baseline: what runs when no PII field is configured, since the flow then
uses the plain step), and with it for two field lists: ``user_id`` alone, and
``user_id`` plus ``properties.email`` and ``properties.ip`` (every event
carries both properties here: the worst case). Users repeat as in live
traffic (20,000 of them), so most pseudonyms come from the cache; a last run
with every value new measures the HMAC itself (against a baseline of the
same events). The variants take turns chunk by chunk and are timed in CPU
seconds of this process, the best round printed, with the load average: the
machine is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from bench_operators import make_events  # noqa: E402 - the bench's realistic event mix

from linkpulse.dataflows.chunks import Chunk  # noqa: E402
from linkpulse.dataflows.live_metrics import decode_chunk  # noqa: E402
from linkpulse.privacy import Pseudonymiser  # noqa: E402
from linkpulse.schemas import BaseEvent, encode_event  # noqa: E402

KEY = b"bench key 0123456789abcdef"
CHUNK = 1000


def chunks(n: int, fresh: bool) -> list[Chunk]:
    """Encoded events with an email and an IP each, cut into chunks of 1,000 messages."""
    events: list[BaseEvent] = make_events(n, rate=50_000.0)  # type: ignore[assignment]
    payloads = []
    for i, ev in enumerate(events):
        who = f"x{i}" if fresh else (ev.user_id or "anon")
        props = {**ev.properties, "email": f"{who}@example.com", "ip": f"10.{i % 250}.0.1"}
        user = f"x{i}" if fresh and ev.user_id else ev.user_id
        payloads.append(encode_event(msgspec.structs.replace(ev, properties=props, user_id=user)))
    now = int(events[-1].event_time.timestamp() * 1e9) + 10**9
    msgs = [(p, "lp.events.t0.x", i + 1, now) for i, p in enumerate(payloads)]
    return [Chunk("p0", now, msgs[i : i + CHUNK]) for i in range(0, len(msgs), CHUNK)]


def cpu_rates(
    variants: dict[str, tuple[Callable[[Chunk], object], list[Chunk]]], rounds: int
) -> dict[str, list[float]]:
    """Events per CPU second of each variant, per round.

    The variants take turns chunk by chunk and each is timed in this process's
    CPU time, so a neighbour's load (the machine is shared) slows them all
    alike instead of whichever ran during a burst.
    """
    out: dict[str, list[float]] = {name: [] for name in variants}
    steps = list(variants.items())
    n_chunks = min(len(data) for _, (_, data) in steps)
    for _ in range(rounds):
        spent = dict.fromkeys(variants, 0.0)
        events = dict.fromkeys(variants, 0)
        for i in range(n_chunks):
            for name, (step, data) in steps:
                t0 = time.process_time()
                step(data[i])
                spent[name] += time.process_time() - t0
                events[name] += len(data[i].messages)
        for name in variants:
            out[name].append(events[name] / spent[name])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = chunks(args.events, fresh=False)
    fresh = chunks(args.events, fresh=True)
    variants: dict[str, tuple[Callable[[Chunk], object], list[Chunk]]] = {}
    variants["baseline (no PII field)"] = (decode_chunk, work)
    for fields in ("user_id", "user_id,properties.email,properties.ip"):
        p = Pseudonymiser(KEY, fields)
        variants[f"pseudonymise {fields}"] = (lambda c, p=p: decode_chunk(c, privacy=p), work)
    # every value new: the cache never hits (cache kept small so it cannot warm up either)
    cold = Pseudonymiser(KEY, "user_id,properties.email,properties.ip", cache_size=1)
    variants["same, every value new (HMAC each)"] = (
        lambda c: decode_chunk(c, privacy=cold),
        fresh,
    )
    variants["baseline, every value new"] = (decode_chunk, fresh)
    results = cpu_rates(variants, args.rounds)
    load = os.getloadavg()
    print(
        f"decode step, {args.events} events, chunks of {CHUNK}, events per CPU second, "
        f"best of {args.rounds} rounds; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        "(2 cores, shared)"
    )
    base = max(results["baseline (no PII field)"])
    base_fresh = max(results["baseline, every value new"])
    for name, rates in results.items():
        ref = base_fresh if "every value new" in name else base
        best = max(rates)
        cost_us = (1 / best - 1 / ref) * 1e6
        print(
            f"  {name:<55} {best:>10,.0f} ev/s (median {statistics.median(rates):,.0f})"
            f"  x{best / ref:.2f} of its baseline, {cost_us:+.2f} us/event"
        )


if __name__ == "__main__":
    main()
