"""Ingestion throughput: raw NATS ceiling, validation, the publisher, and the HTTP API.

    .venv/bin/python -m bench.bench_ingest [--events 50000] [--batch 500] [--concurrency 4]
        [--rounds 3] [--stages raw,validate,pub,pub-nc,pub-lib,http] [--servers auto,asyncio-h11]
        [--auth on,off] [--tree LABEL=DIR ...]

Needs NATS with JetStream at LINKPULSE_NATS_URL (default nats://127.0.0.1:4222); the
``http`` stage also the local PostgreSQL and Redis (API keys in the database
``lp_bench_access``, rate-limit buckets under the run's own Redis prefix).
Stages:
  1. raw:       nats-py publish_async of pre-encoded bytes, acks awaited per chunk (ceiling)
  2. validate:  split_batch + decode_event of the request bodies (CPU only)
  3. pub:       EventPublisher.publish (encode, subject, Nats-Msg-Id, acks) on validated events
     pub-nc:    the same, its HPUB commands through nc.publish per message (not hand-framed)
     pub-lib:   the same messages (EventPublisher.prepare) through js.publish_async
  4. http:      POST /v1/events to one API process (uvicorn) in a subprocess, over TCP,
                for each server variant and auth mode: ``auto`` is what ``linkpulse serve``
                runs (uvloop and httptools when installed), ``asyncio-h11`` the pure-Python
                loop and HTTP parser; auth ``on`` posts with an ingest key, ``off`` runs
                with LINKPULSE_AUTH=off. Reports events/s and the API process's CPU per
                event (user + system, psutil), which a loaded machine disturbs less.
``--tree base=/tmp/lp_base --tree this=.`` runs the API from each copy of the ``linkpulse``
package named (e.g. ``git archive COMMIT linkpulse | tar -x -C /tmp/lp_base``) instead of
only this tree's, for a before/after in one run; ``pub-lib`` is this tree's ``prepare``
with nats-py's ``publish_async`` per message (what ``send`` did before), beside ``pub``.
Rounds are interleaved (every stage and variant once per round), best of N is kept; every
stage and variant uses its own throw-away stream, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
import psutil

if not __package__:  # run as a script (bench/ first on the path): the repository's root too
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.bench_sse import _dsn, _free_port, _keys  # noqa: E402
from linkpulse.bus import EventPublisher
from linkpulse.bus.live import live_channels
from linkpulse.config import Settings
from linkpulse.schemas import decode_event, split_batch

NATS_URL = os.environ.get("LINKPULSE_NATS_URL", "nats://127.0.0.1:4222")
REPO = Path(__file__).resolve().parents[1]
# server variant -> (uvicorn loop, uvicorn http)
SERVERS = {"auto": ("auto", "auto"), "asyncio-h11": ("asyncio", "h11")}


def make_events(n: int) -> list[dict[str, object]]:
    """~220-byte order events of tenant ``acme`` (the bench's ingest key's tenant)."""
    start = datetime.now(UTC) - timedelta(minutes=1)
    tag = uuid.uuid4().hex[:8]
    return [
        {
            "type": "order_placed",
            "event_id": f"bench-{tag}-{i}",
            "tenant": "acme",
            "event_time": (start + timedelta(milliseconds=i)).isoformat(),
            "user_id": f"u{i % 997}",
            "seller_id": f"s{i % 101}",
            "amount": round(5 + (i % 500) * 0.37, 2),
            "currency": "USD",
            "properties": {"order_id": f"o{i}"},
        }
        for i in range(n)
    ]


def bodies(events: list[dict[str, object]], batch: int) -> list[bytes]:
    return [json.dumps(events[i : i + batch]).encode() for i in range(0, len(events), batch)]


def settings_for(stage: str) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        nats_url=NATS_URL, stream_name=f"BENCH_{stage.upper()}_{tag}", subject_prefix=f"bench{tag}"
    )


async def drop_streams(*all_settings: Settings) -> None:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    for s in all_settings:
        # The events and dead-letter streams, and the API's live streams (its stream hub).
        live = [c.stream for c in live_channels(s)]
        for name in (s.stream_name, f"{s.stream_name}_DLQ", *live):
            try:
                await js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                pass
    await nc.close()


async def stage_raw(payloads: list[bytes], s: Settings, chunk: int = 1000) -> float:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream(publish_async_max_pending=chunk * 4)
    await js.add_stream(name=s.stream_name, subjects=[f"{s.subject_prefix}.>"])
    subject = f"{s.subject_prefix}.events.t.order_placed"
    start = time.perf_counter()
    for c in range(0, len(payloads), chunk):
        futures = [
            await js.publish_async(subject, p, headers={"Nats-Msg-Id": f"{c}-{i}"})
            for i, p in enumerate(payloads[c : c + chunk])
        ]
        await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    await nc.close()
    return len(payloads) / elapsed


def stage_validate(batches: list[bytes]) -> tuple[float, float, list]:
    """Events/s, CPU µs per event, and the events, of splitting and validating the bodies."""
    now = datetime.now(UTC)
    cpu0, start = time.process_time(), time.perf_counter()
    events = [
        decode_event(raw, now=now) for b in batches for raw in split_batch(b, "application/json")
    ]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return len(events) / elapsed, cpu / len(events) * 1e6, events


async def stage_publisher(
    events: list, s: Settings, batch: int, *, hand_framed: bool = True
) -> tuple[float, float]:
    """Events/s and CPU µs per event of ``EventPublisher.publish``, one call per batch
    (``hand_framed=False``: its HPUB commands through ``nc.publish``, the library path)."""
    pub = await EventPublisher.connect(s)
    pub.hand_framed = hand_framed
    cpu0, start = time.process_time(), time.perf_counter()
    for i in range(0, len(events), batch):
        await pub.publish(events[i : i + batch])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    await pub.close()
    return len(events) / elapsed, cpu / len(events) * 1e6


async def stage_publisher_lib(events: list, s: Settings, batch: int) -> tuple[float, float]:
    """``stage_publisher`` with nats-py's ``publish_async`` per message, acks awaited per batch:
    the library path ``EventPublisher.send`` replaced, on the same prepared messages."""
    pub = await EventPublisher.connect(s)
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream(publish_async_max_pending=batch * 16)
    cpu0, start = time.process_time(), time.perf_counter()
    for i in range(0, len(events), batch):
        messages = pub.prepare(events[i : i + batch])
        futures = [
            await js.publish_async(m.subject, m.payload, headers=m.headers) for m in messages
        ]
        await asyncio.wait(futures)
        assert all(f.result().seq for f in futures)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    await nc.close()
    await pub.close()
    return len(events) / elapsed, cpu / len(events) * 1e6


def serve_api(loop: str, http: str, port: int) -> None:
    """The API as ``linkpulse serve`` runs it, with uvicorn's loop and HTTP parser chosen."""
    import uvicorn

    from linkpulse.api import create_app
    from linkpulse.config import get_settings

    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        loop=loop,  # type: ignore[arg-type]
        http=http,  # type: ignore[arg-type]
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_keep_alive=75,
    )


