"""CLI command: ``linkpulse demo`` runs the whole pipeline on this machine.

simulator → NATS JetStream → dataflow → store, Redis and NATS metrics, with
the API and its dashboard beside it: the demo prints the dashboard's URL with
a viewer key, a live panel shows what arrives, and the simulator keeps the
pipeline fed until Ctrl-C (or for ``--duration``); then a summary checks that
every published event was stored exactly once. This is the README's main job.

The commands it starts are built by :func:`dataflow_args`, :func:`api_args`
and :func:`maintain_args` (the rollup refresh the query API reads), which the
browser tests use too (the same pipeline).

>>> dataflow_args(Path("st"), "lp:", rules=[Path("deploy/rules")])[:4]
['run', 'dataflow', '--recovery-dir', 'st/recovery']
>>> api_args(8123), api_env("lp:")["LINKPULSE_AUTH"]
(['serve', '--port', '8123'], 'on')
>>> maintain_args(), maintain_env("lp:")["LINKPULSE_STORE_MAINTAIN_INTERVAL_S"]
(['db', 'maintain', '--loop'], '10')
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import psycopg
import redis.asyncio as aioredis
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from linkpulse.aio import cancel_and_wait
from linkpulse.bus.connection import connect_nats
from linkpulse.bus.stream import ensure_streams
from linkpulse.cli.demo_stream import StreamWatch, demo_keys
from linkpulse.cli.live_panel import TILES, tile_rows
from linkpulse.config import Settings, load_settings
from linkpulse.errors import LinkpulseError
from linkpulse.schemas.outputs import MetricWindow
from linkpulse.simulator.anomalies import parse_duration

# Piped (`run.sh | tee run.log`), rich would wrap tables at 80 columns and the
# live panel would print nothing until the end: plain lines instead, wide rows.
console = Console() if sys.stdout.isatty() else Console(width=240, force_terminal=False)
PLAIN_PROGRESS_EVERY_S = 5.0
CATCH_UP_S = 120.0  # how long the flow may take to store what was published
CLOSE_TIMEOUT_S = 150.0  # how long to wait for the last minute's windows to close
MAINTAIN_EVERY_S = 10.0  # rollup refresh interval of the demo's `db maintain --loop`
DEFAULT_RULES = Path("deploy/rules")  # the example alert rules, when run from a checkout


class DemoError(LinkpulseError):
    """A part of the demo pipeline failed; the message says where its log is."""


_window_decoder = msgspec.json.Decoder(MetricWindow)


@dataclass
class Counts:
    """What the panel reads from the services each refresh."""

    stream: int = 0
    stored: int = 0
    dead_letters: int = 0
    windows: int = 0
    final_1m: int = 0
    last_final_1m_end: datetime | None = None
    latest: list[MetricWindow] = field(default_factory=list)


def redis_prefix(settings: Settings) -> str:
    """This deployment's Redis keys start with its subject prefix, so two never mix."""
    return f"{settings.subject_prefix}:"


