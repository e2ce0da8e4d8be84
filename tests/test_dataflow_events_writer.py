"""The raw-events writer process behind ``PipelinedEventsSink``, against real PostgreSQL.

Backpressure and acknowledgements, coalescing that changes nothing stored,
no writer left over when its flow is SIGKILLed, a killed writer replaced
(its unacknowledged batches sent again, stored once), one that keeps dying
or whose write fails stopping the flow with a clear error, and Ctrl-C
(SIGINT) left for the flow to decide.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from hashlib import md5
from pathlib import Path

import psutil
import psycopg
import pytest
from prometheus_client import REGISTRY

from linkpulse.dataflows.store_sink import PipelinedEventsSink, _PipelinedPartition
from linkpulse.errors import DataflowError, StoreError
from linkpulse.schemas import BaseEvent, decode_event
from linkpulse.stack.process import is_alive as alive
from linkpulse.store.migrate import migrate
from linkpulse.store.writer import EventWriter
from tests.proc_helpers import wait_until
from tests.test_dataflow_helpers import event

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
WRITER_MODULE = "linkpulse.dataflows.events_writer"

Checksum = tuple[int, int, Decimal, str]


def make_events(lo: int, hi: int) -> list[BaseEvent]:
    """Events ev-<lo> .. ev-<hi - 1>, one a second from T0, amounts exact in binary and numeric."""
    return [
        decode_event(
            json.dumps(
                event(i, T0 + timedelta(seconds=i), "acme", "order_placed", "s1", (i % 400) * 0.25)
            ).encode()
        )
        for i in range(lo, hi)
    ]


def expected(evs: list[BaseEvent]) -> Checksum:
    """What ``stored`` returns once exactly ``evs`` are in the store."""
    ids = sorted(ev.event_id for ev in evs)
    amounts = sum((Decimal(str(getattr(ev, "amount", 0))) for ev in evs), Decimal(0))
    return len(evs), len(set(ids)), amounts, md5(",".join(ids).encode()).hexdigest()


def stored(dsn: str) -> Checksum:
    """Rows, distinct event ids, sum of amounts and a digest of the ids in the events table."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT event_id), coalesce(sum(amount), 0),"
            " md5(coalesce(string_agg(event_id, ',' ORDER BY event_id COLLATE \"C\"), ''))"
            " FROM events"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), Decimal(row[2]), str(row[3])


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[BaseException | None]]:
    """Start ``fn`` in a thread; the list gets its exception (or None) once it ends."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test to judge
            outcome.append(e)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def finishes(fn: Callable[[], object], timeout: float) -> BaseException | None:
    """Run ``fn``; fail the test if it takes longer than ``timeout``; its exception, if any."""
    thread, outcome = in_thread(fn)
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"
    return outcome[0]


def signal_quietly(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def build(pg_dsn: str) -> Iterator[Callable[..., _PipelinedPartition]]:
    """Builds partitions of a PipelinedEventsSink on the test's database; stops their writers."""
    made: list[_PipelinedPartition] = []

    def _build(
        max_in_flight: int = 8, outage_s: float = 0.0, stall_margin_s: float = 60.0
    ) -> _PipelinedPartition:
        sink = PipelinedEventsSink(
            pg_dsn,
            ["p"],
            max_in_flight=max_in_flight,
            outage_s=outage_s,
            stall_margin_s=stall_margin_s,
        )
        part = sink.build_part("events", "p", None)
        made.append(part)
        return part

    yield _build
    for part in made:  # whatever a test left: resume a stopped writer, then stop it for good
        signal_quietly(part._child.pid, signal.SIGCONT)
        part._child.close(timeout_s=10)


