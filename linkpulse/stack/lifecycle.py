"""``up``, ``down`` and ``doctor``: decide per service, start or stop, report.

For each of NATS, Redis and PostgreSQL, ``up`` takes the first that works:

1. an embedded server this state folder started earlier and that still runs
   (so a second ``up`` is a no-op);
2. the configured server (``LINKPULSE_NATS_URL`` etc.), if it answers;
3. a new embedded server, on the port this service used last time (so clients
   that hold its URL reconnect; an error if another program took that port),
   else on a free loopback port.

The CLI (``linkpulse.cli.stack``) only renders what these functions return.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from linkpulse.config import Settings
from linkpulse.errors import StackError
from linkpulse.stack import embedded, embedded_pg
from linkpulse.stack.probes import Probe, probe
from linkpulse.stack.process import is_ours, stop
from linkpulse.stack.state import SERVICES, EmbeddedProcess, StackState, StateDir
from linkpulse.stack.urls import PgTarget
from linkpulse.store.jobs import Job, JobsReport
from linkpulse.store.jobs import check as check_jobs

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ServiceUse:
    """What ``up`` settled on for one service."""

    service: str
    source: str  # "configured" or "embedded"
    url: str
    version: str
    action: str  # "found" (configured), "reused" or "started" (embedded)
    pid: int | None = None
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StopResult:
    """What ``down`` did to one recorded process."""

    service: str
    pid: int
    port: int
    outcome: str  # "stopped", "not running", "killed (...)"


def configured_url(settings: Settings, service: str) -> str:
    """The URL the settings give for ``service``."""
    return {
        "nats": settings.nats_url,
        "redis": settings.redis_url,
        "postgres": settings.database_url,
    }[service]


def up(
    settings: Settings,
    state_dir: Path,
    *,
    timeout: float = embedded.DEFAULT_START_TIMEOUT,
    progress: Progress | None = None,
    new_ports: bool = False,
) -> list[ServiceUse]:
    """Make every service available; return what is used, in NATS, Redis, PostgreSQL order.

    A service started again reuses its recorded port unless ``new_ports``.

    ``settings`` should be read without the state folder's env file (the CLI
    passes ``load_settings(_env_file=None)``), so "configured" means what the
    user configured, not what an earlier ``up`` started.
    """
    say = progress or (lambda _msg: None)
    sd = StateDir(state_dir)
    with sd.locked():
        state = sd.load()
        uses: dict[str, ServiceUse] = {}
        started: list[EmbeddedProcess] = []
        try:
            for service in SERVICES:
                use = _reuse_or_configured(service, settings, state, timeout, say)
                if use is not None:
                    uses[service] = use
                    continue
                say(f"starting embedded {service}")
                last = None if new_ports else state.ports.get(service)
                taken = frozenset(p for s, p in state.ports.items() if s != service)
                taken |= {r.port for r in state.services.values()}
                rec = embedded.start(service, sd, configured_url(settings, service), taken, last)
                state.record(rec)
                started.append(rec)
            for rec in started:
                uses[rec.service] = _settle(rec, timeout, say, "started")
        finally:
            # Record whatever was started, even on failure, so `down` can stop it.
            sd.save(state, {s: r.url for s, r in state.services.items()})
    return [uses[s] for s in SERVICES]


def _reuse_or_configured(
    service: str, settings: Settings, state: StackState, timeout: float, say: Progress
) -> ServiceUse | None:
    rec = state.services.get(service)
    if rec is not None:
        if is_ours(rec):
            return _settle(rec, timeout, say, "reused")
        del state.services[service]  # it died or was stopped by hand: forget it
    url = configured_url(settings, service)
    say(f"probing configured {service}")
    found = probe(service, url)
    if not found.ok:
        return None
    if found.degraded:
        msg = (
            f"the configured NATS at {found.url} runs without JetStream; restart it with "
            "`nats-server -js`, or set LINKPULSE_NATS_URL to a closed port so that "
            "`linkpulse up` starts its own"
        )
        raise StackError(msg)
    return ServiceUse(service, "configured", url, found.version, "found", None, found.details)


def _settle(rec: EmbeddedProcess, timeout: float, say: Progress, action: str) -> ServiceUse:
    say(f"waiting for embedded {rec.service} on port {rec.port}")
    healthy: Probe = embedded.wait_healthy(
        rec, timeout, lambda s: say(f"waiting for embedded {rec.service} ({s:.0f}s)")
    )
    if rec.service == "postgres":
        embedded_pg.ensure_role_and_database(rec.port, PgTarget.from_dsn(rec.url))
        healthy = probe("postgres", rec.url)
        if not healthy.ok:
            msg = f"embedded postgres answers but not with its DSN: {healthy.error}"
            raise StackError(msg)
    return ServiceUse(
        rec.service, "embedded", rec.url, healthy.version, action, rec.pid, healthy.details
    )


def down(state_dir: Path, *, purge: bool = False) -> list[StopResult]:
    """Stop what ``up`` started in ``state_dir`` (never anything else); forget it.

    The services' ports stay recorded for the next ``up``; with ``purge`` they
    are forgotten and the embedded services' data folders deleted too.
    """
    sd = StateDir(state_dir)
    if not sd.root.exists():
        return []
    results: list[StopResult] = []
    with sd.locked():
        state = sd.load()
        recs = [state.services[s] for s in SERVICES if s in state.services]
        try:
            # In parallel: PostgreSQL's shutdown checkpoint need not wait for the others.
            with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
                for rec, outcome in zip(recs, pool.map(stop, recs), strict=True):
                    results.append(StopResult(rec.service, rec.pid, rec.port, outcome))
                    del state.services[rec.service]
            if purge:
                state.ports.clear()
        finally:
            sd.save(state, {s: r.url for s, r in state.services.items()})
        if purge:
            for service in SERVICES:
                shutil.rmtree(sd.root / service, ignore_errors=True)
    return results


@dataclass(frozen=True)
class DoctorRow:
    """One service as ``doctor`` sees it; for PostgreSQL, the store's scheduled jobs too."""

    probe: Probe
    source: str
    hint: str = ""
    jobs: JobsReport | None = None

    @property
    def failed(self) -> bool:
        """The service itself is unusable (unreachable, or NATS without JetStream)."""
        return not self.probe.ok or self.probe.degraded

    @property
    def failing_jobs(self) -> list[Job]:
        """Scheduled jobs whose last run failed (the store works, its upkeep does not)."""
        return self.jobs.failing if self.jobs is not None else []


