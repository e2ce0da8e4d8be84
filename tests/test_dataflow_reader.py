"""The JetStream reader process behind a partition, when things go wrong (real NATS).

A consumer deleted under the reader, a flow killed with SIGKILL, a stream
that is not there, a quiet stream, a NATS server restart: every sequence is
still emitted exactly once and in order, and no reader process is left over.
"""

from __future__ import annotations

import asyncio
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import nats
import psutil
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from linkpulse.bus.subjects import events_filter
from linkpulse.config import Settings
from linkpulse.dataflows.chunks import Chunk
from linkpulse.dataflows.jetstream_partition import JetStreamPartition
from linkpulse.errors import DataflowError
from linkpulse.stack.binaries import nats_server
from linkpulse.stack.probes import probe_nats
from linkpulse.stack.process import is_alive as alive
from linkpulse.stack.urls import free_port
from tests.fix_nats import NATS_URL
from tests.proc_helpers import wait_until
from tests.test_dataflow_source import build, drain, publish_n

pytestmark = pytest.mark.integration

READER_MODULE = "linkpulse.dataflows.jetstream_reader"
REPO = Path(__file__).resolve().parent.parent


def restarts(settings: Settings) -> float:
    """SOURCE_RESTARTS of the settings' (single) partition so far."""
    value = REGISTRY.get_sample_value(
        "linkpulse_dataflow_source_restarts_total",
        {"partition": events_filter(settings.subject_prefix)},
    )
    return value or 0.0


def reader_children() -> set[int]:
    """Reader processes (even zombies) among this process's descendants."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if READER_MODULE in child.cmdline():
                pids.add(child.pid)
        except psutil.ZombieProcess:
            pids.add(child.pid)  # no cmdline any more, but not reaped either: count it
        except psutil.NoSuchProcess:
            pass
    return pids


async def wait_until_async(check: Callable[[], Awaitable[bool]], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def test_a_deleted_consumer_is_recreated_and_nothing_is_lost_or_repeated(
    nc: Client, nats_settings: Settings
) -> None:
    js = nc.jetstream()
    stream = nats_settings.stream_name
    await publish_n(nc, nats_settings, 2000)
    before = restarts(nats_settings)
    part = build(nats_settings, None)
    try:
        seqs = drain(part, 1000)
        (consumer,) = await js.consumers_info(stream)  # the reader's, and only it
        await js.delete_consumer(stream, consumer.name)
        # Published while the reader has no consumer: read once it makes a new one.
        await publish_n(nc, nats_settings, 2000)
        seqs += drain(part, 4000, timeout=30)
        after = [c.name for c in await js.consumers_info(stream)]
    finally:
        part.close()
    assert seqs == list(range(1, 4001))  # every sequence once, in order
    assert restarts(nats_settings) > before
    assert len(after) == 1 and after[0] != consumer.name


ORPHAN_SCRIPT = """
import sys, time
from linkpulse.config import Settings
from linkpulse.dataflows.jetstream_source import JetStreamSource

url, stream, prefix = sys.argv[1:]
src = JetStreamSource(Settings(nats_url=url, stream_name=stream, subject_prefix=prefix))
part = src.build_part("inp", src.list_parts()[0], None)
print(part.reader_pid, flush=True)
time.sleep(300)
"""


async def test_a_reader_whose_flow_is_sigkilled_exits_and_drops_its_consumer(
    nc: Client, nats_settings: Settings
) -> None:
    js = nc.jetstream()
    stream = nats_settings.stream_name
    await publish_n(nc, nats_settings, 500)
    flow = subprocess.Popen(  # a "flow" process holding one partition
        [sys.executable, "-c", ORPHAN_SCRIPT, NATS_URL, stream, nats_settings.subject_prefix],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    reader: psutil.Process | None = None
    try:
        assert flow.stdout is not None
        assert select.select([flow.stdout], [], [], 30)[0], "the partition did not start"
        reader = psutil.Process(int(flow.stdout.readline()))
        assert reader.ppid() == flow.pid and alive(reader)
        assert len(await js.consumers_info(stream)) == 1
        flow.send_signal(signal.SIGKILL)
        flow.wait(timeout=10)
        assert wait_until(lambda: not alive(reader), timeout=20), "the reader outlived its flow"

        async def no_consumer() -> bool:
            return not await js.consumers_info(stream)

        # Deleted on the way out, not left for the server's 30 s inactivity timeout.
        assert await wait_until_async(no_consumer, timeout=20)
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait()
        if reader is not None and alive(reader):
            reader.kill()


def test_a_missing_stream_fails_the_start_clearly_and_leaves_no_reader(
    nats_settings: Settings,
) -> None:
    before = reader_children()
    with pytest.raises(DataflowError) as err:
        build(nats_settings, None)  # nobody made this test's stream
    message = str(err.value)
    assert nats_settings.stream_name in message
    assert events_filter(nats_settings.subject_prefix) in message
    assert "stream not found" in message  # the server's reason, passed on
    assert reader_children() == before


def test_unreachable_nats_fails_the_start_clearly_and_leaves_no_reader() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    settings = Settings(nats_url=url, stream_name="LPTEST_NOWHERE", subject_prefix="lptnowhere")
    before = reader_children()
    with pytest.raises(DataflowError) as err:
        JetStreamPartition(
            settings,
            events_filter(settings.subject_prefix),
            1,
            batch_size=500,
            max_buffered=1000,
            stop_at_seq=None,
            idle_wake=timedelta(milliseconds=5),
            start_timeout_s=7.5,
        )
    # The reader gives up and says why ("not reachable") before the partition
    # stops waiting, which would say it timed out instead.
    message = str(err.value)
    assert "not reachable" in message and url in message, message
    assert "LPTEST_NOWHERE" in message
    assert reader_children() == before


STARTING_SCRIPT = """
import sys, time
from datetime import timedelta
from linkpulse.config import Settings
from linkpulse.dataflows.jetstream_partition import JetStreamPartition

