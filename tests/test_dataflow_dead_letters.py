"""Dead letters through a store restart, and stored once however often they are replayed.

Issue 9 §1.2: the dead-letter sink looked up each batch's sequences before
writing, with no retry, so a PostgreSQL restart (or its backends terminated)
stopped the flow with ``StoreError: checking dead_letters for replayed
sequences failed``. Letters are now keyed by their origin (migration 0008,
``ON CONFLICT DO NOTHING``) and every store sink rides out an outage through
the writer's retries. Real PostgreSQL (and the WASM TimescaleDB for the
migration), real NATS.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from nats.aio.client import Client

from linkpulse.bus.stream import ensure_streams
from linkpulse.config import Settings
from linkpulse.dataflows.store_sink import StoreSink
from linkpulse.schemas.outputs import DeadLetter
from linkpulse.store.migrate import MIGRATIONS_DIR, migrate
from linkpulse.store.writer import EventWriter
from tests.test_dataflow_helpers import event
from tests.test_dataflow_recovery import ROOT, flow_command
from tests.test_dataflow_sinks import window

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def letter(seq: int | None, subject: str | None = "lp.events.acme.order_placed") -> DeadLetter:
    return DeadLetter(
        payload="{oops",
        field="$",
        problem="malformed JSON",
        source="nats",
        received_at=T0 + timedelta(seconds=seq or 0),
        subject=subject,
        sequence=seq,
    )


def letters_stored(dsn: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute(
            "SELECT source, subject, sequence, received_at FROM dead_letters ORDER BY id"
        ).fetchall()


def terminate_others(dsn: str) -> int:
    """pg_terminate_backend every other session of the test's database; how many."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


@pytest.fixture
def before_0008() -> Iterator[Path]:
    """The migrations before the dead-letter key, as a directory of their own."""
    tmp = Path(tempfile.mkdtemp(prefix="lp-migrations-"))
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if int(path.name[:4]) < 8:
            shutil.copy(path, tmp / path.name)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_key_migration_drops_old_duplicates_then_stores_a_letter_once(
    lane_dsn: str, before_0008: Path
) -> None:
    migrate(lane_dsn, directory=before_0008)
    with EventWriter(lane_dsn) as w:  # before 0008: a replay was stored again
        assert w.write_dead_letters([letter(7), letter(7), letter(8), letter(None)]) == 4
        assert w.write_dead_letters([letter(None), letter(9, subject=None)] * 2) == 4
    migrate(lane_dsn)
    stored = letters_stored(lane_dsn)
    with_origin = [r for r in stored if r[1] is not None and r[2] is not None]
    assert sorted(r[2] for r in with_origin) == [7, 8]  # one of each origin is kept
    assert len(stored) == 2 + 3 + 2  # letters without a sequence or subject: all kept
    with EventWriter(lane_dsn) as w:
        assert w.write_dead_letters([letter(7), letter(8)]) == 0  # replays
        assert w.write_dead_letters([letter(10), letter(10)]) == 1
    assert sorted(r[2] for r in letters_stored(lane_dsn) if r[1] is not None and r[2]) == [
        7,
        8,
        10,
    ]


def test_every_store_sink_rides_out_terminated_backends(pg_dsn: str) -> None:
    migrate(pg_dsn)
    letters = StoreSink(pg_dsn, "dead_letters").build("dl", 0, 1)
    windows = StoreSink(pg_dsn, "metric_windows").build("mw", 0, 1)
    try:
        letters.write_batch([[letter(1)]])
        windows.write_batch([[window(T0, 1.0)]])
        assert terminate_others(pg_dsn) >= 2  # both sinks' connections
        letters.write_batch([[letter(1), letter(2)]])  # a replay and a new letter
        windows.write_batch([[window(T0, 2.0), window(T0 + timedelta(minutes=1), 3.0)]])
    finally:
        letters.close()
        windows.close()
    assert [r[2] for r in letters_stored(pg_dsn)] == [1, 2]
    with psycopg.connect(pg_dsn) as conn:
        values = conn.execute("SELECT value FROM metric_windows ORDER BY window_start").fetchall()
    assert values == [(2.0,), (3.0,)]


def wait_for(check: Callable[[], bool], flow: subprocess.Popen[str], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        assert flow.poll() is None, f"the flow exited ({flow.returncode}): {flow_output(flow)}"
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def flow_output(flow: subprocess.Popen[str]) -> str:
    if flow.poll() is None:
        return "(still running)"
    assert flow.stderr is not None
    return flow.stderr.read()[-3000:]


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - ours
    assert row is not None
    return int(row[0])


async def test_the_flow_survives_terminated_backends_and_stores_each_letter_once(
    nc: Client, nats_settings: Settings, pg_dsn: str, tmp_path: Path
) -> None:
    migrate(pg_dsn)
    js = nc.jetstream()
    await ensure_streams(js, nats_settings)
    prefix = nats_settings.subject_prefix
    now = datetime.now(UTC) - timedelta(minutes=5)

    async def publish(first: int, n: int, bad: bytes) -> int:
        for i in range(first, first + n):
            payload = json.dumps(event(i, now, "acme", "order_placed", "s1", 2.0)).encode()
            await js.publish(f"{prefix}.events.acme.order_placed", payload)
        ack = await js.publish(f"{prefix}.events.acme.order_placed", bad)
        return ack.seq

    first_bad = await publish(0, 50, b"{not json")
    # A long snapshot interval: the restart below replays every letter.
    cmd, env = flow_command(nats_settings, pg_dsn, tmp_path / "recovery", 10**9)
    cmd[cmd.index("--snapshot-interval") + 1] = "600"
    cmd = cmd[: cmd.index("--stop-at-seq")] + cmd[cmd.index("--stop-at-seq") + 2 :]
    flow = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: count(pg_dsn, "dead_letters") == 1, flow)
        assert wait_for(lambda: count(pg_dsn, "events") == 50, flow)
        assert terminate_others(pg_dsn) >= 1
        second_bad = await publish(50, 50, b'{"type": "nope"}')
        assert wait_for(lambda: count(pg_dsn, "dead_letters") == 2, flow), flow_output(flow)
        assert wait_for(lambda: count(pg_dsn, "events") == 100, flow)
        assert terminate_others(pg_dsn) >= 1  # and once more, idle this time
        third_bad = await publish(100, 10, b"\xff\xfe")
        assert wait_for(lambda: count(pg_dsn, "dead_letters") == 3, flow), flow_output(flow)
        assert flow.poll() is None
    finally:
        if flow.poll() is None:
            flow.send_signal(signal.SIGTERM)  # abrupt, like a crash: resumes from the snapshot
        flow.wait(timeout=30)
    # The restart replays everything after its (only) snapshot: each letter stays once.
    cmd, env = flow_command(nats_settings, pg_dsn, tmp_path / "recovery", third_bad)
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r[2] for r in letters_stored(pg_dsn)] == [first_bad, second_bad, third_bad]
    assert count(pg_dsn, "events") == 110