def test_at_most_max_in_flight_batches_are_unacknowledged_and_each_event_stored_once(
    pg_dsn: str, build: Callable[..., _PipelinedPartition]
) -> None:
    migrate(pg_dsn)
    evs = make_events(0, 3000)
    part = build(max_in_flight=2)
    pid = part._child.pid
    # A writer that does not answer: two batches go out, the third waits.
    os.kill(pid, signal.SIGSTOP)
    try:
        part.write_batch([evs[0:100]])
        part.write_batch([evs[100:200]])
        assert part._sent - part._stored == 2
        third, outcome = in_thread(lambda: part.write_batch([evs[200:300]]))
        third.join(1.0)
        assert third.is_alive(), "a third batch went out with two unacknowledged"
        assert part._sent == 2
    finally:
        os.kill(pid, signal.SIGCONT)
    third.join(30)
    assert not third.is_alive() and outcome == [None]
    assert part._sent == 3 and part._sent - part._stored <= 2

    for i in range(300, 3000, 100):
        part.write_batch([evs[i : i + 100]])
        assert part._sent - part._stored <= 2
    part.snapshot()
    assert part._sent == 30 and part._stored == 30
    assert stored(pg_dsn) == expected(evs)
    part.close()
    assert wait_until(lambda: not alive(pid), timeout=10), "the writer outlived close()"
    assert stored(pg_dsn) == expected(evs)


def ack_count() -> float:
    value = REGISTRY.get_sample_value(
        "linkpulse_dataflow_sink_batch_size_count", {"sink": "store_events"}
    )
    return value or 0.0


def ack_rows() -> float:
    value = REGISTRY.get_sample_value(
        "linkpulse_dataflow_sink_batch_size_sum", {"sink": "store_events"}
    )
    return value or 0.0


def test_coalesced_batches_store_the_rows_write_events_stores(
    pg_dsn: str, build: Callable[..., _PipelinedPartition]
) -> None:
    migrate(pg_dsn)
    evs = make_events(0, 195)
    evs += [
        decode_event(
            json.dumps(
                {
                    "type": "page_view",
                    "event_id": f"pv-{i}",
                    "event_time": f"2026-11-24T11:0{i}:00.123456+02:00",
                    "tenant": "acme" if i % 2 else "globex",
                    "properties": {"page": "home", "q": 'tab\t "ü" \\ 𝄞', "n": i},
                }
            ).encode()
        )
        for i in range(5)
    ]
    batches = [evs[i : i + 5] for i in range(0, len(evs), 5)]
    assert len(batches) == 40
    acks, rows = ack_count(), ack_rows()
    part = build(max_in_flight=64)  # never waits: the batches pile up while the writer starts
    for batch in batches:
        part.write_batch([batch])
    assert part._sent == 40
    part.snapshot()
    assert part._stored == 40
    assert ack_rows() - rows == len(evs)
    assert ack_count() - acks < 40, "no batches were coalesced"

    rows_sql = "SELECT (to_jsonb(e) - 'ingested_at')::text FROM events e ORDER BY event_id"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        by_sink = conn.execute(rows_sql).fetchall()
        conn.execute("TRUNCATE events")
        with EventWriter(pg_dsn) as w:
            assert w.write_events(evs) == len(evs)
        by_rows = conn.execute(rows_sql).fetchall()
    assert len(by_sink) == len(evs)
    assert by_sink == by_rows
    part.close()


# The flow, in a process of its own: 1,000 events acknowledged, then (once the
# test has stopped the writer) 100 more sent that the writer has not seen yet.
FLOW_SCRIPT = """
import json, sys
from linkpulse.dataflows.store_sink import PipelinedEventsSink
from tests.test_dataflow_events_writer import make_events

evs = make_events(0, 1100)
part = PipelinedEventsSink(sys.argv[1], ["p"], max_in_flight=8).build_part("events", "p", None)
for i in range(0, 1000, 100):
    part.write_batch([evs[i : i + 100]])
part.snapshot()
print(json.dumps({"pid": part._child.pid, "stored": part._stored}), flush=True)
sys.stdin.readline()
for i in range(1000, 1100, 25):
    part.write_batch([evs[i : i + 25]])
print(json.dumps({"stored": part._stored, "sent": part._sent}), flush=True)
sys.stdin.readline()  # until killed
"""


def read_json_line(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, int]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the flow printed nothing within {timeout} s"
    line = proc.stdout.readline()
    assert line, f"the flow exited (code {proc.poll()}) before printing"
    parsed: dict[str, int] = json.loads(line)
    return parsed