# Closed 1-minute windows whose value differs from a GROUP BY over the raw events.
_WINDOW_CHECK = """
with w as (
    select tenant, metric, window_start, value from metric_windows
    where dims_key = '' and "window" = '1m' and final and window_start >= %(since)s
      and metric in ('orders', 'gmv')
), r as (
    select tenant, date_trunc('minute', event_time) as window_start,
           count(*) filter (where type = 'order_placed') as orders,
           sum(amount) filter (where type = 'payment_settled') as gmv
    from events where event_time >= %(since)s group by 1, 2
)
select count(*),
       count(*) filter (where abs(coalesce(w.value, 0) - coalesce(
           case w.metric when 'orders' then r.orders else r.gmv end, 0)) > 0.005)
from w left join r using (tenant, window_start)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _linkpulse(*args: str) -> list[str]:
    return [sys.executable, "-m", "linkpulse", *args]


def _step(title: str, *args: str) -> None:
    """Run a linkpulse command to completion, its output shown, or stop the demo."""
    console.rule(title)
    done = subprocess.run(_linkpulse(*args), check=False)
    if done.returncode != 0:
        console.print(f"[red]`linkpulse {' '.join(args)}` failed; see above")
        raise typer.Exit(done.returncode)


def dataflow_args(
    state_dir: Path,
    redis_key_prefix: str,
    *,
    rules: Sequence[Path] = (),
    detectors: Path | None = None,
    snapshot_interval_s: float | None = None,
) -> list[str]:
    """``linkpulse`` arguments of the demo's dataflow (recovery under ``state_dir``)."""
    args = ["run", "dataflow", "--recovery-dir", str(state_dir / "recovery")]
    args += ["--redis-prefix", redis_key_prefix]
    for rule in rules:
        args += ["--alert-rules", str(rule)]
    if detectors is not None:
        args += ["--detectors", str(detectors)]
    if snapshot_interval_s is not None:
        args += ["--snapshot-interval", f"{snapshot_interval_s:g}"]
    return args


def api_args(port: int) -> list[str]:
    """``linkpulse`` arguments of the demo's API (and dashboard) on loopback ``port``."""
    return ["serve", "--port", str(port)]


def api_env(redis_key_prefix: str) -> dict[str, str]:
    """The API's environment as deployed: auth on, the dataflow's Redis keys for snapshots."""
    return {"LINKPULSE_REDIS_KEY_PREFIX": redis_key_prefix, "LINKPULSE_AUTH": "on"}


def maintain_args() -> list[str]:
    """``linkpulse`` arguments of the store's maintenance loop (rollups, partitions)."""
    return ["db", "maintain", "--loop"]


def maintain_env(redis_key_prefix: str, interval_s: float = MAINTAIN_EVERY_S) -> dict[str, str]:
    """Refresh the rollups every few seconds (the dashboard's tiles and history read them),
    bumping the query cache's watermarks under the API's Redis prefix (else it keeps serving
    what it computed before the refresh)."""
    return {
        "LINKPULSE_STORE_MAINTAIN_INTERVAL_S": f"{interval_s:g}",
        "LINKPULSE_REDIS_KEY_PREFIX": redis_key_prefix,
    }


def dashboard_url(api_url: str, viewer_key: str) -> str:
    """The dashboard's address with a viewer key (the page reads ``?key=``).

    >>> dashboard_url("http://127.0.0.1:8000", "lpk_x")
    'http://127.0.0.1:8000/?key=lpk_x'
    """
    return f"{api_url}/?key={viewer_key}"


