"""Ctrl-C and SIGTERM stop `linkpulse run dataflow` at once, and a restart loses nothing.

Bytewax's ``cli_main`` waits inside Rust and never let Python's signal
handler run, so a SIGINT used to do nothing at all (the demo waited out its
grace period and killed the flow). The runner now keeps the main thread in
Python and exits on the signal, like a crash: the helper processes go with it
and the next run resumes from the last snapshot.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import psycopg
import pytest
from nats.aio.client import Client

from linkpulse.config import Settings
from linkpulse.store.migrate import migrate
from tests.test_dataflow_helpers import build_event_set, publish_set
from tests.test_dataflow_recovery import ROOT, flow_command, run_to_end

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELPERS = ("linkpulse.dataflows.jetstream_reader", "linkpulse.dataflows.events_writer")


def helpers_of(proc: psutil.Process) -> list[psutil.Process]:
    return [c for c in proc.children() if any(h in " ".join(c.cmdline()) for h in HELPERS)]


def gone(procs: list[psutil.Process], timeout: float) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return not alive


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
async def test_a_signal_stops_the_flow_and_a_restart_stores_every_event_once(
    nc: Client, nats_settings: Settings, pg_dsn: str, tmp_path: Path, sig: signal.Signals
) -> None:
    migrate(pg_dsn)
    events = build_event_set(nats_settings.subject_prefix, n=20_000, seed=5, late=5)
    last = await publish_set(nc, nats_settings, events)
    cmd, env = flow_command(nats_settings, pg_dsn, tmp_path / "recovery", last)
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        flow = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            while time.monotonic() < deadline and proc.poll() is None:
                (stored,) = conn.execute("SELECT count(*) FROM events").fetchone()  # type: ignore[misc]
                if stored > 0:
                    break
                time.sleep(0.02)
        assert proc.poll() is None, "the flow ended before the signal"
        helpers = helpers_of(flow)
        assert len(helpers) == 2  # its reader and its writer
        proc.send_signal(sig)
        code = proc.wait(timeout=60)  # a guard against a hang, not a speed bound
        assert code == 128 + sig
        assert "dataflow stopping" in (proc.stderr.read() if proc.stderr else "")
        assert gone(helpers, timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run_to_end(cmd, env)  # resumes from the last snapshot
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
    assert rows == (len(events.valid), len(events.valid))