def test_a_writer_whose_flow_is_sigkilled_writes_what_it_has_and_exits(
    pg_dsn: str, tmp_path: Path, build: Callable[..., _PipelinedPartition]
) -> None:
    migrate(pg_dsn)
    errors = (tmp_path / "flow.stderr").open("wb")
    flow = subprocess.Popen(  # noqa: S603 - our own script
        [sys.executable, "-c", FLOW_SCRIPT, pg_dsn],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
    )
    writer: psutil.Process | None = None
    try:
        first = read_json_line(flow, timeout=60)
        writer = psutil.Process(first["pid"])
        assert WRITER_MODULE in writer.cmdline()
        assert writer.ppid() == flow.pid
        assert first["stored"] == 10  # frames of 100 events: 1,000 acknowledged
        assert stored(pg_dsn)[0] == 1000
        # Stop the writer so that the flow dies with batches the writer has not read.
        writer.suspend()
        assert flow.stdin is not None
        flow.stdin.write(b"go\n")
        flow.stdin.flush()
        second = read_json_line(flow, timeout=60)
        assert second["sent"] == 14 and second["stored"] == 10
        flow.send_signal(signal.SIGKILL)
        flow.wait(timeout=10)
        writer.resume()
        assert wait_until(lambda: not alive(writer), timeout=10), "orphaned events writer"
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait()
        if writer is not None and alive(writer):
            writer.kill()
        errors.close()
    # Everything it had read is stored: the 1,000 acknowledged and the 100 sent after.
    evs = make_events(0, 1100)
    assert stored(pg_dsn) == expected(evs)
    # The writer finds its flow gone when it acknowledges: no reason for a traceback.
    said = (tmp_path / "flow.stderr").read_text()
    assert "Traceback" not in said, said[-3000:]
    # The restarted flow replays from its snapshot: each event is still stored once.
    part = build()
    for i in range(0, 1100, 100):
        part.write_batch([evs[i : i + 100]])
    part.close()
    assert stored(pg_dsn) == expected(evs)


