"""The running pipeline of the dashboard's browser tests (``tests/test_dashboard_browser.py``).

:class:`Pipeline`: the dataflow, the API and the simulator as real processes,
started with the commands ``linkpulse demo`` starts (``dataflow_args``,
``api_args``, ``api_env``), on a database, NATS stream and Redis prefix of
their own on the machine's services. The simulator first backfills a stretch
of history (as fast as NATS takes it) with a payment failure spike in it, so
the charts have a past, the detectors are warm and the example alert rule
``payment_failures_high`` (deploy/rules/payments.yaml) has fired; then it
publishes live until stopped. The API can be killed and started again on the
same port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg

from linkpulse.api.auth.keys import KeyStore
from linkpulse.api.auth.roles import Role
from linkpulse.bus.live import live_channels
from linkpulse.cli.demo import api_args, api_env, dataflow_args, maintain_args, maintain_env
from linkpulse.config import Settings
from linkpulse.stack.urls import free_port
from linkpulse.store import roles
from linkpulse.store.migrate import migrate
from tests.fix_db import fresh_database
from tests.fix_nats import NATS_URL
from tests.fix_redis import REDIS_URL
from tests.proc_helpers import wait_until

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "rules" / "payments.yaml"
TENANT = "acme"
SELLERS = 6
# Minutes of simulated history before live traffic, and where the spike sits in it.
HISTORY_MIN = 40
SPIKE = "failure_spike@26m+10m:acme=0.4"
RATE = 12.0  # events/s, backfill and live
# Short warm-up: the history is 40 minutes, not production's day.
DETECTORS = "payment_failure_rate: {grace: 12}\n"


@dataclass
class Pipeline:
    """One module's pipeline (see the module docstring); ``start()``, then ``stop()``."""

    root: Path
    database_url: str
    seed: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    api_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    history_start: datetime | None = None

    @property
    def settings(self) -> Settings:
        return Settings(
            nats_url=NATS_URL,
            redis_url=REDIS_URL,
            database_url=self.database_url,
            stream_name=f"LPTEST_{self.tag.upper()}",
            subject_prefix=f"lpt{self.tag}",
            redis_key_prefix=self.redis_key_prefix,
            state_dir=self.root,
        )

    @property
    def redis_key_prefix(self) -> str:
        return f"lpt:{self.tag}:"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        """The processes' environment: this pipeline's services only, nothing inherited."""
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINKPULSE_")}
        env.update(
            LINKPULSE_NATS_URL=s.nats_url,
            LINKPULSE_REDIS_URL=s.redis_url,
            LINKPULSE_DATABASE_URL=s.database_url,
            LINKPULSE_STREAM_NAME=s.stream_name,
            LINKPULSE_SUBJECT_PREFIX=s.subject_prefix,
            LINKPULSE_REDIS_KEY_PREFIX=self.redis_key_prefix,  # the query cache's watermarks
            LINKPULSE_STATE_DIR=str(self.root),
            LINKPULSE_METRICS_PORT="0",
            LINKPULSE_LOG_LEVEL="WARNING",
            # the dashboard's reconnect test restarts the API: revalidate quickly
            LINKPULSE_STREAM_REVALIDATE_S="2",
        )
        return env

    def spawn(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> None:
        log = (self.root / f"{name}.log").open("ab")
        log.write(f"\n=== start at {datetime.now(UTC).isoformat()}\n".encode())
        log.flush()
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "linkpulse", *args],
            env={**self.env(), **(extra_env or {})},
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )

    def log_tail(self, name: str, chars: int = 2000) -> str:
        try:
            return (self.root / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # -- the parts

    def prepare_store(self) -> None:
        migrate(self.database_url)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            defaults = Settings()
            roles.setup(
                conn, analyst_role=defaults.analyst_role, sql_login=defaults.analyst_sql_login
            )
        self.keys = in_thread(make_keys(self.database_url))

    def start_flow(self) -> None:
        detectors = self.root / "detectors.yaml"
        detectors.write_text(DETECTORS)
        args = dataflow_args(
            self.root, self.redis_key_prefix, rules=[RULES], detectors=detectors,
            snapshot_interval_s=1,
        )  # fmt: skip
        self.spawn("dataflow", *args)

    def start_maintain(self) -> None:
        # its passes logged: when the tiles lag, the log says whether the rollups did
        env = {**maintain_env(self.redis_key_prefix), "LINKPULSE_LOG_LEVEL": "INFO"}
        self.spawn("maintain", *maintain_args(), extra_env=env)

    def start_api(self) -> None:
        self.spawn("api", *api_args(self.api_port), extra_env=api_env(self.redis_key_prefix))
        assert wait_until(self.api_ready, 240, 0.2), self.log_tail("api")

    def api_ready(self) -> bool:
        proc = self.procs["api"]
        if proc.poll() is not None:
            return True  # reported by the caller's assertion on the log
        try:
            with httpx.Client(base_url=self.api_url, timeout=5) as c:
                resp = c.get("/readyz")
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def kill_api(self) -> None:
        proc = self.procs["api"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def simulate(self, *args: str, name: str = "simulate") -> None:
        common = ["simulate", "--quiet", "--tenants", "1", "--sellers", str(SELLERS)]
        common += ["--rate", f"{RATE:g}", "--no-seasonality"]
        self.spawn(name, *common, *args)

    def backfill(self) -> None:
        """History up to now, with the spike; waits until the simulator has published it."""
        start = (datetime.now(UTC) - timedelta(minutes=HISTORY_MIN)).replace(microsecond=0)
        self.history_start = start
        self.simulate(
            "--start", start.isoformat(), "--duration", f"{HISTORY_MIN}m",
            "--seed", str(self.seed), "--anomaly", SPIKE, name="backfill",
        )  # fmt: skip
        proc = self.procs["backfill"]
        assert proc.wait(300) == 0, self.log_tail("backfill")

    def start_live(self) -> None:
        self.simulate("--seed", str(self.seed + 1), name="live")

    def start(self) -> None:
        self.prepare_store()
        self.start_flow()
        self.start_maintain()
        self.start_api()
        self.backfill()
        self.start_live()

    def alive(self) -> dict[str, int | None]:
        return {name: p.poll() for name, p in self.procs.items()}

    def stop(self) -> None:
        for name in ("live", "api", "maintain", "dataflow"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def drop_streams(self) -> None:
        """Delete the NATS streams this pipeline made (ensure_streams and the live channels)."""
        import nats
        from nats.js.errors import NotFoundError

        s = self.settings

        async def drop() -> None:
            nc = await nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False)
            try:
                names = [s.stream_name, f"{s.stream_name}_DLQ"]
                names += [c.stream for c in live_channels(s)]
                for name in dict.fromkeys(names):
                    try:
                        await nc.jetstream().delete_stream(name)
                    except NotFoundError:
                        pass
            finally:
                await nc.close()

        in_thread(drop())

    def drop_redis_keys(self) -> None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{self.redis_key_prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on a thread of its own: Playwright's sync API keeps an event
    loop running on the test's thread, where ``asyncio.run`` refuses to start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def seller_id(i: int) -> str:
    """The simulator's i-th seller of the tenant (``acme-s0001``)."""
    return f"{TENANT}-s{i:04d}"


KEYS: dict[str, tuple[Role, str | None]] = {
    "admin": (Role.ADMIN, None),
    "operator": (Role.OPERATOR, None),
    "viewer": (Role.VIEWER, None),
    "seller": (Role.SELLER, seller_id(1)),
}


async def make_keys(dsn: str) -> dict[str, str]:
    """A key of each of ``KEYS`` for the tenant, valid a day; secrets by name."""
    until = datetime.now(UTC) + timedelta(days=1)
    out = {}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for name, (role, seller) in KEYS.items():
            key, _ = await KeyStore(conn).create(
                role=role, tenant=TENANT, seller=seller, name=f"browser-{name}", expires_at=until
            )
            out[name] = key.secret
    return out


@contextmanager
def running_pipeline(root: Path, seed: int) -> Iterator[Pipeline]:
    """A started :class:`Pipeline` on a fresh database; everything removed afterwards."""
    with fresh_database("browser_") as dsn:
        pipe = Pipeline(root=root, database_url=dsn, seed=seed)
        try:
            pipe.start()
            yield pipe
        finally:
            pipe.stop()
            pipe.drop_streams()
            pipe.drop_redis_keys()