def doctor(settings: Settings, state_dir: Path) -> list[DoctorRow]:
    """Probe each service at the URL linkpulse commands would use; say what is missing.

    For a reachable PostgreSQL it also reads the store's scheduled jobs
    (TimescaleDB's policies, `linkpulse db maintain`) and their health.
    """
    state = StateDir(state_dir).load()
    rows = []
    for service in SERVICES:
        url = configured_url(settings, service)
        rec = state.services.get(service)
        source = "embedded" if rec is not None and rec.url == url else "configured"
        found = probe(service, url)
        report = None
        if service == "postgres" and found.ok:
            every = timedelta(seconds=settings.store_maintain_interval_s)
            report = check_jobs(url, maintain_every=every)
        rows.append(DoctorRow(found, source, _hint(found, source, rec), report))
    return rows


def _hint(found: Probe, source: str, rec: EmbeddedProcess | None) -> str:
    if not found.ok:
        if source == "embedded" and rec is not None and not is_ours(rec):
            return "the embedded server is not running: run `linkpulse up`"
        return "run `linkpulse up` (starts an embedded server), or fix the URL"
    if found.degraded:
        return "JetStream is off: restart nats-server with -js, or run `linkpulse up`"
    tier = found.details.get("timescaledb", "")
    if tier.startswith("available"):
        return "CREATE EXTENSION timescaledb for hypertables and continuous aggregates"
    if tier and not tier.startswith("installed"):
        return "none needed: the store uses native partitions and rollup tables instead"
    return ""
