"""Detached server processes: start one that outlives us, recognise it later, stop it.

A server started by ``linkpulse up`` runs in its own session (no controlling
terminal, no shared process group), with stdin from /dev/null and its output
in a log file, so it survives the ``up`` process and its shell. Identity is
checked with psutil before any signal: the pid must still run the recorded
binary, mention the recorded port, and have the recorded start time — a pid
reused by another program is never touched.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import time
from pathlib import Path

import psutil

from linkpulse.stack.state import EmbeddedProcess

# PostgreSQL: SIGINT is "fast shutdown" (abort clients, checkpoint, exit); SIGTERM
# would wait for every client to disconnect. NATS and Redis exit cleanly on SIGTERM.
STOP_SIGNALS: dict[str, signal.Signals] = {"postgres": signal.SIGINT}
# Unprivileged accounts PostgreSQL may run as when we are root (it refuses root).
PG_RUN_AS_CANDIDATES = ("postgres", "nobody")


def spawn_detached(argv: list[str], log_file: Path, cwd: Path, run_as: str = "") -> psutil.Process:
    """Start ``argv`` in a new session, output appended to ``log_file``; return it running."""
    uid: int | None = None
    gid: int | None = None
    if run_as:
        entry = pwd.getpwnam(run_as)
        uid, gid = entry.pw_uid, entry.pw_gid
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            user=uid,
            group=gid,
            extra_groups=[] if run_as else None,
        )
    # Forget the Popen object on purpose: the server must not be tied to it, and
    # psutil reaps it later if it happens to be our child (in-process callers, tests).
    return psutil.Process(proc.pid)


START_TIME_SLACK_S = 5.0
"""How far a process's start time may read from the recorded one and still be it."""


def is_ours(rec: EmbeddedProcess) -> bool:
    """Whether ``rec.pid`` is still the very process ``linkpulse up`` started."""
    try:
        proc = psutil.Process(rec.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # The kernel's boot time (``btime``) is in whole seconds and moves when
        # the clock is adjusted (NTP just after boot), so the same process can
        # read a second or so apart; a reused pid starts far later than that.
        if rec.create_time and abs(proc.create_time() - rec.create_time) > START_TIME_SLACK_S:
            return False
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    if not cmdline:
        return False
    # Redis rewrites its title to "redis-server 127.0.0.1:PORT", keeping argv[0].
    first = cmdline[0].split(" ", 1)[0]
    if Path(first).name != Path(rec.binary).name:
        return False
    return str(rec.port) in " ".join(cmdline)


def is_alive(pid: int | psutil.Process) -> bool:
    """Whether ``pid`` runs and is not a zombie.

    Given a ``psutil.Process``, also that its pid was not reused since.
    """
    try:
        proc = pid if isinstance(pid, psutil.Process) else psutil.Process(pid)
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself listens on TCP ``port``.

    A probe alone could be answered by another server that took the port
    first; this makes sure the answer comes from the process we started.
    """
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def stop(rec: EmbeddedProcess, timeout: float = 15.0) -> str:
    """Stop the recorded process if it is still ours; say what happened."""
    if not is_ours(rec):
        return "not running"
    proc = psutil.Process(rec.pid)
    try:
        proc.send_signal(STOP_SIGNALS.get(rec.service, signal.SIGTERM))
    except psutil.NoSuchProcess:
        return "stopped"
    if not _wait_gone(proc, timeout):
        proc.kill()
        _wait_gone(proc, 5.0)
        return f"killed (did not stop within {timeout:.0f}s)"
    return "stopped"


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    # Poll rather than proc.wait(): for a process that is not our child psutil
    # backs off to long sleeps, making `down` seconds slower than the servers.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                # Exited. Reap it if it is our child (in-process callers); otherwise
                # its parent or init does (some container inits never do: not our job).
                if proc.ppid() == os.getpid():
                    proc.wait(1)
                return True
        except (psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
            return True
        time.sleep(0.02)
    return False


def pg_run_as() -> str:
    """The account PostgreSQL runs under: ours, or an unprivileged one when we are root."""
    if os.geteuid() != 0:
        return ""
    for name in PG_RUN_AS_CANDIDATES:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return ""


def hand_over(path: Path, run_as: str) -> None:
    """Give ``path`` to ``run_as`` and let that account reach it through every parent.

    Only the search (x) bit is added for others on parents that lack it, so
    nothing becomes listable or readable that was not before.
    """
    if not run_as:
        return
    entry = pwd.getpwnam(run_as)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_uid == entry.pw_uid or st.st_mode & stat.S_IXOTH:
            continue
        parent.chmod(st.st_mode | stat.S_IXOTH)


def listener_of(port: int) -> str:
    """Who listens on TCP ``port``, as far as we may see: ``"pid 42 (redis-server)"``.

    Other users' processes show no pid unless we are root; then it says so.
    """
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return "another program"
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            if c.pid is None:
                return "another user's program"
            try:
                return f"pid {c.pid} ({psutil.Process(c.pid).name()})"
            except psutil.Error:
                return f"pid {c.pid}"
    return "another program"
