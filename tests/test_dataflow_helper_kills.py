"""A real Bytewax flow whose raw-events writer is SIGKILLed again and again.

The fault suite found the flow dying by SIGABRT (exit -6) after "panic in a
destructor during cleanup", without the error naming the writer, about once
in six kills: the sink partition's ``close()`` raised the writer's death a
second time while Bytewax was already unwinding from it. ``close()`` no
longer raises, and a killed writer is now replaced (its unacknowledged
batches sent again). Here a small flow (a resumable source into
``PipelinedEventsSink``, with recovery) has its writer killed at seeded
moments ten times; it must carry on, log each replacement naming the
writer, never abort, and in the end hold every event exactly once.

The JetStream reader, killed the same way, stops the flow (exit 1, the
error naming the reader, never SIGABRT: the sinks' ``close()`` runs while
Bytewax unwinds); restarted, the flow resumes from its snapshot and stores
every event once.

``LINKPULSE_KILL_SEED`` replays a run's choices (the seed is printed).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from nats.aio.client import Client

from linkpulse.bus.stream import ensure_streams
from linkpulse.bus.subjects import event_subject
from linkpulse.config import Settings
from linkpulse.schemas import decode_event
from linkpulse.store.migrate import migrate
from tests.proc_helpers import wait_until
from tests.test_dataflow_events_writer import (
    REPO,
    WRITER_MODULE,
    expected,
    make_events,
    stored,
)
from tests.test_dataflow_helpers import event

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOTAL = 8_000
KILLS = 10

# The flow: events ev-0 .. ev-<TOTAL - 1> in batches of 10, resumable by index;
# slowly (so that a kill finds batches in flight) until the file ``fast`` exists.
FLOW_SCRIPT = """
import sys, time
from datetime import timedelta
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main
from linkpulse.dataflows.store_sink import PipelinedEventsSink
from tests.test_dataflow_events_writer import make_events

from pathlib import Path
dsn, recovery, total, fast = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])

class Part(StatefulSourcePartition):
    def __init__(self, at):
        self.at = at
    def next_batch(self):
        if self.at >= total:
            raise StopIteration
        if not fast.exists():
            time.sleep(0.02)
        batch = make_events(self.at, min(total, self.at + 10))
        self.at += len(batch)
        return [("p", batch)]
    def snapshot(self):
        return self.at

class Source(FixedPartitionedSource):
    def list_parts(self):
        return ["p"]
    def build_part(self, step_id, for_part, resume_state):
        return Part(resume_state or 0)

flow = Dataflow("writer_kills")
events = op.input("in", flow, Source())
op.output("events", events, PipelinedEventsSink(dsn, ["p"], max_in_flight=4, outage_s=0))
run_main(flow, epoch_interval=timedelta(milliseconds=100), recovery_config=RecoveryConfig(recovery))
"""


READER_MODULE = "linkpulse.dataflows.jetstream_reader"
# Enough, with a short random wait, that every run is still reading when its reader is killed.
READER_EVENTS = 6000
READER_KILLS = 3

# A flow reading the test's stream up to its last message into the events
# sink, slowed (a chunk of 50 every 30 ms) so that a kill comes mid-stream.
READER_FLOW_SCRIPT = """
import sys, time
from datetime import timedelta
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main
from linkpulse.config import Settings
from linkpulse.dataflows.jetstream_source import JetStreamSource
from linkpulse.dataflows.live_metrics import decode_chunk
from linkpulse.dataflows.store_sink import PipelinedEventsSink

nats_url, stream, prefix, dsn, recovery, last = sys.argv[1:7]
settings = Settings(nats_url=nats_url, stream_name=stream, subject_prefix=prefix)
source = JetStreamSource(settings, batch_size=50, max_buffered=100, stop_at_seq=int(last))

def slowly(chunk):
    time.sleep(0.03)
    d = decode_chunk(chunk)
    return (d.part, d.events)

flow = Dataflow("reader_kills")
decoded = op.map("decode", op.input("in", flow, source), slowly)
op.output("events", decoded, PipelinedEventsSink(dsn, source.list_parts(), outage_s=0))
run_main(flow, epoch_interval=timedelta(milliseconds=200), recovery_config=RecoveryConfig(recovery))
"""


class KillRig:
    """The flow subprocess on a recovery folder, its log, and the steps of each kill."""

    def __init__(self, dsn: str, work: Path) -> None:
        self.dsn = dsn
        self.script = [FLOW_SCRIPT, dsn, str(work / "recovery"), str(TOTAL), str(work / "fast")]
        self.recovery = work / "recovery"
        self.recovery.mkdir()
        subprocess.run(  # noqa: S603 - bytewax's own tool: one recovery partition
            [sys.executable, "-m", "bytewax.recovery", str(self.recovery), "1"], check=True
        )
        self.log = work / "flow.log"
        self.fast = work / "fast"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            out.write(b"\n=== start\n")
            self.proc = subprocess.Popen(  # noqa: S603 - our own script
                [sys.executable, "-c", *self.script],
                cwd=REPO,
                stdout=out,
                stderr=out,
            )
        return self.proc

    def writer(self, module: str = WRITER_MODULE) -> psutil.Process | None:
        """The flow's helper process running ``module`` (the writer unless told)."""
        assert self.proc is not None
        try:
            for child in psutil.Process(self.proc.pid).children():
                if module in child.cmdline():
                    return child
        except psutil.NoSuchProcess:
            pass
        return None

    def last_run(self) -> str:
        text = self.log.read_text(errors="replace")
        return text[text.rfind("\n=== start") :]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def rig(pg_dsn: str, tmp_path: Path) -> Iterator[KillRig]:
    migrate(pg_dsn)
    made = KillRig(pg_dsn, tmp_path)
    yield made
    made.stop()