def reaped_soon(pid: int) -> bool:
    """Our child ``pid`` has exited, all its threads too (so its pipes are closed); not reaped."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None


@pytest.mark.parametrize("settled", [True, False], ids=["writer-gone", "writer-dying"])
def test_a_killed_idle_writer_is_replaced_and_the_next_batch_stored(
    pg_dsn: str, build: Callable[..., _PipelinedPartition], settled: bool
) -> None:
    migrate(pg_dsn)
    evs = make_events(0, 200)
    part = build()
    part.write_batch([evs[:100]])
    part.snapshot()
    pid = part._child.pid
    os.kill(pid, signal.SIGKILL)
    if settled:
        # A zombie leader can still have a thread exiting, holding the pipes
        # open: wait until the whole process is gone.
        assert wait_until(lambda: reaped_soon(pid), timeout=10)
    # Right away, the batch may still go into the dead writer's pipe: it is
    # sent again to the new writer either way.
    part.write_batch([evs[100:]])
    error = finishes(part.snapshot, timeout=30)
    assert error is None, error
    assert part._child.pid != pid and not alive(pid)
    assert part._stored == part._sent == 2
    assert stored(pg_dsn) == expected(evs)
    assert finishes(part.close, timeout=15) is None


def test_a_writer_killed_with_batches_in_flight_is_replaced_and_they_are_stored_once(
    pg_dsn: str, build: Callable[..., _PipelinedPartition]
) -> None:
    migrate(pg_dsn)
    evs = make_events(0, 300)
    part = build()
    part.write_batch([evs[:100]])
    part.snapshot()
    pid = part._child.pid
    os.kill(pid, signal.SIGSTOP)  # it cannot acknowledge what comes next
    part.write_batch([evs[100:200]])
    part.write_batch([evs[200:]])
    assert part._sent - part._stored == 2
    os.kill(pid, signal.SIGKILL)
    error = finishes(part.snapshot, timeout=30)
    assert error is None, error
    assert part._child.pid != pid and not alive(pid)
    assert part._stored == part._sent == 3
    assert stored(pg_dsn) == expected(evs)
    assert finishes(part.close, timeout=15) is None


def test_a_writer_that_keeps_dying_stops_the_flow_naming_it(
    pg_dsn: str, build: Callable[..., _PipelinedPartition]
) -> None:
    migrate(pg_dsn)
    evs = make_events(0, 200)
    part = build()
    part.write_batch([evs[:100]])
    part.snapshot()
    # Every writer started from now on dies before storing anything (it
    # cannot read its arguments); the one running is killed.
    part._args = b"not the writer's arguments"
    os.kill(part._child.pid, signal.SIGKILL)
    part.write_batch([evs[100:]])
    error = finishes(part.snapshot, timeout=60)
    assert isinstance(error, DataflowError), error
    message = str(error)
    assert "raw-events writer of p" in message and "restart the flow" in message, message
    assert "died 4 times in a row without storing a batch" in message, message
    assert finishes(part.close, timeout=15) is None  # close() never raises
    assert stored(pg_dsn) == expected(evs[:100])


def test_a_write_failing_after_good_batches_stops_the_flow_with_the_store_reason(
    pg_dsn: str, build: Callable[..., _PipelinedPartition]
) -> None:
    migrate(pg_dsn)
    evs = make_events(0, 400)
    part = build()
    pid = part._child.pid
    part.write_batch([evs[:100]])
    part.write_batch([evs[100:200]])
    part.snapshot()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE events RENAME TO events_away")
    part.write_batch([evs[200:300]])
    error = finishes(part.snapshot, timeout=30)
    assert isinstance(error, StoreError), error
    assert str(error).startswith("writing events to the store failed"), error
    assert 'relation "events" does not exist' in str(error), error
    # The writer said why and exited; the flow keeps reporting the store's reason.
    assert wait_until(lambda: not alive(pid), timeout=10), "the writer outlived its failure"
    with pytest.raises(StoreError, match='relation "events" does not exist'):
        part.write_batch([evs[300:]])
    assert finishes(part.close, timeout=15) is None  # close() never raises
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE events_away RENAME TO events")
    assert stored(pg_dsn) == expected(evs[:200])


def test_the_writer_ignores_sigint(pg_dsn: str, build: Callable[..., _PipelinedPartition]) -> None:
    migrate(pg_dsn)
    evs = make_events(0, 200)
    part = build()
    pid = part._child.pid
    part.write_batch([evs[:100]])
    part.snapshot()  # the writer is up and past its start
    os.kill(pid, signal.SIGINT)
    time.sleep(0.5)  # a writer that took it would be gone by now
    assert alive(pid), "SIGINT stopped the writer"
    part.write_batch([evs[100:]])
    part.snapshot()
    assert part._stored == part._sent == 2
    assert stored(pg_dsn) == expected(evs)
    part.close()
    assert not alive(pid)


def test_a_writer_that_answers_nothing_stops_the_flow_instead_of_hanging(
    pg_dsn: str, build: Callable[..., _PipelinedPartition]
) -> None:
    migrate(pg_dsn)
    evs = make_events(0, 200)
    part = build(outage_s=0.5, stall_margin_s=1.0)  # stuck = no ack for 1.5 s
    part.write_batch([evs[:100]])
    part.snapshot()
    os.kill(part._child.pid, signal.SIGSTOP)  # alive, holds its pipes, answers nothing
    # The stall is noticed wherever the sink next waits: in this write (when
    # it waits for room) or in the snapshot; either way the flow stops.
    with pytest.raises(DataflowError, match="acknowledged no write for 1.5 s"):
        part.write_batch([evs[100:]])
        part.snapshot()
    assert stored(pg_dsn) == expected(evs[:100])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"outage_s": -1.0}, "outage_s"), ({"stall_margin_s": 0.0}, "stall_margin_s")],
)
def test_bad_sink_settings_are_refused_by_name(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PipelinedEventsSink("postgresql://nowhere/x", ["p"], **kwargs)  # type: ignore[arg-type]
