"""Embedded PostgreSQL: a cluster under the state folder, and the role and database the DSN names.

The cluster is made once with ``initdb`` (trust authentication: it only
listens on 127.0.0.1 and a socket inside the state folder) and reused by later
``up`` runs. When we run as root, PostgreSQL (which refuses root) runs as an
unprivileged account; see :func:`linkpulse.stack.process.pg_run_as`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

from linkpulse.errors import StackError
from linkpulse.stack import binaries
from linkpulse.stack.process import hand_over
from linkpulse.stack.urls import PgTarget

SUPERUSER = "postgres"
# Unix socket paths are limited to 107 bytes; the file is ".s.PGSQL.<port>" inside the dir.
_MAX_SOCKET_DIR = 107 - len("/.s.PGSQL.65535")


def socket_dir(service_dir: Path, run_as: str) -> Path:
    """The socket folder: inside the state folder unless its path is too long for a socket."""
    wanted = service_dir / "socket"
    if len(str(wanted.resolve())) > _MAX_SOCKET_DIR:
        wanted = Path(tempfile.mkdtemp(prefix="linkpulse-pg-"))
    wanted.mkdir(parents=True, exist_ok=True)
    hand_over(wanted, run_as)
    return wanted


def ensure_cluster(service_dir: Path, run_as: str) -> Path:
    """``initdb`` the data folder unless it already holds a cluster; return the folder."""
    data = service_dir / "data"
    if (data / "PG_VERSION").exists():
        return data
    pg = binaries.postgres()
    hand_over(service_dir, run_as)
    argv = [
        str(pg.initdb),
        "-D",
        str(data),
        "-U",
        SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
        "--no-instructions",
        # Skip the final fsync of ~1,000 new files: seconds on a busy disk, and a
        # local dev cluster lost to a power cut right after initdb is simply re-made.
        "--no-sync",
    ]
    log = service_dir / "initdb.log"
    with log.open("wb") as out:
        # stdout to a file, not a pipe: a pipe could be inherited and block (see process.py).
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=service_dir,
            user=run_as or None,
            group=(run_as or None),
            extra_groups=[] if run_as else None,
            check=False,
            timeout=120,
        )
    if result.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        msg = (
            f"initdb failed (exit {result.returncode}) for {data}: {' | '.join(tail)}; "
            f"see {log}, remove {data} and run `linkpulse up` again"
        )
        raise StackError(msg)
    return data


def wait_for_killed_postmaster(data: Path, timeout: float = 15.0) -> None:
    """Wait until a killed postmaster named by ``postmaster.pid`` is gone, zombie included.

    After a SIGKILL the old process lingers as a zombie until its parent (init
    in a container, ~1 s here) reaps it; meanwhile a new postgres sees the pid
    in the lock file answer and refuses to start. A live postmaster is left to
    postgres itself, which refuses with a clear message.
    """
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                return
            parent = proc.ppid()
            if parent == os.getpid():
                os.waitpid(pid, os.WNOHANG)  # our own child (in-process callers): reap it
        except (psutil.NoSuchProcess, ChildProcessError):
            return
        if time.monotonic() > deadline:
            msg = (
                f"the killed PostgreSQL (pid {pid}) is still a zombie after {timeout:.0f}s, "
                f"so a new one would refuse {data}: its parent (pid {parent}) does not reap "
                "it; end that parent or wait, then run `linkpulse up` again"
            )
            raise StackError(msg)
        time.sleep(0.05)


def postgres_argv(data: Path, port: int, sockets: Path) -> list[str]:
    """The ``postgres`` command line for the embedded server."""
    pg = binaries.postgres()
    return [
        str(pg.postgres),
        "-D",
        str(data),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-k",
        str(sockets),
    ]


def ensure_role_and_database(port: int, target: PgTarget) -> None:
    """Create the DSN's role (a superuser, as on a dev machine) and database if missing."""
    admin = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            if target.user != SUPERUSER:
                exists = conn.execute(
                    "select 1 from pg_roles where rolname = %s", (target.user,)
                ).fetchone()
                if not exists:
                    conn.execute(
                        sql.SQL("create role {} login superuser").format(
                            sql.Identifier(target.user)
                        )
                    )
            if target.password is not None:
                conn.execute(
                    sql.SQL("alter role {} password {}").format(
                        sql.Identifier(target.user), sql.Literal(target.password)
                    )
                )
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (target.dbname,)
            ).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("create database {} owner {}").format(
                        sql.Identifier(target.dbname), sql.Identifier(target.user)
                    )
                )
    except psycopg.Error as e:
        msg = (
            f"could not create role {target.user!r} / database {target.dbname!r} "
            f"on the embedded PostgreSQL at port {port}: {e}"
        )
        raise StackError(msg) from e