def test_a_sigkilled_writer_is_replaced_and_every_event_stored_once(rig: KillRig) -> None:
    seed = int(os.environ.get("LINKPULSE_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"writer-kill seed {seed} (LINKPULSE_KILL_SEED={seed} replays it); log {rig.log}")
    proc = rig.start()
    killed: list[int] = []
    for kill in range(KILLS):
        before = stored(rig.dsn)[0]
        # Wait for a writer that is storing (not one killed already), then
        # kill it at a seeded moment.
        assert wait_until(
            lambda b=before: (
                (w := rig.writer()) is not None and w.pid not in killed and stored(rig.dsn)[0] > b
            ),
            timeout=60,
        ), f"kill {kill}: the flow stored nothing (seed {seed}): {rig.last_run()[-3000:]}"
        time.sleep(rng.uniform(0.0, 0.3))
        writer = rig.writer()
        assert writer is not None and proc.poll() is None, f"kill {kill} (seed {seed})"
        writer.kill()
        killed.append(writer.pid)
    rig.fast.touch()
    code = proc.wait(timeout=120)
    said = rig.last_run()
    assert code not in (-6, 134), f"SIGABRT (seed {seed}): {said[-3000:]}"
    assert "panic in a destructor" not in said, f"seed {seed}: {said[-3000:]}"
    assert code == 0, f"the flow stopped (exit {code}, seed {seed}): {said[-3000:]}"
    replaced = said.count("raw-events writer died; started a new one")
    assert replaced == KILLS, f"{replaced} replacements logged for {KILLS} kills: {said[-3000:]}"
    assert "writer='the raw-events writer of p'" in said, said[-3000:]
    # Whatever was sent twice, each event is stored once.
    assert stored(rig.dsn) == expected(make_events(0, TOTAL)), f"seed {seed}"


async def publish_events(nc: Client, settings: Settings, n: int) -> list[bytes]:
    """``n`` valid events (ev-0 ..) on the test's stream; their payloads."""
    js = nc.jetstream()
    await ensure_streams(js, settings)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    subject = event_subject(settings.subject_prefix, "acme", "order_placed")
    payloads = []
    for i in range(n):
        body = json.dumps(
            event(
                i,
                base + timedelta(milliseconds=100 * i),
                "acme",
                "order_placed",
                "s1",
                (i % 400) * 0.25,
            )
        ).encode()
        payloads.append(body)
        await js.publish_async(subject, body, stream=settings.stream_name)
    await js.publish_async_completed()
    return payloads


async def test_a_sigkilled_reader_stops_the_flow_naming_it_and_a_restart_stores_everything_once(
    rig: KillRig, nc: Client, nats_settings: Settings
) -> None:
    seed = int(os.environ.get("LINKPULSE_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"reader-kill seed {seed} (LINKPULSE_KILL_SEED={seed} replays it); log {rig.log}")
    payloads = await publish_events(nc, nats_settings, READER_EVENTS)
    s = nats_settings
    rig.script = [
        READER_FLOW_SCRIPT,
        s.nats_url,
        s.stream_name,
        s.subject_prefix,
        rig.dsn,
        str(rig.recovery),
        str(READER_EVENTS),
    ]
    for kill in range(READER_KILLS):
        proc = rig.start()
        before = stored(rig.dsn)[0]
        assert wait_until(
            lambda b=before: rig.writer(READER_MODULE) is not None and stored(rig.dsn)[0] > b,
            timeout=60,
        ), f"kill {kill}: the flow stored nothing (seed {seed}): {rig.last_run()[-3000:]}"
        time.sleep(rng.uniform(0.0, 0.1))
        reader = rig.writer(READER_MODULE)
        assert reader is not None, f"kill {kill}: the flow ended first (seed {seed})"
        reader.kill()
        code = proc.wait(timeout=60)
        said = rig.last_run()
        assert code not in (-6, 134), f"kill {kill}: SIGABRT (seed {seed}): {said[-3000:]}"
        assert "panic in a destructor" not in said, f"kill {kill} (seed {seed}): {said[-3000:]}"
        assert code == 1, f"kill {kill}: exit {code} (seed {seed}): {said[-3000:]}"
        assert "the JetStream reader of" in said and "restart the flow" in said, said[-3000:]
    proc = rig.start()
    code = proc.wait(timeout=120)
    assert code == 0, f"the last run failed (seed {seed}): {rig.last_run()[-3000:]}"
    assert stored(rig.dsn) == expected([decode_event(p) for p in payloads]), f"seed {seed}"
