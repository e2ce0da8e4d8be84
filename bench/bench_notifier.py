"""Delay from an alert change on JetStream to the page at the receiver (p50/p99).

Runs ``linkpulse run notifier`` as its own process against a fresh database, the
local NATS and a loopback PagerDuty-format receiver (``tests/receivers.py``),
with ``group_wait: 0`` (the policy's own wait excluded: it is a setting, not a
cost). Each incident is its own group. Two loads: a steady trickle (one
incident every ``--gap`` seconds) and a burst of ``--burst`` incidents at once.

    .venv/bin/python bench/bench_notifier.py --steady 200 --gap 0.05 --burst 500

What it does not measure: the dataflow's part (window close to rule step to
publish); that is the rule step's benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from linkpulse.bus.live import alert_subject, ensure_live_streams  # noqa: E402
from linkpulse.config import Settings  # noqa: E402
from linkpulse.store.migrate import migrate  # noqa: E402
from tests.fix_db import fresh_database  # noqa: E402
from tests.fix_notifier import change, config_dict  # noqa: E402
from tests.receivers import HttpReceivers  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    rx = HttpReceivers()
    rx.start()
    tag = uuid.uuid4().hex[:8]
    with fresh_database("bench") as dsn, tempfile.TemporaryDirectory() as tmp:
        migrate(dsn)
        settings = Settings(
            nats_url=os.environ.get("LINKPULSE_TEST_NATS_URL", "nats://127.0.0.1:4222"),
            database_url=dsn,
            stream_name=f"LPBENCH_{tag.upper()}",
            subject_prefix=f"lpb{tag}",
        )
        cfg = config_dict(rx, receivers=("pd",))
        cfg["route"].update(group_by=["alertname"], group_interval="5m")  # production-like
        path = Path(tmp) / "notifier.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {
            **os.environ,
            "LINKPULSE_DATABASE_URL": dsn,
            "LINKPULSE_NATS_URL": settings.nats_url,
            "LINKPULSE_STREAM_NAME": settings.stream_name,
            "LINKPULSE_SUBJECT_PREFIX": settings.subject_prefix,
            "LINKPULSE_LOG_LEVEL": "WARNING",
        }
        nc = await nats.connect(settings.nats_url)
        js = nc.jetstream()
        await ensure_live_streams(js, settings)
        proc = subprocess.Popen(
            [sys.executable, "-m", "linkpulse", "run", "notifier", "--config", str(path)], env=env
        )
        sent: dict[str, float] = {}
        results: dict[str, dict[str, float]] = {}
        try:

            async def one(name: str) -> None:
                c = change(name)
                sent[c.alert_id] = time.time()
                await js.publish(
                    alert_subject(settings.subject_prefix, c.tenant),
                    msgspec.json.encode(c),
                    headers={"Nats-Msg-Id": f"{c.alert_id}/firing/0"},
                )

            async def wait_for(n: int) -> None:
                deadline = time.monotonic() + 300
                while len(rx.pd_events()) < n:
                    assert time.monotonic() < deadline, "pages missing"
                    await asyncio.sleep(0.05)

            await one("warmup")  # the notifier's start-up is not a delay
            await wait_for(1)
            for phase, count, gap in (
                ("steady", args.steady, args.gap),
                ("burst", args.burst, 0.0),
            ):
                before = len(rx.pd_events())
                start = time.time()
                for i in range(count):
                    await one(f"{phase}_{i}")
                    if gap:
                        await asyncio.sleep(gap)
                await wait_for(before + count)
                got = {r.json["dedup_key"]: r.at for r in rx.requests("/pd")}
                delays = [got[k] - sent[k] for k in sent if k in got and sent[k] >= start]
                results[phase] = {
                    "n": len(delays),
                    "p50_ms": 1000 * statistics.median(delays),
                    "p99_ms": 1000 * pct(delays, 0.99),
                    "max_ms": 1000 * max(delays),
                    "pages_per_s": len(delays)
                    / (max(got[k] for k in sent if sent[k] >= start) - start),
                }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            for name in (
                settings.stream_name,
                f"{settings.stream_name}_DLQ",
                f"{settings.stream_name}_UPDATES",
                f"{settings.stream_name}_ANOMALIES",
                f"{settings.stream_name}_ALERTS",
            ):
                try:
                    await js.delete_stream(name)
                except Exception:  # noqa: BLE001 - not every stream exists
                    pass
            await nc.close()
            rx.stop()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steady", type=int, default=200, help="incidents in the steady phase")
    p.add_argument("--gap", type=float, default=0.05, help="seconds between steady incidents")
    p.add_argument("--burst", type=int, default=500, help="incidents published at once")
    args = p.parse_args()
    print(f"# bench_notifier {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    for phase, r in asyncio.run(run(args)).items():
        print(
            f"{phase:7s} n={r['n']:4.0f}  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
            f"max {r['max_ms']:7.1f} ms  {r['pages_per_s']:6.1f} pages/s"
        )


if __name__ == "__main__":
    main()