settings = Settings(nats_url=sys.argv[1], stream_name="LPTEST_NOWHERE", subject_prefix="lptx")
JetStreamPartition(settings, "lptx.events.>", 1, batch_size=500, max_buffered=1000,
                   stop_at_seq=None, idle_wake=timedelta(milliseconds=5), start_timeout_s=300)
"""


def test_a_reader_still_connecting_when_its_flow_is_sigkilled_exits() -> None:
    # NATS is unreachable and the start timeout long: the reader is still in
    # its first connect when the flow dies, and must notice its stdin closing.
    url = f"nats://127.0.0.1:{free_port()}"
    flow = subprocess.Popen([sys.executable, "-c", STARTING_SCRIPT, url], cwd=REPO)
    readers: list[psutil.Process] = []
    try:

        def reader_started() -> bool:
            readers[:] = [
                p for p in psutil.Process(flow.pid).children() if READER_MODULE in p.cmdline()
            ]
            return bool(readers)

        assert wait_until(reader_started, timeout=30), "the flow started no reader"
        time.sleep(1)  # past reading its arguments, into connecting
        assert alive(readers[0])
        flow.send_signal(signal.SIGKILL)
        flow.wait(timeout=10)
        assert wait_until(lambda: not alive(readers[0]), timeout=20), "orphaned reader"
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait()
        for reader in readers:
            if alive(reader):
                reader.kill()


async def test_an_idle_partition_ticks_with_empty_chunks_then_reads_new_messages(
    nc: Client, nats_settings: Settings
) -> None:
    await publish_n(nc, nats_settings, 100)
    part = build(nats_settings, 101)  # right past the end of the stream
    try:
        empty: list[Chunk] = []
        deadline = time.monotonic() + 20
        while len(empty) < 2 and time.monotonic() < deadline:
            for chunk in part.next_batch():
                assert chunk.messages == [], "nothing was published past sequence 100"
                empty.append(chunk)
            time.sleep(0.01)
        assert len(empty) >= 2, "no clock chunks from an idle partition"
        # Clock chunks move "now" on by at least the idle period, about a second.
        assert empty[1].now_ns - empty[0].now_ns >= 1_000_000_000
        assert part.snapshot() == 101
        await publish_n(nc, nats_settings, 50)
        seqs = drain(part, 150)
    finally:
        part.close()
    assert seqs == list(range(101, 151))


class PrivateNats:
    """A nats-server with JetStream of our own, on a fixed port and store dir."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = root / "jetstream"
        self.log = root / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        argv = [str(nats_server()), "-a", "127.0.0.1", "-p", str(self.port), "-js"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*argv, "-sd", str(self.store)], stdout=log, stderr=subprocess.STDOUT
            )

        async def ready() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            found = await asyncio.to_thread(probe_nats, self.url, 1.0)
            return found.ok and not found.degraded

        assert await wait_until_async(ready, timeout=30), "private nats-server did not start"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
async def private_nats() -> AsyncIterator[PrivateNats]:
    root = Path(tempfile.mkdtemp(prefix="lp-reader-nats-"))
    server = PrivateNats(root)
    try:
        await server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


async def connect(url: str) -> Client:
    async def quiet(_: Exception) -> None:
        return None

    return await nats.connect(url, allow_reconnect=False, connect_timeout=3, error_cb=quiet)


async def test_a_nats_server_restart_loses_and_repeats_nothing(
    private_nats: PrivateNats, nats_settings: Settings
) -> None:
    settings = nats_settings.model_copy(update={"nats_url": private_nats.url})
    nc = await connect(private_nats.url)
    await publish_n(nc, settings, 5000)
    await nc.close()
    before = restarts(settings)
    # A small buffer bound: the reader is still short of the end when the server dies.
    part = build(settings, None, max_buffered=1000)
    try:
        seqs = drain(part, 1000)
        assert part.buffered() + seqs[-1] < 5000
        private_nats.kill()  # SIGKILL; the stream's files stay in the store dir
        await private_nats.start()
        nc = await connect(private_nats.url)
        try:
            await publish_n(nc, settings, 1000)  # the stream came back: 5001..6000
        finally:
            await nc.close()
        seqs += drain(part, 6000, timeout=40)
    finally:
        part.close()
    assert seqs == list(range(1, 6001))
    assert restarts(settings) > before


def test_the_leftover_check_sees_a_running_reader() -> None:
    # reader_children() must be able to fail: a reader child shows up until reaped.
    proc = subprocess.Popen(
        [sys.executable, "-m", READER_MODULE], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.pid in reader_children()
        assert alive(psutil.Process(proc.pid))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # EOF before its arguments: the reader gives up
        proc.wait(timeout=30)
    assert proc.pid not in reader_children()
