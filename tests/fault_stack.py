"""Helpers of the fault suite (``tests/test_faults.py``).

* :class:`FaultStack`: NATS, Redis and PostgreSQL started by ``linkpulse up``'s
  own code (``linkpulse.stack.lifecycle``) in a state folder the test owns,
  the configured URLs pointing at closed ports so the machine's services are
  never used; kill, stop and restart one service.
* :class:`Flow`: ``linkpulse run dataflow`` as a subprocess on that stack, its
  reader and writer helper processes, its log.
* :class:`Publisher`: a seeded publisher on its own thread, with a controlled
  event clock (event times advance by a fixed step per event, so windows close
  at a pace the test chooses, and can jump), some bad messages, some producer
  retries; it remembers every acknowledged message.
* :func:`check_store`: the store against what was sent (events exactly once,
  every closed window against a brute-force computation, dead letters once).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import nats.errors
import psutil
import psycopg
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from linkpulse.bus.stream import dead_letter_stream_name, ensure_streams
from linkpulse.config import Settings
from linkpulse.dataflows.live_metrics import FlowOptions
from linkpulse.operators import MetricsConfig
from linkpulse.operators.metrics import dims_key
from linkpulse.stack import embedded, lifecycle
from linkpulse.stack.process import is_alive, is_ours, stop
from linkpulse.stack.state import EmbeddedProcess, StateDir
from linkpulse.stack.urls import free_port
from tests.proc_helpers import wait_until
from tests.test_dataflow_helpers import event, group_by_minute, windows_table

ROOT = Path(__file__).resolve().parents[1]
READER_MODULE = "linkpulse.dataflows.jetstream_reader"
WRITER_MODULE = "linkpulse.dataflows.events_writer"
# What `linkpulse run dataflow` computes: the flow's default metrics config.
FLOW_METRICS: MetricsConfig = FlowOptions().metrics
CHECKED_METRICS = ("orders", "gmv")
TENANTS = ("t0", "t1", "t2")
SELLERS = ("s0", "s1")


def wait_for(check: Callable[[], bool], timeout: float, poll_s: float = 0.1) -> float | None:
    """Seconds until ``check()`` came true, or ``None`` if it did not within ``timeout``."""
    started = time.monotonic()
    return time.monotonic() - started if wait_until(check, timeout, poll_s) else None


# ---------------------------------------------------------------- the stack


class FaultStack:
    """The embedded services of one test module, under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Closed loopback ports: `up` finds nothing configured and starts its own.
        self.configured = Settings(
            nats_url=f"nats://127.0.0.1:{free_port()}",
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/faults",
            state_dir=root,
        )
        self.ports: dict[str, int] = {}

    def up(self) -> None:
        """``linkpulse up`` for the state folder; remembers the first ports it used."""
        uses = lifecycle.up(self.configured, self.root)
        for use in uses:
            if use.source != "embedded":
                msg = f"{use.service} is not embedded ({use.url}): the suite must own its stack"
                raise AssertionError(msg)
        for service, rec in self.records().items():
            self.ports.setdefault(service, rec.port)

    def records(self) -> dict[str, EmbeddedProcess]:
        return dict(StateDir(self.root).load().services)

    def settings(self) -> Settings:
        """Settings pointing at the embedded services."""
        recs = self.records()
        return Settings(
            nats_url=recs["nats"].url,
            redis_url=recs["redis"].url,
            database_url=recs["postgres"].url,
            state_dir=self.root,
        )

    @property
    def dsn(self) -> str:
        return self.records()["postgres"].url

    def kill(self, service: str) -> None:
        """SIGKILL the embedded ``service`` and wait until it is gone."""
        rec = self.records()[service]
        proc = psutil.Process(rec.pid)
        proc.send_signal(signal.SIGKILL)
        _reap(proc)

    def stop(self, service: str) -> str:
        """Stop it the way ``linkpulse down`` does (PostgreSQL: fast shutdown)."""
        return stop(self.records()[service])

    def restart(self, service: str) -> str | None:
        """``linkpulse up`` again; the problem if ``service`` came back on another port.

        In that case the new server is replaced by one on the recorded port
        (with the same stack code), so the faults after this one still run.
        """
        self.up()
        rec = self.records()[service]
        want = self.ports[service]
        if rec.port == want:
            return None
        problem = (
            f"`linkpulse up` restarted the embedded {service} on port {rec.port}, not on its "
            f"recorded port {want}: the flow and publisher, configured with the old URL, "
            "cannot reconnect (issue 9, section 1.6)"
        )
        stop(rec)
        sd = StateDir(self.root)
        with sd.locked():
            state = sd.load()
            url = lifecycle.configured_url(self.configured, service)
            if service == "nats":
                fixed = embedded.start_nats(sd, want)
            elif service == "redis":
                fixed = embedded.start_redis(sd, want, url)
            else:
                fixed = embedded.start_postgres(sd, want, url)
            state.services[service] = fixed
            sd.save(state, {s: r.url for s, r in state.services.items()})
        embedded.wait_healthy(fixed)
        return problem

    def down(self) -> None:
        """Stop everything recorded; SIGKILL what would not stop."""
        try:
            lifecycle.down(self.root)
        finally:
            for rec in self.records().values():
                if is_ours(rec):
                    os.kill(rec.pid, signal.SIGKILL)


