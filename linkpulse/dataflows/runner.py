"""Running a flow: recovery store, Prometheus endpoint, workers and processes.

``run_flow`` is what ``linkpulse run dataflow`` calls. It creates the Bytewax
recovery store on first use (one partition per worker of the whole cluster),
starts ``/metrics``, and hands the flow to Bytewax's ``cli_main`` (the same
entry point as ``python -m bytewax.run``), so ``-w``, ``-i``/``-a`` and the
snapshot interval mean what they mean there. ``spawn_local_cluster`` runs
``processes`` copies of the command on this machine, wired together on
loopback ports, like ``python -m bytewax.testing -p``.

>>> recovery_parts(Path("/nonexistent"))
0
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from linkpulse.dataflows.instrumentation import start_metrics_server
from linkpulse.errors import DataflowError
from linkpulse.logging import get_logger

__all__ = ["prepare_recovery", "recovery_parts", "run_flow", "spawn_local_cluster"]

log = get_logger(__name__)


def recovery_parts(db_dir: Path) -> int:
    """How many recovery partitions ``db_dir`` holds (0 if none or missing)."""
    if not db_dir.is_dir():
        return 0
    return len(list(db_dir.glob("part-*.sqlite3")))


def prepare_recovery(db_dir: Path, partitions: int, *, from_start: bool = False) -> None:
    """Create the recovery store if it is missing; wipe it first when ``from_start``.

    An existing store is kept whatever its partition count: Bytewax routes
    state by key over the partitions that exist, so any worker count can
    resume from it.
    """
    if partitions < 1:
        msg = f"the recovery store needs at least one partition, got {partitions}"
        raise ValueError(msg)
    if from_start and db_dir.exists():
        log.warning(
            "discarding recovery state: re-reading the stream from the start", dir=str(db_dir)
        )
        shutil.rmtree(db_dir)
    if recovery_parts(db_dir) == 0:
        db_dir.mkdir(parents=True, exist_ok=True)
        init_db_dir(db_dir, partitions)  # type: ignore[no-untyped-call]
        log.info("recovery store created", dir=str(db_dir), partitions=partitions)


def run_flow(
    flow: Dataflow,
    *,
    workers: int = 1,
    process_id: int | None = None,
    addresses: Sequence[str] | None = None,
    recovery_dir: Path | None = None,
    snapshot_interval: timedelta = timedelta(seconds=10),
    from_start: bool = False,
    metrics_port: int = 0,
) -> None:
    """Run ``flow`` in this process until its input ends (or forever)."""
    if workers < 1:
        msg = f"workers per process must be 1 or more, got {workers}"
        raise ValueError(msg)
    if (process_id is None) != (not addresses):
        msg = "a cluster needs both the process id (-i) and every process's address (-a)"
        raise ValueError(msg)
    processes = len(addresses) if addresses else 1
    recovery: RecoveryConfig | None = None
    if recovery_dir is not None:
        # Only the first process creates the store; the others find it made.
        if not process_id:
            prepare_recovery(recovery_dir, workers * processes, from_start=from_start)
        elif recovery_parts(recovery_dir) == 0:
            msg = f"no recovery store in {recovery_dir}; start process 0 first"
            raise DataflowError(msg)
        recovery = RecoveryConfig(str(recovery_dir))  # type: ignore[no-untyped-call]
    if metrics_port:
        start_metrics_server(metrics_port + (process_id or 0))
    log.info(
        "dataflow starting",
        flow=flow.flow_id,
        workers=workers,
        process=process_id,
        processes=processes,
        recovery=str(recovery_dir) if recovery_dir else None,
    )
    run = functools.partial(
        cli_main,
        flow,
        workers_per_process=workers,
        process_id=process_id,
        addresses=list(addresses) if addresses else None,
        epoch_interval=snapshot_interval,
        recovery_config=recovery,
    )
    if threading.current_thread() is threading.main_thread():
        _run_stoppable(run)
    else:  # signals are the main thread's; whoever runs us there handles them
        run()


def _run_stoppable(run: Callable[[], object]) -> None:
    """Run the flow in a thread so Ctrl-C and SIGTERM (``docker stop``) stop it.

    Bytewax's ``cli_main`` waits for its workers inside Rust, where Python
    never gets to run a signal handler: Ctrl-C did nothing. Here the main
    thread stays in Python and, on a signal, exits at once, as Bytewax's own
    stop is abrupt too: the flow resumes from its last snapshot, which is
    exactly what a crash gives (the recovery tests kill it with SIGKILL), and
    the helper processes see their stdin close and exit.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            failure.append(e)

    def stop(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        log.warning("dataflow stopping", signal=name, resume="from the last snapshot")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)

    worker = threading.Thread(target=target, name="lp-dataflow", daemon=True)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise failure[0]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def spawn_local_cluster(processes: int, argv: Sequence[str]) -> int:
    """Run ``processes`` copies of ``linkpulse <argv>`` as one cluster on loopback.

    Each copy gets ``-i k -a <all addresses>``; returns the first non-zero
    exit code (or 0). Ctrl-C or SIGTERM is passed on to every process.
    """
    if processes < 2:
        msg = f"a local cluster needs 2 or more processes, got {processes}"
        raise ValueError(msg)
    addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(processes))
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "linkpulse", *argv, "-i", str(k), "-a", addresses],
            env=os.environ.copy(),
        )
        for k in range(processes)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        forward(signal.SIGINT, None)
        codes = [child.wait() for child in children]
    finally:
        signal.signal(signal.SIGTERM, previous)
    return next((c for c in codes if c), 0)
