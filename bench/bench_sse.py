"""SSE fan-out and authenticated ingest on one API process (issue 11's benchmarks).

``fanout``: N subscribers of ``/v1/stream/metrics`` (in another process, plain
asyncio sockets) each receive every update; the publisher sends 10 window
updates/s on the dataflow's NATS subject, each carrying its publish time, and
the clients measure publish-to-receipt delay: p50/p99 per subscriber count.

``ingest``: events/s through ``POST /v1/events`` (batches of 500, 4 concurrent
posts) with auth on (an ingest key) and off, interleaved in the same run.

    python bench/bench_sse.py fanout --clients 250,500,1000,2000 --seconds 15
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
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import nats
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
    port: int, prefix: str, auth: str, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LINKPULSE_DATABASE_URL": _dsn(),
        "LINKPULSE_NATS_URL": NATS_URL,
        "LINKPULSE_SUBJECT_PREFIX": prefix,
        "LINKPULSE_STREAM_NAME": prefix.upper(),
        "LINKPULSE_AUTH": auth,
        "LINKPULSE_LOG_LEVEL": "WARNING",
        "LINKPULSE_STREAM_MAX_TOTAL": "20000",
        "LINKPULSE_STREAM_MAX_PER_PRINCIPAL": "20000",
        "LINKPULSE_RATE_LIMITS": "admin=100000/100000,ingest=100000/100000",
        **(extra or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "linkpulse", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_up(url: str, key: str) -> None:
    deadline = time.monotonic() + 60
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


async def _client(
    port: int, key: str, delays: list[float], stop: asyncio.Event, ready: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    writer.write(
        f"GET /v1/stream/metrics HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\n\r\n".encode()
    )
    await writer.drain()
    ready[0] += 1  # request sent; the stream may register a little later
    try:
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b'data: {"metric"'):
                w = msgspec.json.decode(line[6:], type=MetricWindow)
                if w.value is not None:
                    delays.append(time.time() - w.value)
    finally:
        writer.close()


async def _clients_main(port: int, key: str, n: int, seconds: float) -> None:
    delays: list[float] = []
    stop = asyncio.Event()
    ready = [0]
    tasks = [asyncio.create_task(_client(port, key, delays, stop, ready)) for _ in range(n)]
    while ready[0] < n:
        await asyncio.sleep(0.05)
    print("READY", flush=True)
    await asyncio.sleep(seconds)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print("DELAYS", " ".join(f"{d:.4f}" for d in delays), flush=True)


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


async def fanout(counts: list[int], seconds: float) -> None:
    keys = await _keys()
    print("subscribers  updates/s each  received  p50 ms  p99 ms  max ms")
    for n in counts:
        prefix = f"lpbench{uuid.uuid4().hex[:8]}"
        port = _free_port()
        api = _serve(port, prefix, "on")
        try:
            _wait_up(f"http://127.0.0.1:{port}", keys["admin"])
            clients = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "clients",
                    str(port),
                    keys["admin"],
                    str(n),
                    str(seconds + 3),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert clients.stdout is not None
            assert clients.stdout.readline().strip() == "READY"
            await asyncio.sleep(1)
            sent = await _publish(prefix, seconds, 10.0)
            out, _ = clients.communicate(timeout=120)
            delays = [float(x) for x in out.split("DELAYS", 1)[1].split()]
            print(
                f"{n:11d}  {sent / seconds:14.1f}  {len(delays):8d}  "
                f"{_pct(delays, 0.5) * 1e3:6.0f}  "
                f"{_pct(delays, 0.99) * 1e3:6.0f}  {max(delays, default=0) * 1e3:6.0f}  "
                f"(expected {sent * n})",
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


async def _ingest_run(url: str, key: str | None, seconds: float) -> float:
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
    return sent / (time.monotonic() - start)


async def ingest(seconds: float, rounds: int) -> None:
    keys = await _keys()
    print("round  auth  events/s")
    for r in range(rounds):
        for auth in ("on", "off"):
            prefix = f"lpbench{uuid.uuid4().hex[:8]}"
            port = _free_port()
            api = _serve(port, prefix, auth)
            try:
                url = f"http://127.0.0.1:{port}"
                _wait_up(url, keys["admin"])
                rate = await _ingest_run(url, keys["ingest"] if auth == "on" else None, seconds)
                print(f"{r:5d}  {auth:4s}  {rate:8.0f}", flush=True)
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
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fanout")
    f.add_argument("--clients", default="250,500,1000,2000")
    f.add_argument("--seconds", type=float, default=15)
    i = sub.add_parser("ingest")
    i.add_argument("--seconds", type=float, default=10)
    i.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.cmd == "fanout":
        asyncio.run(fanout([int(x) for x in args.clients.split(",")], args.seconds))
    else:
        asyncio.run(ingest(args.seconds, args.rounds))


if __name__ == "__main__":
    main()