def _reap(proc: psutil.Process, timeout: float = 10) -> None:
    try:
        proc.wait(timeout)  # reaps it when it is our child (the stack was started here)
    except (psutil.NoSuchProcess, ChildProcessError):
        pass


# ---------------------------------------------------------------- the flow


class Flow:
    """``linkpulse run dataflow`` on the stack, restartable, its output in ``log``."""

    def __init__(self, stack: FaultStack, work: Path, redis_prefix: str) -> None:
        self.stack = stack
        self.recovery = work / "recovery"
        self.log = work / "flow.log"
        self.redis_prefix = redis_prefix
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> tuple[list[str], dict[str, str]]:
        settings = self.stack.settings()
        # Nothing inherited: the flow must see only the stack the test owns.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINKPULSE_")}
        env.update(
            LINKPULSE_NATS_URL=settings.nats_url,
            LINKPULSE_REDIS_URL=settings.redis_url,
            LINKPULSE_DATABASE_URL=settings.database_url,
            LINKPULSE_STATE_DIR=str(self.stack.root),
            LINKPULSE_METRICS_PORT="0",
            LINKPULSE_LOG_LEVEL="WARNING",
        )
        cmd = [
            sys.executable,
            "-m",
            "linkpulse",
            "run",
            "dataflow",
            "--recovery-dir",
            str(self.recovery),
            "--snapshot-interval",
            "1",
            "--redis-prefix",
            self.redis_prefix,
        ]
        return cmd, env

    def start(self) -> None:
        cmd, env = self.command()
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n=== start {self.starts} at {datetime.now(UTC).isoformat()}\n".encode())
            self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=out)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def helper(self, module: str, timeout: float = 60) -> psutil.Process:
        """The flow's child process running ``python -m module`` (waits for it to start)."""
        found: list[psutil.Process] = []

        def look() -> bool:
            assert self.proc is not None
            if not self.alive():
                return True
            for child in psutil.Process(self.proc.pid).children():
                try:
                    if module in child.cmdline():
                        found.append(child)
                        return True
                except psutil.NoSuchProcess:
                    continue
            return False

        wait_for(look, timeout)
        assert found, f"the flow has no {module} process: {self.log_tail()}"
        return found[0]

    def helpers(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def last_run_log(self) -> str:
        """The log of the latest start only."""
        text = self.log.read_text(errors="replace")
        return text[text.rfind("\n=== start ") :]

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(20) is None:
                self.kill()


# ---------------------------------------------------------------- the publisher


@dataclass(frozen=True)
class Sent:
    """One valid event as acknowledged by JetStream."""

    tenant: str
    event_id: str
    kind: str
    seller: str
    t: float  # event time, seconds since the epoch
    amount: float


@dataclass
class _Out:
    subject: str
    payload: bytes
    msg_id: str
    sent: Sent | None  # None: a bad message


class Publisher:
    """Seeded publisher on its own thread and event loop (see the module docstring).

    Event times start at ``start`` and advance by ``step_s`` per event (plus a
    seeded jitter of up to ``jitter_s``, well inside the allowed lateness), so
    the stream's event time runs ``rate * step_s`` times faster than the wall
    clock. Every message carries a ``Nats-Msg-Id``, bad ones too, so a publish
    retried across a broker restart is stored once.
    """

    def __init__(
        self,
        settings: Settings,
        seed: int,
        *,
        start: datetime,
        rate: float = 200.0,
        step_s: float = 0.1,
        jitter_s: float = 2.0,
        bad_ratio: float = 0.01,
        retry_ratio: float = 0.02,
    ) -> None:
        self.settings = settings
        self.rng = random.Random(seed)
        self.rate = rate
        self.step_s = step_s
        self.jitter_s = jitter_s
        self.bad_ratio = bad_ratio
        self.retry_ratio = retry_ratio
        self.clock = start.timestamp()
        self.valid: list[Sent] = []
        self.bad: list[bytes] = []
        self.publish_failures = 0
        self._n = 0
        self._force_bad = 0
        self._lock = threading.Lock()
        self._paused = threading.Event()
        self._idle = threading.Event()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._js: JetStreamContext | None = None
        self._nc: NATS | None = None
        self._thread = threading.Thread(target=self._run, name="fault-publisher", daemon=True)

    # -- control, from the test's thread

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            msg = f"the publisher did not connect: {self._error!r}"
            raise AssertionError(msg)

    def pause(self, timeout: float = 120) -> None:
        """Stop publishing; returns once the message in flight is acknowledged."""
        self._idle.clear()
        self._paused.set()
        if not self._idle.wait(timeout):
            msg = f"the publisher did not pause within {timeout:.0f}s (broker down?)"
            raise AssertionError(msg)
        self.raise_error()

    def resume(self) -> None:
        self._paused.clear()

    def burst(self, n: int, step_s: float) -> float:
        """Publish ``n`` messages as fast as possible; the seconds the publishing took."""
        assert self._loop is not None and self._paused.is_set(), "pause() before a burst"
        future = asyncio.run_coroutine_threadsafe(self._burst(n, step_s), self._loop)
        return future.result(300)

    def send_bad(self, n: int = 1) -> None:
        """Make the next ``n`` messages bad ones (a dead letter at a chosen moment)."""
        with self._lock:
            self._force_bad += n

    def jump(self, seconds: float) -> None:
        """Move the event clock forward: a stretch of event time with no events at all."""
        with self._lock:
            self.clock += seconds

    def snapshot(self) -> tuple[list[Sent], list[bytes]]:
        with self._lock:
            return list(self.valid), list(self.bad)

    @property
    def valid_count(self) -> int:
        with self._lock:
            return len(self.valid)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)

    def raise_error(self) -> None:
        if self._error is not None:
            msg = f"the publisher failed: {self._error!r}"
            raise AssertionError(msg)

    # -- the thread

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to the test by raise_error()
            self._error = e
            self._ready.set()
            self._idle.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        nc = await nats.connect(
            self.settings.nats_url,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=2,
        )
        self._nc = nc
        js = self._js = nc.jetstream()
        await ensure_streams(js, self.settings)
        self._ready.set()
        tick = 0.05
        try:
            while not self._stopping.is_set():
                if self._paused.is_set():
                    self._idle.set()
                    await asyncio.sleep(0.01)
                    continue
                began = time.monotonic()
                for _ in range(max(1, round(self.rate * tick))):
                    if self._paused.is_set():
                        break
                    await self._publish(js, self._next(self.step_s))
                await asyncio.sleep(max(0.0, tick - (time.monotonic() - began)))
        finally:
            await nc.close()

    def _next(self, step_s: float) -> _Out:
        rng = self.rng
        self._n += 1
        n = self._n
        prefix = self.settings.subject_prefix
        with self._lock:
            forced = self._force_bad > 0
            self._force_bad -= forced
        if rng.random() < self.bad_ratio or forced:
            kind = rng.choice(("json", "fields", "type"))
            payload = {
                "json": f"{{not json {n}".encode(),
                "fields": json.dumps({"type": "order_placed", "n": n}).encode(),
                "type": json.dumps({"type": "nope", "n": n}).encode(),
            }[kind]
            return _Out(f"{prefix}.events.t9.order_placed", payload, f"bad-{n}", None)
        with self._lock:
            self.clock += step_s
            t = self.clock + rng.uniform(-self.jitter_s, self.jitter_s)
        tenant = rng.choice(TENANTS)
        kind = "payment_settled" if rng.random() < 0.3 else "order_placed"
        seller = rng.choice(SELLERS)
        amount = round(rng.uniform(1, 100), 2)
        when = datetime.fromtimestamp(t, UTC)
        ev = event(n, when, tenant, kind, seller, amount)
        # The stored event time is the payload's (microseconds): remember exactly that.
        stored_t = datetime.fromisoformat(str(ev["event_time"])).timestamp()
        sent = Sent(tenant, str(ev["event_id"]), kind, seller, stored_t, amount)
        subject = f"{prefix}.events.{tenant}.{kind}"
        return _Out(subject, json.dumps(ev).encode(), f"{tenant}/{ev['event_id']}", sent)

    async def _publish(self, js: JetStreamContext, out: _Out) -> None:
        """Publish until acknowledged (the broker may be down), then remember it."""
        times = 2 if self.rng.random() < self.retry_ratio else 1  # a producer's retry
        for _ in range(times):
            while True:
                try:
                    await js.publish(
                        out.subject,
                        out.payload,
                        timeout=2,
                        stream=self.settings.stream_name,
                        headers={"Nats-Msg-Id": out.msg_id},
                    )
                    break
                except (nats.errors.Error, TimeoutError, OSError):
                    self.publish_failures += 1
                    if self._stopping.is_set():
                        return
                    await asyncio.sleep(0.2)
        self._remember(out)

    def _remember(self, out: _Out) -> None:
        with self._lock:
            if out.sent is None:
                self.bad.append(out.payload)
            else:
                self.valid.append(out.sent)

    async def _burst(self, n: int, step_s: float) -> float:
        """Core-NATS publishes back to back (no waiting for acks), then confirm them."""
        assert self._js is not None and self._nc is not None
        js, nc, stream = self._js, self._nc, self.settings.stream_name
        outs = [self._next(step_s) for _ in range(n)]  # built first: publish as fast as we can
        first = (await js.stream_info(stream)).state.last_seq + 1
        started = time.monotonic()
        for out in outs:
            await nc.publish(out.subject, out.payload, headers={"Nats-Msg-Id": out.msg_id})
        await nc.flush(30)
        took = time.monotonic() - started

        async def stored() -> int:
            return int((await js.stream_info(stream)).state.last_seq) - first + 1

        deadline = time.monotonic() + 30
        while await stored() < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if await stored() == n:  # every id was new, so each message is one sequence
            for out in outs:
                self._remember(out)
        else:  # some did not arrive: publish each with an ack (the ids drop the doubles)
            for out in outs:
                await self._publish(js, out)
        return took