def _nats_server() -> psutil.Process | None:
    """The local nats-server process, if there is one (its CPU is part of each event's cost)."""
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "nats-server":
            return p
    return None


def _cpu_s(p: psutil.Process | None) -> float:
    if p is None:
        return float("nan")
    t = p.cpu_times()
    return float(t.user + t.system)


def _uses_uvloop(pid: int) -> bool:
    """Whether the process has uvloop's extension loaded (so uvicorn picked it)."""
    try:
        return "uvloop" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


async def stage_http(
    batches: list[bytes], server: str, key: str | None, concurrency: int, tree: Path = REPO
) -> tuple[float, float, bool, str]:
    """Events/s, API CPU µs per event, whether uvloop was in use, and the CPU µs per event
    of nats-server and of this (client) process, for one variant."""
    s = settings_for("http")
    port = _free_port()
    loop, http = SERVERS[server]
    env = {
        **os.environ,
        "LINKPULSE_DATABASE_URL": _dsn(),
        "LINKPULSE_NATS_URL": NATS_URL,
        "LINKPULSE_STREAM_NAME": s.stream_name,
        "LINKPULSE_SUBJECT_PREFIX": s.subject_prefix,
        "LINKPULSE_REDIS_KEY_PREFIX": f"{s.subject_prefix}:",
        "LINKPULSE_LOG_LEVEL": "WARNING",
        "LINKPULSE_AUTH": "on" if key else "off",
        # The figure is ingest's, not the rate limiter's refusals'.
        "LINKPULSE_RATE_LIMITS": "admin=100000/100000,ingest=100000/100000",
        # The tree's linkpulse first (before the installed one), this bench's module next.
        "PYTHONPATH": os.pathsep.join([str(tree), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "serve", loop, http, str(port)]
    api = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            for _ in range(1800):  # start-up imports take >10 s on a loaded machine
                try:
                    if (await c.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            # One warm-up batch (first key lookup, first stream write), not timed.
            warm = json.dumps([{**json.loads(batches[0])[0], "event_id": "warm-up"}]).encode()
            r = await c.post("/v1/events", content=warm, headers=headers)
            assert r.status_code == 200, r.text[:300]
            proc = psutil.Process(api.pid)
            queue = list(reversed(batches))
            n_events = 0

            async def worker() -> None:
                nonlocal n_events
                while queue:
                    body = queue.pop()
                    r = await c.post("/v1/events", content=body, headers=headers)
                    assert r.status_code == 200, r.text[:300]
                    n_events += r.json()["accepted"]

            broker = _nats_server()
            api0, nats0, own0 = _cpu_s(proc), _cpu_s(broker), time.process_time()
            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
            api_cpu, nats_cpu = _cpu_s(proc) - api0, _cpu_s(broker) - nats0
            own_cpu = time.process_time() - own0
            note = (
                f"(nats-server {nats_cpu / n_events * 1e6:.1f}, "
                f"client {own_cpu / n_events * 1e6:.1f})"
            )
            return n_events / elapsed, api_cpu / n_events * 1e6, _uses_uvloop(api.pid), note
    finally:
        api.terminate()
        api.wait(timeout=30)
        await drop_streams(s)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="best of N, stages interleaved")
    ap.add_argument("--stages", default="raw,validate,pub,pub-nc,pub-lib,http")
    ap.add_argument("--servers", default="auto,asyncio-h11", help=f"of {', '.join(SERVERS)}")
    ap.add_argument("--auth", default="on,off")
    ap.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run the API from DIR/linkpulse (repeatable)",
    )
    args = ap.parse_args()
    # This tree's API unless trees are named (name this one too: --tree this=.).
    trees = {label: Path(d).resolve() for label, d in (t.split("=", 1) for t in args.tree)}
    trees = trees or {"": REPO}
    stages = args.stages.split(",")
    servers, auths = args.servers.split(","), args.auth.split(",")

    events = make_events(args.events)
    batches = bodies(events, args.batch)
    payloads = [json.dumps(ev).encode() for ev in events]
    keys = await _keys() if "http" in stages and "on" in auths else {}
    print(
        f"{args.events} events of ~{sum(map(len, payloads)) // len(payloads)} bytes, "
        f"batches of {args.batch}, {args.concurrency} concurrent HTTP clients, "
        f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)",
        flush=True,
    )
    best: dict[str, tuple[float, float | None]] = {}

    def keep(name: str, rate: float, cpu: float | None = None, note: str = "") -> None:
        old = best.get(name)
        if old is None or rate > old[0]:
            best[name] = (rate, cpu if old is None or cpu is None else min(cpu, old[1] or cpu))
        elif cpu is not None and old[1] is not None and cpu < old[1]:
            best[name] = (old[0], cpu)
        cpu_text = "" if cpu is None else f"  {cpu:7.1f} µs CPU/event"
        print(f"  {name:<44}{rate:>10,.0f}/s{cpu_text}  {note}", flush=True)

    dropped: list[Settings] = []
    try:
        # Interleaved rounds, best of each: the machine is shared, and a burst of
        # someone else's load should not decide a ratio.
        for r in range(args.rounds):
            print(f"round {r} (load {os.getloadavg()[0]:.2f})", flush=True)
            if "raw" in stages:
                dropped.append(s := settings_for("raw"))
                keep("raw nats publish_async (ceiling)", await stage_raw(payloads, s))
            decoded: list = []
            if {"validate", "pub", "pub-nc", "pub-lib"} & set(stages):
                rate, cpu, decoded = stage_validate(batches)
                if "validate" in stages:
                    keep("validate (split + decode_event)", rate, cpu)
            if "pub" in stages:
                dropped.append(s := settings_for("pub"))
                keep("EventPublisher.publish", *await stage_publisher(decoded, s, args.batch))
            if "pub-nc" in stages:
                dropped.append(s := settings_for("pub"))
                rate_cpu = await stage_publisher(decoded, s, args.batch, hand_framed=False)
                keep("EventPublisher.publish via nc.publish", *rate_cpu)
            if "pub-lib" in stages:
                dropped.append(s := settings_for("pub"))
                keep("prepare + publish_async", *await stage_publisher_lib(decoded, s, args.batch))
            if "http" in stages:
                for label, tree in trees.items():
                    for server in servers:
                        for auth in auths:
                            key = keys["ingest"] if auth == "on" else None
                            rate, cpu, uv, note = await stage_http(
                                batches, server, key, args.concurrency, tree
                            )
                            loop = "uvloop" if uv else "asyncio"
                            name = f"HTTP {server} ({loop}) auth {auth}"
                            keep(f"{name} {label}".rstrip(), rate, cpu, note)
    finally:
        await drop_streams(*dropped)
    print(f"best of {args.rounds} (events/s; lowest CPU µs/event):")
    for name, (rate, cpu) in best.items():
        cpu_text = "" if cpu is None else f"  {cpu:7.1f} µs CPU/event"
        print(f"  {name:<44}{rate:>10,.0f}/s{cpu_text}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve_api(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        asyncio.run(main())