async def _spawn(
    name: str, logs: Path, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    log = (logs / f"{name}.log").open("ab")
    # A session of its own: the terminal's Ctrl-C reaches the demo alone, which then
    # stops the simulator first and the rest after the checks.
    return await asyncio.create_subprocess_exec(
        *_linkpulse(*args),
        stdout=log,
        stderr=log,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


async def _stop(proc: asyncio.subprocess.Process, grace_s: float = 15) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _read(
    settings: Settings, js: object, pg: psycopg.AsyncConnection, rd: aioredis.Redis
) -> Counts:
    counts = Counts()
    info = await js.stream_info(settings.stream_name)  # type: ignore[attr-defined]
    counts.stream = int(info.state.messages)
    cur = await pg.execute(
        "select (select count(*) from events), (select count(*) from dead_letters),"
        " (select count(*) from metric_windows),"
        " (select count(*) from metric_windows where \"window\" = '1m' and final),"
        " (select max(window_end) from metric_windows where \"window\" = '1m' and final)"
    )
    row = await cur.fetchone()
    if row:
        counts.stored, counts.dead_letters, counts.windows, counts.final_1m = map(int, row[:4])
        counts.last_final_1m_end = row[4]
    pattern = f"{redis_prefix(settings)}latest:*||5m/10s"
    keys = [k async for k in rd.scan_iter(match=pattern, count=1000)]
    if keys:
        for raw in await rd.mget(keys):
            if raw:
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    counts.latest.append(_window_decoder.decode(raw))
    return counts


def _panel(
    c: Counts, base: Counts, started: float, since: datetime, api_url: str, sse: int
) -> Group:
    flow = Table(
        title=f"pipeline ({time.monotonic() - started:,.0f} s)   API: {api_url}/docs   "
        f"SSE updates received: {sse:,}"
    )
    for col in ("in JetStream", "stored", "dead letters", "metric windows", "final 1m windows"):
        flow.add_column(col, justify="right")
    flow.add_row(
        f"{c.stream - base.stream:,}",
        f"{c.stored - base.stored:,}",
        f"{c.dead_letters - base.dead_letters:,}",
        f"{c.windows:,}",
        f"{c.final_1m:,}",
    )
    tiles = Table(title="live tiles: last 5 minutes, sliding every 10 s")
    tiles.add_column("tenant")
    for name, _ in TILES:
        tiles.add_column(name.replace("_", " "), justify="right")
    for tenant, values in tile_rows(c.latest, window="5m/10s", not_before=since):
        tiles.add_row(tenant, *(values.get(name, "-") for name, _ in TILES))
    return Group(flow, tiles)


def progress_line(c: Counts, base: Counts, elapsed_s: float) -> str:
    """One plain line of the pipeline's counts, for output that is not a terminal.

    >>> c = Counts(stream=1500, stored=1400, dead_letters=2, windows=90, final_1m=12)
    >>> progress_line(c, Counts(), 12.3).split(", ")[:3]
    ['demo 12 s: in JetStream 1,500', 'stored 1,400', 'dead letters 2']
    """
    return (
        f"demo {elapsed_s:,.0f} s: in JetStream {c.stream - base.stream:,}, "
        f"stored {c.stored - base.stored:,}, dead letters {c.dead_letters - base.dead_letters:,}, "
        f"metric windows {c.windows:,}, final 1m windows {c.final_1m:,}"
    )


class _PlainProgress:
    """Stands in for rich's ``Live`` when stdout is not a terminal: a line every few seconds."""

    def __init__(self) -> None:
        self._last = -math.inf

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def show(self, c: Counts, base: Counts, started: float) -> None:
        now = time.monotonic()
        if now - self._last >= PLAIN_PROGRESS_EVERY_S:
            self._last = now
            print(progress_line(c, base, now - started), flush=True)


@dataclass(frozen=True)
class DemoRun:
    """What one demo run starts: the simulator's arguments, rules, port, drain."""

    sim_args: list[str]
    state_dir: Path
    drain_s: float
    rules: tuple[Path, ...] = ()
    port: int | None = None


async def _run(settings: Settings, run: DemoRun) -> int:
    logs = run.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    api_port = run.port or _free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    prefix = redis_prefix(settings)
    nc = await connect_nats(settings, name="linkpulse-demo")
    js = nc.jetstream()
    pg = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
    rd = aioredis.from_url(settings.redis_url, socket_timeout=2)
    procs: list[asyncio.subprocess.Process] = []
    watch_task: asyncio.Task[None] | None = None
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    loop.add_signal_handler(signal.SIGTERM, interrupted.set)
    try:
        await ensure_streams(js, settings)
        base = await _read(settings, js, pg, rd)
        procs.append(
            await _spawn("dataflow", logs, *dataflow_args(run.state_dir, prefix, rules=run.rules))
        )
        # The API as deployed: auth on, keys made for this run; it reads the
        # dataflow's Redis keys for stream snapshots and serves the dashboard.
        keys = await demo_keys(pg)
        procs.append(await _spawn("api", logs, *api_args(api_port), env=api_env(prefix)))
        # The rollups the query API (KPI tiles, history) reads are refreshed by this loop.
        procs.append(await _spawn("maintain", logs, *maintain_args(), env=maintain_env(prefix)))
        watch = StreamWatch(api_url, keys["admin"])
        watch_task = asyncio.create_task(watch.run())
        console.print(
            f"[bold]Dashboard: {dashboard_url(api_url, keys['viewer'])}[/bold]\n"
            f"API keys for this run (valid a day): admin {keys['admin']}  "
            f"viewer {keys['viewer']}  ingest {keys['ingest']}\n"
            f"  try: curl -N -H 'Authorization: Bearer {keys['admin']}' {api_url}/v1/stream/metrics"
        )
        since = datetime.now(UTC).replace(second=0, microsecond=0)
        sim = await _spawn("simulate", logs, "simulate", "--quiet", *run.sim_args)
        started = time.monotonic()
        live: Live | _PlainProgress = (
            Live(console=console, refresh_per_second=2) if console.is_terminal else _PlainProgress()
        )
        with live:

            async def refresh() -> Counts:
                for proc, name in zip(procs, ("dataflow", "api", "maintain"), strict=True):
                    if proc.returncode is not None:
                        msg = f"{name} exited ({proc.returncode}); see {logs}/{name}.log"
                        raise DemoError(msg)
                counts = await _read(settings, js, pg, rd)
                if isinstance(live, Live):
                    live.update(_panel(counts, base, started, since, api_url, watch.updates))
                else:
                    live.show(counts, base, started)
                return counts

            # 1. traffic flows, until the simulator's --duration ends or Ctrl-C
            current = base
            while sim.returncode is None:
                if interrupted.is_set() and sim.returncode is None:
                    console.print("stopping the simulator; then the checks (Ctrl-C again: quit)")
                    loop.add_signal_handler(signal.SIGINT, _quit)
                    sim.send_signal(signal.SIGINT)
                    interrupted.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(sim.wait()), 1.0)
                current = await refresh()
            if sim.returncode != 0:
                msg = f"the simulator failed; see {logs}/simulate.log"
                raise DemoError(msg)
            current = await _settle(current, base, since, run.drain_s, refresh)
        return await _summary(pg, current, base, since, logs, watch)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        await cancel_and_wait(watch_task)
        for proc in procs:
            await _stop(proc)
        await rd.aclose()
        await pg.close()
        await nc.close()


def _quit() -> None:
    """A second Ctrl-C: leave now (the ``finally`` blocks still stop the processes)."""
    raise KeyboardInterrupt


async def _settle(
    current: Counts,
    base: Counts,
    since: datetime,
    drain_s: float,
    refresh: Callable[[], Awaitable[Counts]],
) -> Counts:
    """Traffic has stopped: let the flow store it all and close the last minute's windows."""
    # the flow catches up with what was published
    deadline = time.monotonic() + CATCH_UP_S
    while current.stored - base.stored < current.stream - base.stream:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
        current = await refresh()
    # The idle watermark closes the last windows. Wait (bounded) until the
    # minute the traffic ended in is closed, so the summary checks every closed
    # window, then at least --drain.
    last_minute_end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    drain_until = time.monotonic() + drain_s
    give_up = time.monotonic() + CLOSE_TIMEOUT_S
    while time.monotonic() < give_up:
        closed = (current.last_final_1m_end or since) >= last_minute_end
        if closed and time.monotonic() >= drain_until:
            break
        await asyncio.sleep(1)
        current = await refresh()
    return current


async def _summary(
    pg: psycopg.AsyncConnection,
    current: Counts,
    base: Counts,
    since: datetime,
    logs: Path,
    watch: StreamWatch,
) -> int:
    """Print what was published, stored and streamed; 0 when exactly once and windows match."""
    published = current.stream - base.stream
    stored = current.stored - base.stored
    console.rule("summary")
    console.print(
        f"published {published:,} events; stored {stored:,}; "
        f"{current.final_1m:,} final 1-minute windows; logs in {logs}"
    )
    console.print(
        f"{watch.updates:,} window updates received live over SSE (/v1/stream/metrics)"
        + (f"; last stream error: {watch.error}" if watch.error else "")
    )
    cur = await pg.execute(_WINDOW_CHECK, {"since": since})
    checked, wrong = (await cur.fetchone()) or (0, 0)
    console.print(
        f"{checked:,} closed 1-minute orders/GMV windows compared with a GROUP BY over "
        f"the raw events: {wrong:,} differ"
    )
    if stored != published:
        console.print("[red]stored != published: the pipeline lost or doubled events")
        return 1
    if wrong or not checked:
        console.print("[red]closed windows do not match the raw events")
        return 1
    console.print("[green]every published event was stored exactly once; windows match")
    return 0


def demo(
    duration: str | None = typer.Option(
        None,
        help="how long the simulator publishes, e.g. 90s, 5m (default: until Ctrl-C); "
        "either way the run ends with the exactly-once checks",
    ),
    rate: float = typer.Option(300.0, help="mean events/s the simulator publishes"),
    anomaly: list[str] = typer.Option(
        [],
        help="anomalies to inject (see `linkpulse simulate --help`); default: a payment "
        "failure spike over the middle quarter of a --duration run, or from 2 to 6 minutes "
        "into an open-ended one",
    ),
    drain: float = typer.Option(20.0, help="seconds to keep the flow running after traffic stops"),
    seed: int | None = typer.Option(
        None, help="simulator seed (default: a new one each run, so event ids never repeat)"
    ),
    rules: list[Path] = typer.Option(
        [],
        "--rules",
        help="alert rule files or folders for the dataflow (default: deploy/rules when "
        "run from a checkout)",
    ),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="the API's and dashboard's port (default: free)"
    ),
    stack: bool = typer.Option(True, "--stack/--no-stack", help="run `linkpulse up` first"),
) -> None:
    """Run the whole pipeline here: simulator → NATS → dataflow → store, with the dashboard.

    Starts (or reuses) the local stack, applies migrations, runs the dataflow and
    the API, prints the dashboard's URL (with a viewer key) and publishes
    simulated traffic until Ctrl-C (or for --duration), with live numbers; then
    checks that every published event was stored exactly once.
    """
    if rate <= 0:
        typer.secho(f"--rate must be > 0, got {rate}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    seconds = parse_duration(duration) if duration is not None else None
    if stack:
        _step("local stack", "up")
    _step("migrations", "db", "migrate")
    settings = load_settings()  # after `up`: picks up the embedded services' URLs
    if seed is None:
        seed = time.time_ns() % 2**31
    console.print(f"simulator seed {seed}")
    # No seasonality: --rate is what flows whatever the hour the demo runs at.
    sim_args = ["--rate", str(rate), "--seed", str(seed), "--no-seasonality"]
    if seconds is not None:
        sim_args += ["--duration", f"{seconds:g}s"]
    for spec in anomaly or [default_anomaly(seconds)]:
        sim_args += ["--anomaly", spec]
    sim_args += ["--labels", str(settings.state_dir / "labels.json")]
    if not rules and DEFAULT_RULES.is_dir():
        rules = [DEFAULT_RULES]
    run = DemoRun(sim_args, settings.state_dir, drain, tuple(rules), port)
    try:
        code = asyncio.run(_run(settings, run))
    except LinkpulseError as e:
        typer.secho(f"demo failed: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from e
    except KeyboardInterrupt:
        typer.secho("demo interrupted before its checks", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def default_anomaly(seconds: float | None) -> str:
    """The demo's payment failure spike: the middle quarter of a bounded run, else minutes 2-6.

    >>> default_anomaly(120), default_anomaly(None)
    ('failure_spike@48s+30s', 'failure_spike@2m+4m')
    """
    if seconds is None:
        return "failure_spike@2m+4m"
    return f"failure_spike@{seconds * 0.4:.0f}s+{max(seconds * 0.25, 1):.0f}s"


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the root app."""
    app.command("demo")(demo)