# ---------------------------------------------------------------- the checks


WindowKey = tuple[str, str, str, str, float]  # tenant, metric, dims_key, window, start


def _metric(kind: str) -> str:
    return "orders" if kind == "order_placed" else "gmv"


def brute_force_windows(
    sent: Iterable[Sent], config: MetricsConfig = FLOW_METRICS
) -> dict[WindowKey, tuple[int, float]]:
    """Count and sum of every window of the orders and gmv series, from the events sent.

    Every window starts and ends on a multiple of the pane (10 s), so events
    are first summed per pane; a window is then the sum of the panes it
    covers (by prefix sums over each series' panes): the same result as adding
    each event to each of its windows, in a fraction of the time.

    >>> w = brute_force_windows([Sent("t0", "e1", "order_placed", "s0", 65.0, 5.0)])
    >>> w[("t0", "orders", "", "1m", 60.0)], w[("t0", "orders", "seller_id=s0", "1h", 0.0)]
    ((1, 5.0), (1, 5.0))
    >>> len([k for k in w if k[2] == "" and k[3] == "15m/10s"])  # each sliding window it is in
    90
    """
    pane_s = config.pane_s
    seller_dims = {seller: dims_key({"seller_id": seller}) for seller in SELLERS}
    # series (tenant, metric, dims) -> pane index -> [count, sum]
    series: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(dict)
    for ev in sent:
        pane = math.floor(ev.t / pane_s)
        seller = seller_dims.get(ev.seller) or dims_key({"seller_id": ev.seller})
        for dims in ("", seller):
            acc = series[(ev.tenant, _metric(ev.kind), dims)].setdefault(pane, [0, 0.0])
            acc[0] += 1
            acc[1] += ev.amount
    out: dict[WindowKey, tuple[int, float]] = {}
    for (tenant, metric, dims), panes in series.items():
        first, last = min(panes), max(panes)
        counts = [0] * (last - first + 2)  # prefix sums: counts[i] = panes first..first+i-1
        sums = [0.0] * (last - first + 2)
        for i in range(last - first + 1):
            c, v = panes.get(first + i, (0, 0.0))
            counts[i + 1] = counts[i] + int(c)
            sums[i + 1] = sums[i] + v
        specs = config.window_specs if dims == "" else config.dimension_window_specs
        for spec in specs:
            name, size, step = spec.name, spec.size_s // pane_s, spec.step_s // pane_s
            # every window start (a multiple of the step) whose window holds a pane
            lo = -(-(first - size + 1) // step) * step
            for start in range(lo, last + 1, step):
                a = min(max(start - first, 0), last - first + 1)
                b = min(max(start + size - first, 0), last - first + 1)
                if counts[b] > counts[a]:
                    key = (tenant, metric, dims, name, float(start * pane_s))
                    out[key] = (counts[b] - counts[a], sums[b] - sums[a])
    return out


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


@dataclass
class StoreCheck:
    """What :func:`check_store` found: problems (empty: all held) and what it compared."""

    problems: list[str] = field(default_factory=list)
    events: int = 0
    final_windows: int = 0
    dead_letters: int = 0


def check_store(
    dsn: str,
    sent: list[Sent],
    bad: list[bytes],
    *,
    due_until: float | None = None,
    config: MetricsConfig = FLOW_METRICS,
) -> StoreCheck:
    """The store against what was sent.

    * every valid event stored exactly once, with its time and amount (the
      per-minute GROUP BY over the stored events equals the one over the sent);
    * every final orders/gmv window (every window kind, per tenant and per
      seller) equals the brute-force count and value from the sent events;
    * every window that ends by ``due_until`` (default: the newest event time
      minus the allowed lateness, where the watermark is at least) is final;
    * every bad message is exactly one dead letter.
    """
    res = StoreCheck()
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        stored = conn.execute(
            "SELECT tenant, event_id, count(*) FROM events GROUP BY 1, 2"
        ).fetchall()
        letters = conn.execute("SELECT payload, count(*) FROM dead_letters GROUP BY 1").fetchall()
    res.events = sum(int(r[2]) for r in stored)
    want_ids = {(s.tenant, s.event_id) for s in sent}
    have = {(r[0], r[1]): int(r[2]) for r in stored}
    twice = [k for k, c in have.items() if c > 1]
    missing = want_ids - have.keys()
    extra = have.keys() - want_ids
    if twice or missing or extra:
        res.problems.append(
            f"events: {len(want_ids)} sent, {len(have)} stored; {len(missing)} missing "
            f"(e.g. {sorted(missing)[:3]}), {len(twice)} stored more than once "
            f"(e.g. {twice[:3]}), {len(extra)} never sent (e.g. {sorted(extra)[:3]})"
        )

    # The stored events' times and amounts, by the existing per-minute GROUP BY.
    minutes: dict[tuple[str, str, float], list[float]] = defaultdict(lambda: [0, 0.0])
    for s in sent:
        acc = minutes[(s.tenant, _metric(s.kind), math.floor(s.t / 60) * 60.0)]
        acc[0] += 1
        acc[1] += s.amount
    grouped = {(t, m, _epoch(start)): v for (t, m, start), v in group_by_minute(dsn).items()}
    off = [
        k
        for k in minutes.keys() | grouped.keys()
        if k not in grouped
        or k not in minutes
        or grouped[k][0] != minutes[k][0]
        or not _close(grouped[k][1], minutes[k][1])
    ]
    if off:
        k = sorted(off)[0]
        res.problems.append(
            f"stored events by minute: {len(off)} (tenant, metric, minute) groups differ from "
            f"the events sent, e.g. {k}: stored {grouped.get(k)}, sent {minutes.get(k)}"
        )

    truth = brute_force_windows(sent, config)
    finals: dict[WindowKey, tuple[int, float]] = {}
    for (tenant, metric, dims, window, start), row in windows_table(dsn).items():
        count, _sum, value, _revision, final = row
        if metric in CHECKED_METRICS and final:
            finals[(tenant, metric, dims, window, _epoch(start))] = (
                int(count),  # type: ignore[call-overload]
                float(value),  # type: ignore[arg-type]
            )
    res.final_windows = len(finals)
    wrong = []
    for key, (count, value) in finals.items():
        want_count, want_sum = truth.get(key, (0, 0.0))
        want_value = want_count if key[1] == "orders" else want_sum
        if count != want_count or not _close(value, want_value):
            wrong.append((key, (count, value), (want_count, want_value)))
    if wrong:
        res.problems.append(
            f"windows: {len(wrong)} of {len(finals)} final windows differ from the brute force "
            f"over the events sent, e.g. (key, stored, sent): {sorted(wrong)[:3]}"
        )
    if sent:
        if due_until is None:
            due_until = max(s.t for s in sent) - config.allowed_lateness_s
        sizes = {spec.name: spec.size_s for spec in config.window_specs}
        open_due = sorted(k for k in truth if k[4] + sizes[k[3]] <= due_until and k not in finals)
        if open_due:
            res.problems.append(
                f"windows: {len(open_due)} windows ending by "
                f"{datetime.fromtimestamp(due_until, UTC).isoformat()} are not closed, "
                f"e.g. {open_due[:3]}"
            )

    got = Counter({row[0]: int(row[1]) for row in letters})
    res.dead_letters = sum(got.values())
    want_letters = Counter(b.decode() for b in bad)
    if got != want_letters:
        missing_l = want_letters - got
        extra_l = got - want_letters
        res.problems.append(
            f"dead letters: {len(bad)} bad messages sent, {res.dead_letters} stored; "
            f"missing {sorted(missing_l)[:3]}, extra or repeated {sorted(extra_l)[:3]}"
        )
    return res


async def dead_letter_stream_count(settings: Settings) -> int:
    """Messages on the durable dead-letter stream."""
    nc = await nats.connect(settings.nats_url, connect_timeout=3, allow_reconnect=False)
    try:
        info = await nc.jetstream().stream_info(dead_letter_stream_name(settings))
        return int(info.state.messages)
    finally:
        await nc.close()


def stored_count(dsn: str) -> int:
    """Rows in ``events`` (0 while the store does not answer)."""
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
    except psycopg.OperationalError:
        return 0
    return int(row[0]) if row else 0


def event_clock_start(hours_back: float = 6) -> datetime:
    """Where the publisher's event clock starts: far enough back that it never
    passes the wall clock (no future-skew rejections), on a minute boundary."""
    return (datetime.now(UTC) - timedelta(hours=hours_back)).replace(second=0, microsecond=0)


def alive_pids(procs: Iterable[psutil.Process]) -> list[int]:
    return [p.pid for p in procs if is_alive(p)]


__all__ = [
    "FLOW_METRICS",
    "READER_MODULE",
    "WRITER_MODULE",
    "FaultStack",
    "Flow",
    "Publisher",
    "Sent",
    "StoreCheck",
    "alive_pids",
    "brute_force_windows",
    "check_store",
    "dead_letter_stream_count",
    "event_clock_start",
    "stored_count",
    "wait_for",
]
