"""SSE fan-out and authenticated ingest on one API process (issue 11's benchmarks).

``fanout``: N subscribers of ``/v1/stream/metrics`` (in another process, plain
asyncio sockets) each receive every update; the publisher sends 10 window
updates/s on the dataflow's NATS subject, each carrying its publish time, and
the clients measure publish-to-receipt delay: p50/p99 per subscriber count.

A client counts as ready once its ``snapshot`` event arrived (the hub then
queues updates for it); the report gives connected vs registered clients,
refusals (status and detail, on stderr) and overflows. Cost, measurable on a
loaded machine where delays are not: the API process's CPU (psutil) per
delivered update, net of its idle CPU with the same clients connected, and
its RSS growth per registered client; and the API's write system calls per
delivered update (under 1 when clients fell behind and got several updates in
one write) with its CPU per write.

``ingest``: events/s through ``POST /v1/events`` (batches of 500, 4 concurrent
posts) with auth on (an ingest key) and off, interleaved in the same run, and
the API process's CPU per ingested event.

    python bench/bench_sse.py fanout --clients 250,500,1000,2000 --seconds 15
    python bench/bench_sse.py fanout --clients 1000,2000 --servers auto/auto,asyncio/h11
    python bench/bench_sse.py fanout --servers auto/auto,auto/auto@/tmp/lp-base  # new vs old
    python bench/bench_sse.py ingest --seconds 10 --rounds 2

Needs the local PostgreSQL, Redis and NATS (the tests' services); uses its own
database ``lp_bench_access`` and subject prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import nats
import psutil
import psycopg

from linkpulse.api.auth.keys import KeyStore
from linkpulse.api.auth.roles import Role
from linkpulse.bus.subjects import metric_subject
from linkpulse.schemas.outputs import MetricWindow
from linkpulse.store.migrate import migrate

ADMIN_DSN = os.environ.get(
    "LINKPULSE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
NATS_URL = os.environ.get("LINKPULSE_TEST_NATS_URL", "nats://127.0.0.1:4222")
DB = "lp_bench_access"
_encoder = msgspec.json.Encoder()
# --server-pythonpath: a directory put first on the API's path (e.g. uvloop and httptools
# installed with `pip install --target DIR`, which uvicorn then picks), the clients' unchanged.
SERVER_PATH: list[str] = []


def _dsn() -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{DB}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _keys() -> dict[str, str]:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (DB,)).fetchone():
            conn.execute(f"create database {DB}")
    migrate(_dsn())
    out = {}
    async with await psycopg.AsyncConnection.connect(_dsn(), autocommit=True) as conn:
        for role in (Role.ADMIN, Role.INGEST):
            key, _ = await KeyStore(conn).create(
                role=role,
                tenant="acme",
                name="bench",
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
            out[role.value] = key.secret
    return out


def _serve(
    port: int,
    prefix: str,
    auth: str,
    extra: dict[str, str] | None = None,
    server: str = "auto/auto",
) -> subprocess.Popen[bytes]:
    """Start ``linkpulse serve``; ``server`` is uvicorn's ``LOOP/HTTP`` (``asyncio/h11``),
    optionally ``@DIR``: that directory first on the API's path (another copy of the code,
    e.g. ``git archive HEAD linkpulse | tar -x -C DIR``, to compare two versions)."""
    spec, _, code_dir = server.partition("@")
    loop, _, http = spec.partition("/")
    # Only what differs from auto: a copy of older code has no --loop/--http.
    flags = [f"--{k}={v}" for k, v in (("loop", loop), ("http", http)) if v and v != "auto"]
    env = {
        **os.environ,
        "LINKPULSE_DATABASE_URL": _dsn(),
        "LINKPULSE_NATS_URL": NATS_URL,
        "LINKPULSE_SUBJECT_PREFIX": prefix,
        "LINKPULSE_STREAM_NAME": prefix.upper(),
        # Its own Redis keys: a snapshot then scans none of the other runs' latest values.
        "LINKPULSE_REDIS_KEY_PREFIX": f"{prefix}:",
        "LINKPULSE_AUTH": auth,
        "LINKPULSE_LOG_LEVEL": "WARNING",
        "LINKPULSE_STREAM_MAX_TOTAL": "20000",
        "LINKPULSE_STREAM_MAX_PER_PRINCIPAL": "20000",
        "LINKPULSE_RATE_LIMITS": "admin=100000/100000,ingest=100000/100000",
        **(extra or {}),
    }
    path = [code_dir] if code_dir else []
    if path or SERVER_PATH:
        env["PYTHONPATH"] = os.pathsep.join([*path, *SERVER_PATH, env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        # -P: `python -m` would put the current directory (this checkout) before DIR.
        [sys.executable, *(["-P"] if code_dir else []), "-m", "linkpulse", "serve"]
        + ["--port", str(port), *flags],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_up(url: str, key: str) -> None:
    """Wait until ``key`` opens a stream of the API at ``url`` (its hub subscribed)."""
    deadline = time.monotonic() + 180  # a loaded machine starts an API slowly
    with httpx.Client(base_url=url, timeout=5) as c:
        while time.monotonic() < deadline:
            try:
                with c.stream(
                    "GET", "/v1/stream/alerts", headers={"Authorization": f"Bearer {key}"}
                ) as r:
                    if r.status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    msg = f"the API at {url} did not come up"
    raise SystemExit(msg)


# -- clients (run in their own process) -------------------------------------------------


class _Counts:
    """What the client process saw: connections, streams registered, updates, overflows."""

    def __init__(self) -> None:
        self.connected = 0  # TCP connection open and request written
        self.registered = 0  # `event: snapshot` received: the hub queues updates for it
        self.overflows = 0  # `event: overflow` received: the hub cut it off
        self.delays: list[float] = []
        self.refused: Counter[str] = Counter()  # status lines other than 200


async def _client(port: int, key: str, counts: _Counts, stop: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    except OSError:
        return
    writer.write(
        f"GET /v1/stream/metrics HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\n\r\n".encode()
    )
    await writer.drain()
    counts.connected += 1
    try:
        status = await reader.readline()
        if b" 200 " not in status:
            body = await reader.read(4096)
            _, _, detail = body.partition(b'"detail":')
            why = (
                f"{status.decode(errors='replace').strip()} {detail[:100].decode(errors='replace')}"
            )
            counts.refused[why] += 1
            return
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b'data: {"metric"'):
                w = msgspec.json.decode(line[6:], type=MetricWindow)
                if w.value is not None:
                    counts.delays.append(time.time() - w.value)
            elif line.startswith(b"event: snapshot"):
                counts.registered += 1
            elif line.startswith(b"event: overflow"):
                counts.overflows += 1
    except OSError:
        return
    finally:
        writer.close()


async def _clients_main(port: int, key: str, n: int, seconds: float) -> None:
    """Open ``n`` streams, say READY once all got their snapshot (or 90 s passed), then
    count for ``seconds`` (the parent reads READY and the final line)."""
    counts = _Counts()
    stop = asyncio.Event()
    tasks = []
    for _ in range(n):  # open gradually: a burst of thousands of SYNs overflows the backlog
        tasks.append(asyncio.create_task(_client(port, key, counts, stop)))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.01)
    deadline = time.monotonic() + 90
    while counts.registered < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print(f"READY {counts.connected} {counts.registered}", flush=True)
    if counts.refused:
        print("refused:", dict(counts.refused), file=sys.stderr, flush=True)
    await asyncio.sleep(seconds)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(
        f"COUNTS {counts.connected} {counts.registered} {counts.overflows}",
        "DELAYS",
        " ".join(f"{d:.4f}" for d in counts.delays),
        flush=True,
    )


# -- fan-out ----------------------------------------------------------------------------


async def _publish(prefix: str, seconds: float, rate: float) -> int:
    nc = await nats.connect(NATS_URL)
    subject = metric_subject(prefix, "gmv", "acme", "1m")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        w = MetricWindow(
            metric="gmv",
            tenant="acme",
            dims_key="",
            dimensions={},
            window="1m",
            window_start=t0,
            window_end=t0 + timedelta(minutes=1),
            value=time.time(),
        )
        await nc.publish(subject, _encoder.encode(w))
        await nc.flush()
        sent += 1
        await asyncio.sleep(1 / rate)
    await nc.close()
    return sent


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=1000)[int(q * 1000) - 1] if len(xs) > 10 else float("nan")


def _writes(p: psutil.Process) -> int:
    """Write system calls of ``p`` so far (Linux: write/writev, as uvloop writes a socket)."""
    return int(p.io_counters().write_count)


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


async def fanout(counts: list[int], seconds: float, servers: list[str], idle: float = 3.0) -> None:
    """Per subscriber count, each server variant in turn (interleaved A/B): delays, what
    the clients saw, and the API process's cost (CPU per delivered update net of its
    idle CPU with the same clients, RSS per client) beside the client process's CPU."""
    keys = await _keys()
    print(f"load average {os.getloadavg()[0]:.1f} (2 cores)")
    print(
        "server                subscribers  connected  registered  overflows  received/expected  "
        "p50 ms  p99 ms  max ms  idle cpu/s  cpu us/update  client us/update  writes/update  "
        "cpu us/write  rss KiB/client"
    )
    for n in counts:
        for server in servers:
            await _fanout_one(n, seconds, server, keys["admin"], idle)


async def _fanout_one(n: int, seconds: float, server: str, key: str, idle: float) -> None:
    prefix = f"lpbench{uuid.uuid4().hex[:8]}"
    port = _free_port()
    api = _serve(port, prefix, "on", server=server)
    try:
        wait_up(f"http://127.0.0.1:{port}", key)
        proc = psutil.Process(api.pid)
        rss0 = proc.memory_info().rss
        clients = subprocess.Popen(
            [sys.executable, __file__, "clients", str(port), key, str(n), str(seconds + idle + 3)],
            stdout=subprocess.PIPE,
            text=True,
        )
        cproc = psutil.Process(clients.pid)
        assert clients.stdout is not None
        ready = clients.stdout.readline().split()
        assert ready[0] == "READY", ready
        rss1 = proc.memory_info().rss
        c0, t0 = _cpu(proc), time.monotonic()
        await asyncio.sleep(idle)  # baseline: the same clients, no updates
        c1, t1 = _cpu(proc), time.monotonic()
        k1, w1 = _cpu(cproc), _writes(proc)
        sent = await _publish(prefix, seconds, 10.0)
        await asyncio.sleep(1)  # let the last updates drain
        c2, t2 = _cpu(proc), time.monotonic()
        k2, w2 = _cpu(cproc), _writes(proc)
        out, _ = clients.communicate(timeout=180)
        head, _, tail = out.partition("DELAYS")
        _, connected, registered, overflows = head.split()
        delays = [float(x) for x in tail.split()]
        idle_rate = (c1 - c0) / (t1 - t0)
        net = (c2 - c1) - idle_rate * (t2 - t1)
        per_update = net / max(len(delays), 1) * 1e6
        client_per_update = (k2 - k1) / max(len(delays), 1) * 1e6
        # Updates per write tell batching (a client behind gets several in one write)
        # from a cheaper write: CPU per update falls with either.
        # asyncio's sockets send with send(2), which /proc/PID/io does not count: n/a.
        per_write = f"{(w2 - w1) / max(len(delays), 1):.2f}" if w2 > w1 else "n/a"
        cpu_per_write = f"{net / (w2 - w1) * 1e6:.1f}" if w2 > w1 else "n/a"
        per_client = (rss1 - rss0) / max(int(ready[2]), 1) / 1024
        print(
            f"{server:20s}  {n:11d}  {connected:>9s}  {registered:>10s}  {overflows:>9s}  "
            f"{len(delays):>8d}/{sent * int(registered):<8d}  "
            f"{_pct(delays, 0.5) * 1e3:6.0f}  {_pct(delays, 0.99) * 1e3:6.0f}  "
            f"{max(delays, default=0) * 1e3:6.0f}  {idle_rate:10.3f}  {per_update:13.1f}  "
            f"{client_per_update:16.1f}  {per_write:>13s}  {cpu_per_write:>12s}  "
            f"{per_client:14.1f}   load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    finally:
        api.terminate()
        api.wait(timeout=30)
        await _drop_streams(prefix)


async def _drop_streams(prefix: str) -> None:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    for suffix in ("", "_DLQ", "_UPDATES", "_SCORES", "_ALERTS"):
        try:
            await js.delete_stream(prefix.upper() + suffix)
        except Exception:  # noqa: BLE001 - absent is fine
            pass
    await nc.close()


# -- ingest -----------------------------------------------------------------------------


def _events(n: int, tag: str) -> bytes:
    now = datetime.now(UTC).isoformat()
    lines = [
        _encoder.encode(
            {
                "type": "user_signup",
                "event_id": f"{tag}-{i}",
                "tenant": "acme",
                "user_id": f"u{i}",
                "event_time": now,
            }
        )
        for i in range(n)
    ]
    return b"\n".join(lines)


async def _ingest_run(url: str, key: str | None, seconds: float) -> tuple[float, int]:
    headers = {"Content-Type": "application/x-ndjson"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    sent = 0
    end = time.monotonic() + seconds

    async def worker(c: httpx.AsyncClient, w: int) -> None:
        nonlocal sent
        i = 0
        while time.monotonic() < end:
            body = _events(500, f"{uuid.uuid4().hex[:6]}-{w}-{i}")
            r = await c.post("/v1/events", content=body, headers=headers)
            assert r.status_code == 200, r.text[:300]
            sent += 500
            i += 1

    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        await asyncio.gather(*(worker(c, w) for w in range(4)))
    return sent / (time.monotonic() - start), sent


async def ingest(seconds: float, rounds: int) -> None:
    """Events/s and the API process's CPU per event, auth on and off, interleaved."""
    keys = await _keys()
    print(f"load average {os.getloadavg()[0]:.1f} (2 cores)")
    print("round  auth  events/s  cpu us/event")
    for r in range(rounds):
        for auth in ("on", "off"):
            prefix = f"lpbench{uuid.uuid4().hex[:8]}"
            port = _free_port()
            api = _serve(port, prefix, auth)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_up(url, keys["admin"])
                proc = psutil.Process(api.pid)
                c0 = _cpu(proc)
                key = keys["ingest"] if auth == "on" else None
                rate, events = await _ingest_run(url, key, seconds)
                per_event = (_cpu(proc) - c0) / events * 1e6
                print(
                    f"{r:5d}  {auth:4s}  {rate:8.0f}  {per_event:12.1f}   "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            finally:
                api.terminate()
                api.wait(timeout=30)
                await _drop_streams(prefix)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "clients":
        _, _, port, key, n, seconds = sys.argv
        asyncio.run(_clients_main(int(port), key, int(n), float(seconds)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--server-pythonpath", default="", help="directory first on the API's path")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fanout")
    f.add_argument("--clients", default="250,500,1000,2000")
    f.add_argument("--seconds", type=float, default=15)
    f.add_argument(
        "--servers",
        default="auto/auto",
        help="API variants run in turn per count: uvicorn LOOP/HTTP, optionally @DIR (code "
        "put first on the API's path), e.g. auto/auto,asyncio/h11,auto/auto@/tmp/old",
    )
    i = sub.add_parser("ingest")
    i.add_argument("--seconds", type=float, default=10)
    i.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.server_pythonpath:
        SERVER_PATH.append(args.server_pythonpath)
    if args.cmd == "fanout":
        counts = [int(x) for x in args.clients.split(",")]
        asyncio.run(fanout(counts, args.seconds, args.servers.split(",")))
    else:
        asyncio.run(ingest(args.seconds, args.rounds))


if __name__ == "__main__":
    main()
