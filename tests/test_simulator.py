"""The traffic simulator: determinism, validity, realism, anomalies, labels, publishing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from typer.testing import CliRunner, Result

from linkpulse.cli import app
from linkpulse.config import Settings
from linkpulse.logging import configure_logging
from linkpulse.schemas import BaseEvent, decode_event, encode_event
from linkpulse.simulator import (
    MarketConfig,
    TrafficConfig,
    build_marketplace,
    generate,
    parse_anomaly,
    resolve,
)
from linkpulse.simulator.funnel import PAYMENT_DELAY_S
from linkpulse.simulator.runner import RunPlan, run
from linkpulse.simulator.sinks import FileSink, NatsSink

NOON = datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp()  # a Friday
MIDNIGHT = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
ROOT = Path(__file__).resolve().parents[1]


def _ts(ev: BaseEvent) -> float:
    return ev.event_time.timestamp()


def _encode_all(events: Sequence[BaseEvent]) -> bytes:
    return msgspec.json.Encoder().encode_lines(list(events))


# -- determinism and validity ------------------------------------------------------------


def test_same_seed_gives_byte_identical_streams() -> None:
    cfg = TrafficConfig(rate=200, start=NOON, duration=120, seed=7)
    first, second = _encode_all(list(generate(cfg))), _encode_all(list(generate(cfg)))
    assert first == second
    assert first.count(b"\n") > 10_000


def test_different_seed_gives_different_streams() -> None:
    a = list(generate(TrafficConfig(rate=200, start=NOON, duration=60, seed=1)))
    b = list(generate(TrafficConfig(rate=200, start=NOON, duration=60, seed=2)))
    assert {e.event_id for e in a}.isdisjoint({e.event_id for e in b})
    assert _encode_all(a) != _encode_all(b)


@pytest.fixture(scope="module")
def hour_sample() -> list[BaseEvent]:
    """One hour of traffic at noon, flat rate: ~700k events, shared by the realism tests."""
    return list(generate(TrafficConfig(rate=200, start=NOON, duration=3600, seasonality=False)))


def test_every_event_validates_and_is_in_range_and_order(hour_sample: list[BaseEvent]) -> None:
    times = [_ts(e) for e in hour_sample]
    assert times == sorted(times)
    assert NOON <= times[0] and times[-1] < NOON + 3600
    assert len({e.event_id for e in hour_sample}) == len(hour_sample)
    seen_types = set()
    for ev in hour_sample:
        # page views are 94% of traffic and all alike: check every 20th, all others.
        if ev.type == "page_view" and int(ev.event_id[-2:], 16) % 20:
            continue
        assert decode_event(encode_event(ev)) == ev
        seen_types.add(ev.type)
    assert len(seen_types) == 9  # every event type shows up within an hour


def test_rate_matches_the_option(hour_sample: list[BaseEvent]) -> None:
    # Refunds and reviews due after the hour are cut off, so allow a few percent.
    assert 200 * 3600 * 0.93 < len(hour_sample) < 200 * 3600 * 1.05


def test_funnel_is_consistent(hour_sample: list[BaseEvent]) -> None:
    placed: dict[str, BaseEvent] = {}
    settled: dict[str, BaseEvent] = {}
    refunds = 0
    for ev in hour_sample:
        order_id = ev.properties.get("order_id")
        if ev.type == "order_placed":
            placed[order_id] = ev
        elif ev.type in ("payment_settled", "payment_failed"):
            if order_id not in placed:
                # the run starts mid-stream: an order placed just before it is paid in it
                assert _ts(ev) < NOON + PAYMENT_DELAY_S[1]
                continue
            order = placed[order_id]
            assert _ts(order) < _ts(ev)
            assert (order.user_id, order.seller_id, order.amount, order.currency) == (
                ev.user_id,
                ev.seller_id,
                ev.amount,
                ev.currency,
            )
            assert ev.properties["order_id"] not in settled  # one payment outcome per order
            if ev.type == "payment_settled":
                settled[ev.properties["order_id"]] = ev
        elif ev.type == "refund_issued":
            refunds += 1
            if order_id not in settled:  # settled before the range began
                assert order_id not in placed
                continue
            pay = settled[order_id]
            assert _ts(ev) - _ts(pay) >= 300  # refunds come minutes to hours later
            assert ev.amount == pay.amount and ev.seller_id == pay.seller_id
    assert len(placed) > 10_000 and refunds > 20


def test_payment_failure_rate_is_near_the_base_rate(hour_sample: list[BaseEvent]) -> None:
    kinds = Counter(e.type for e in hour_sample)
    rate = kinds["payment_failed"] / (kinds["payment_failed"] + kinds["payment_settled"])
    assert 0.02 < rate < 0.03


def test_amounts_are_long_tailed_and_in_the_tenant_currency(
    hour_sample: list[BaseEvent],
) -> None:
    market = build_marketplace(MarketConfig())
    currency = {t.slug: t.currency for t in market.tenants}
    amounts = sorted(e.amount or 0.0 for e in hour_sample if e.type == "order_placed")
    assert all(e.currency == currency[e.tenant] for e in hour_sample if e.type == "order_placed")
    median, p99 = amounts[len(amounts) // 2], amounts[int(len(amounts) * 0.99)]
    assert amounts[0] > 0 and p99 > 5 * median  # log-normal: a long right tail


def test_top_tenth_of_sellers_take_most_orders(hour_sample: list[BaseEvent]) -> None:
    per_seller = Counter(e.seller_id for e in hour_sample if e.type == "order_placed")
    counts = sorted(per_seller.values(), reverse=True)
    top = sum(counts[: max(1, len(counts) // 10)])
    assert top / sum(counts) > 0.5


def test_daily_seasonality_is_visible() -> None:
    events = generate(TrafficConfig(rate=2, start=MIDNIGHT, duration=86400))
    per_hour = Counter(int((_ts(e) - MIDNIGHT) // 3600) for e in events)
    assert per_hour[20] > 3 * per_hour[3]  # evening peak vs the small hours
    assert per_hour[12] > per_hour[6]


def test_bad_options_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"--rate must be > 0, got -3"):
        TrafficConfig(rate=-3, start=NOON, duration=60)
    with pytest.raises(ValueError, match=r"--tenants must be between 1 and 1000, got 0"):
        MarketConfig(tenants=0)
    with pytest.raises(ValueError, match=r"--anomaly: unknown kind 'meteor'"):
        parse_anomaly("meteor@1m+1m")
    with pytest.raises(ValueError, match=r"magnitude must be > 1"):
        parse_anomaly("traffic_surge@1m+1m:acme=0.5")
    with pytest.raises(ValueError, match=r"unknown tenant 'nope'; this run has acme"):
        resolve(parse_anomaly("failure_spike:nope"), NOON, 60, build_marketplace(MarketConfig()))
    market = build_marketplace(MarketConfig())
    with pytest.raises(ValueError, match=r"window .* is outside the run"):
        resolve(parse_anomaly("failure_spike@10m+5m"), NOON, 300, market)
    # a window that overlaps the run's end is cut there, so the labels match the traffic
    cut = resolve(parse_anomaly("failure_spike@4m+5m"), NOON, 300, market)
    assert (cut.start, cut.end) == (NOON + 240, NOON + 300)


# -- anomalies and labels ------------------------------------------------------------------

ANOMALIES = (
    "failure_spike@10m+10m:acme",
    "revenue_drop@25m+10m:acme=0.6",
    "traffic_surge@40m+10m:globex=6",
    "refund_burst@55m+10m:acme/acme-s0000",
    "silent_stream@70m+10m:globex/payment_settled",
)


@pytest.fixture(scope="module")
def anomalous(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[BaseEvent], list[dict]]:
    """90 minutes with all five anomalies, run through the runner into a file."""
    tmp = tmp_path_factory.mktemp("sim")
    traffic = TrafficConfig(rate=100, start=NOON, duration=5400, seasonality=False)
    market = build_marketplace(traffic.market)
    resolved = tuple(resolve(parse_anomaly(s), NOON, 5400, market) for s in ANOMALIES)
    plan = RunPlan(traffic, resolved, labels_path=tmp / "labels.json")
    summary = asyncio.run(run(plan, FileSink(tmp / "events.ndjson")))
    lines = (tmp / "events.ndjson").read_bytes().splitlines()
    assert summary.events == len(lines) and not summary.interrupted
    events = [decode_event(line) for line in lines]
    return events, json.loads((tmp / "labels.json").read_text())


def _window(labels: list[dict], kind: str) -> tuple[float, float]:
    (label,) = [x for x in labels if x["kind"] == kind]
    return (
        datetime.fromisoformat(label["start"]).timestamp(),
        datetime.fromisoformat(label["end"]).timestamp(),
    )


def test_labels_file_lists_each_anomaly(anomalous: tuple[list[BaseEvent], list[dict]]) -> None:
    _, labels = anomalous
    got = {(x["kind"], x["series"], x["start"], x["end"]) for x in labels}
    assert got == {
        ("failure_spike", "acme|payment_failure_rate|", "2026-11-20T12:10:00+00:00",
         "2026-11-20T12:20:00+00:00"),
        ("revenue_drop", "acme|gmv|", "2026-11-20T12:25:00+00:00", "2026-11-20T12:35:00+00:00"),
        ("traffic_surge", "globex|page_view_count|", "2026-11-20T12:40:00+00:00",
         "2026-11-20T12:50:00+00:00"),
        ("refund_burst", "acme|refund_issued_count|acme-s0000", "2026-11-20T12:55:00+00:00",
         "2026-11-20T13:05:00+00:00"),
        ("silent_stream", "globex|payment_settled_count|", "2026-11-20T13:10:00+00:00",
         "2026-11-20T13:20:00+00:00"),
    }  # fmt: skip
    assert all(x["metric"] == x["series"].split("|")[1] for x in labels)


def _split(events: list[BaseEvent], start: float, end: float) -> tuple[list, list]:
    inside = [e for e in events if start <= _ts(e) < end]
    outside = [e for e in events if not start - 120 <= _ts(e) < end + 120]  # skip the edges
    return inside, outside


def test_failure_spike_raises_the_failure_rate_in_its_window(anomalous) -> None:
    events, labels = anomalous
    pays = [e for e in events if e.tenant == "acme" and e.type.startswith("payment_")]
    inside, outside = _split(pays, *_window(labels, "failure_spike"))

    def rate(evs: list[BaseEvent]) -> float:
        return sum(e.type == "payment_failed" for e in evs) / len(evs)

    assert rate(inside) > 0.25 and rate(outside) < 0.04


def test_revenue_drop_cuts_gmv_in_its_window(anomalous) -> None:
    events, labels = anomalous
    start, end = _window(labels, "revenue_drop")
    settled = [e for e in events if e.tenant == "acme" and e.type == "payment_settled"]
    inside, outside = _split(settled, start, end)
    gmv_in = sum(e.amount or 0 for e in inside) / (end - start)
    gmv_out = sum(e.amount or 0 for e in outside) / (5400 - (end - start) - 240)
    assert 0.25 < gmv_in / gmv_out < 0.6  # a 60% drop, with noise
    # the volume of orders stays: the amounts drop, not the count
    assert len(inside) / (end - start) > 0.7 * len(outside) / (5400 - (end - start) - 240)


def test_traffic_surge_multiplies_page_views(anomalous) -> None:
    events, labels = anomalous
    start, end = _window(labels, "traffic_surge")
    views = [e for e in events if e.tenant == "globex" and e.type == "page_view"]
    inside, outside = _split(views, start, end)
    ratio = (len(inside) / (end - start)) / (len(outside) / (5400 - (end - start) - 240))
    assert 4.5 < ratio < 7.5


def test_refund_burst_hits_one_seller_in_its_window(anomalous) -> None:
    events, labels = anomalous
    start, end = _window(labels, "refund_burst")
    refunds = [e for e in events if e.type == "refund_issued"]
    seller_in = [e for e in refunds if e.seller_id == "acme-s0000" and start <= _ts(e) < end]
    seller_out = [e for e in refunds if e.seller_id == "acme-s0000" and not start <= _ts(e) < end]
    others_in = [e for e in refunds if e.seller_id != "acme-s0000" and start <= _ts(e) < end]
    assert len(seller_in) > 20 * max(1, len(seller_out))
    assert len(seller_in) > 5 * max(1, len(others_in))
    settled = {e.properties["order_id"]: e for e in events if e.type == "payment_settled"}
    placed = {e.properties["order_id"] for e in events if e.type == "order_placed"}
    for ev in seller_in:  # every burst refund is for a real, earlier, settled order
        if ev.properties["order_id"] in settled:
            assert _ts(settled[ev.properties["order_id"]]) <= _ts(ev)
        else:  # or for one settled before the run began
            assert ev.properties["order_id"] not in placed
    assert len({e.properties["order_id"] for e in refunds}) == len(refunds)  # no double refund


def test_silent_stream_has_no_events_in_its_window(anomalous) -> None:
    events, labels = anomalous
    start, end = _window(labels, "silent_stream")
    series = [e for e in events if e.tenant == "globex" and e.type == "payment_settled"]
    assert not [e for e in series if start <= _ts(e) < end]
    assert [e for e in series if start - 600 <= _ts(e) < start]
    assert [e for e in series if end <= _ts(e) < end + 600]
    # other event types of the tenant keep flowing
    assert [e for e in events if e.tenant == "globex" and start <= _ts(e) < end]


# -- runner: live pacing, Ctrl-C, CLI --------------------------------------------------------


class _RecordingSink:
    """Keeps what it is sent, with the wall-clock time of each send."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, BaseEvent]] = []
        self.closed = False

    async def send(self, events: Sequence[BaseEvent]) -> None:
        now = time.time()
        self.sent.extend((now, e) for e in events)

    async def close(self) -> None:
        self.closed = True

    def describe(self) -> str:
        return "memory"


async def test_live_mode_paces_to_the_wall_clock_and_stamps_now() -> None:
    start = time.time()
    plan = RunPlan(TrafficConfig(rate=300, start=start, duration=1.5, seasonality=False), live=True)
    sink = _RecordingSink()
    summary = await run(plan, sink)
    assert sink.closed and summary.events == len(sink.sent) > 100
    assert 1.3 < summary.wall_seconds < 3.0  # paced, not as fast as possible
    for sent_at, ev in sink.sent:
        # stamped with the clock when due, and sent within a fraction of a second
        assert start - 0.01 <= _ts(ev) <= sent_at + 0.01
        assert sent_at - _ts(ev) < 0.5


async def test_live_mode_reads_time_from_the_injected_clock() -> None:
    # a clock a year ahead: events carry its time, pacing follows its passing
    shift = timedelta(days=365)

    def clock() -> datetime:
        return datetime.now(UTC) + shift

    start = clock()
    plan = RunPlan(
        TrafficConfig(rate=200, start=start.timestamp(), duration=0.6, seasonality=False), live=True
    )
    sink = _RecordingSink()
    await run(plan, sink, now_getter=clock)
    assert len(sink.sent) > 30
    for sent_at, ev in sink.sent:
        assert start <= ev.event_time <= datetime.fromtimestamp(sent_at, UTC) + shift


async def test_stop_ends_a_live_run_and_cuts_the_labels(tmp_path: Path) -> None:
    start = time.time()
    traffic = TrafficConfig(rate=200, start=start, duration=None, seasonality=False)
    market = build_marketplace(traffic.market)
    anomalies = tuple(
        resolve(parse_anomaly(s), start, None, market)
        for s in ("failure_spike@0s+1h:acme", "traffic_surge@30m+10m:acme")
    )
    plan = RunPlan(traffic, anomalies, live=True, labels_path=tmp_path / "labels.json")
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.8, stop.set)
    summary = await run(plan, _RecordingSink(), stop=stop)
    assert summary.interrupted and summary.events > 50
    labels = json.loads((tmp_path / "labels.json").read_text())
    # the surge never began; the spike is cut where the run stopped
    assert [x["kind"] for x in labels] == ["failure_spike"]
    end = datetime.fromisoformat(labels[0]["end"]).timestamp()
    assert start + 0.5 < end < start + 2.0


class _SafeCliRunner(CliRunner):
    """CliRunner that puts logging back on the real stderr afterwards.

    The root command configures structlog to print to ``sys.stderr``, which inside
    ``invoke`` is the runner's capture buffer, closed when it returns; later log lines
    (e.g. a NATS disconnect in another test) would then fail on a closed file.
    """

    def invoke(self, *args: Any, **kwargs: Any) -> Result:
        try:
            return super().invoke(*args, **kwargs)
        finally:
            configure_logging()


def test_cli_backfill_to_file_is_deterministic(tmp_path: Path) -> None:
    runner = _SafeCliRunner()
    args = ["simulate", "--start", "2026-11-20T12:00:00Z", "--duration", "2m", "--rate", "100",
            "--seed", "5", "--tenants", "2", "--sellers", "30", "-q",
            "--anomaly", "failure_spike@30s+1m:globex=0.5"]  # fmt: skip
    outs = []
    for name in ("a", "b"):
        res = runner.invoke(
            app,
            [
                *args,
                "--output",
                str(tmp_path / f"{name}.ndjson"),
                "--labels",
                str(tmp_path / f"{name}.json"),
            ],  # fmt: skip
        )
        assert res.exit_code == 0, res.output
        assert "events by type" in res.output and "failure_spike" in res.output
        outs.append((tmp_path / f"{name}.ndjson").read_bytes())
    assert outs[0] == outs[1]
    traffic = TrafficConfig(
        rate=100, start=NOON, duration=120, seed=5, market=MarketConfig(2, 30, seed=5)
    )
    market = build_marketplace(traffic.market)
    spike = resolve(parse_anomaly("failure_spike@30s+1m:globex=0.5"), NOON, 120, market)
    assert outs[0] == _encode_all(list(generate(traffic, market, [spike])))
    labels = json.loads((tmp_path / "a.json").read_text())
    assert labels == [spike.label()]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "-3", "--duration", "1m"], "--rate must be > 0, got -3"),
        (["--duration", "soon"], "--duration: expected a duration like"),
        (["--start", "2026-11-20T12:00:00Z"], "--duration is required with --start"),
        (["--start", "yesterday", "--duration", "1m"], "--start: expected an ISO 8601 time"),
        (["--tenants", "0", "--duration", "1m"], "--tenants must be between 1 and 1000, got 0"),
        (["--anomaly", "boom", "--duration", "1m"], "--anomaly: unknown kind 'boom'"),
        (["--anomaly", "failure_spike:zzz", "--duration", "1m"], "unknown tenant 'zzz'"),
        (["--failure-rate", "1.5", "--duration", "1m"], "--failure-rate must be in [0, 1)"),
        (["--anomalies", "/nonexistent.json", "--duration", "1m"], "--anomalies: cannot read"),
        (["--rate", "5"], "--dry-run needs --duration"),
    ],
)
def test_cli_rejects_bad_options_by_name(args: list[str], message: str) -> None:
    res = _SafeCliRunner().invoke(app, ["simulate", "--dry-run", *args])
    assert res.exit_code == 2
    assert message in res.output


def test_cli_refuses_to_publish_a_future_backfill() -> None:
    # checked before connecting: the pipeline would reject future events anyway
    res = _SafeCliRunner().invoke(
        app, ["simulate", "--start", "2999-01-01T00:00:00Z", "--duration", "1m"]
    )
    assert res.exit_code == 2
    assert "ends in the future" in res.output


def test_cli_reads_an_anomalies_file(tmp_path: Path) -> None:
    spec = [{"kind": "silent_stream", "start": "1m", "duration": "1m", "tenant": "acme",
             "event_type": "page_view"}]  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out.ndjson"
    res = _SafeCliRunner().invoke(
        app,
        [
            "simulate",
            "--start",
            "2026-11-20T12:00:00Z",
            "--duration",
            "3m",
            "--rate",
            "50",
            "--anomalies",
            str(tmp_path / "spec.json"),
            "--output",
            str(out),
            "--labels",
            str(tmp_path / "labels.json"),
            "-q",
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    events = [decode_event(line) for line in out.read_bytes().splitlines()]
    silent = [e for e in events if e.tenant == "acme" and e.type == "page_view"
              and NOON + 60 <= _ts(e) < NOON + 120]  # fmt: skip
    assert not silent and len(events) > 1000
    (label,) = json.loads((tmp_path / "labels.json").read_text())
    assert label["series"] == "acme|page_view_count|" and label["kind"] == "silent_stream"


# -- integration: real NATS JetStream -----------------------------------------------------


async def _stream_sample(nc: Client, settings: Settings, n: int) -> list[BaseEvent]:
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        f"{settings.subject_prefix}.events.>", stream=settings.stream_name
    )
    msgs = await sub.fetch(n, timeout=5)
    for m in msgs:
        assert m.headers is not None and m.headers["Nats-Msg-Id"]
    return [decode_event(m.data) for m in msgs]


@pytest.fixture
async def drop_dlq(nats_settings: Settings, nc: Client) -> AsyncIterator[None]:
    """The publisher also creates the dead-letter stream, which `nc` does not delete."""
    yield
    try:
        await nc.jetstream().delete_stream(f"{nats_settings.stream_name}_DLQ")
    except NotFoundError:
        pass


@pytest.mark.integration
async def test_runner_backfill_publishes_into_jetstream(
    nats_settings: Settings, nc: Client, drop_dlq: None
) -> None:
    # no seasonality: the count must not depend on the hour the test runs at
    traffic = TrafficConfig(
        rate=100, start=time.time() - 600, duration=60, seed=3, seasonality=False
    )
    expected = list(generate(traffic))
    summary = await run(RunPlan(traffic), await NatsSink.connect(nats_settings))
    assert summary.events == len(expected) > 3000
    info = await nc.jetstream().stream_info(nats_settings.stream_name)
    assert info.state.messages == len(expected)
    sample = await _stream_sample(nc, nats_settings, 50)
    assert sample == expected[:50]  # stored in order, decoding back to the same events


@pytest.mark.integration
@pytest.mark.slow
async def test_cli_live_run_publishes_into_jetstream(
    nats_settings: Settings, nc: Client, drop_dlq: None, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "LINKPULSE_NATS_URL": nats_settings.nats_url,
        "LINKPULSE_STREAM_NAME": nats_settings.stream_name,
        "LINKPULSE_SUBJECT_PREFIX": nats_settings.subject_prefix,
    }
    started = datetime.now(UTC)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from linkpulse.cli import main; main()",
        "simulate", "--duration", "3s", "--rate", "200",
        "--no-seasonality", "-q", "--labels", str(tmp_path / "labels.json"),
        "--anomaly", "traffic_surge@1s+1s:acme=3",
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    m = re.search(r"([\d,]+) events to NATS", out.decode())
    assert m, out.decode()
    published = int(m[1].replace(",", ""))
    info = await nc.jetstream().stream_info(nats_settings.stream_name)
    assert info.state.messages == published > 200
    sample = await _stream_sample(nc, nats_settings, 20)
    for ev in sample:  # live mode: stamped with the wall clock of the run
        assert started - timedelta(seconds=1) < ev.event_time < datetime.now(UTC)
    (label,) = json.loads((tmp_path / "labels.json").read_text())
    assert label["series"] == "acme|page_view_count|"


@pytest.mark.slow
async def test_ctrl_c_stops_a_live_run_cleanly(tmp_path: Path) -> None:
    out, labels = tmp_path / "live.ndjson", tmp_path / "labels.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from linkpulse.cli import main; main()",
        "simulate", "--rate", "300", "--no-seasonality", "-q", "--output", str(out),
        "--labels", str(labels), "--anomaly", "failure_spike@1s+1h:acme",
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    # Interrupt after about 3 s of traffic (the labeled spike starts at 1 s),
    # however long the interpreter took to start: wait for the file, not a clock.
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_bytes().count(b"\n") >= 900):
        assert proc.returncode is None, (await proc.communicate())[1].decode()
        assert time.monotonic() < deadline, "the simulator wrote no traffic"
        await asyncio.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert "(interrupted)" in text
    m = re.search(r"([\d,]+) events to", text)
    assert m, text
    lines = out.read_bytes().splitlines()
    assert len(lines) == int(m[1].replace(",", "")) > 100  # everything generated was written
    (label,) = json.loads(labels.read_text())
    end = datetime.fromisoformat(label["end"])
    assert end < datetime.now(UTC)  # cut where the run stopped, not an hour later
    assert decode_event(lines[-1]).event_time <= end + timedelta(seconds=1)


# -- the anomaly kinds made for the detector evaluation --------------------------------------


@pytest.fixture(scope="module")
def shifted() -> tuple[list[BaseEvent], float]:
    """Three hours from 06:00 with a drift on acme, a seller shift on globex, a moved curve on
    initech (each from the first hour to the end)."""
    start = datetime(2026, 11, 16, 6, tzinfo=UTC).timestamp()
    traffic = TrafficConfig(rate=20, start=start, duration=3 * 3600, seed=3)
    market = build_marketplace(traffic.market)
    specs = (
        "gradual_drift@1h+2h:acme=0.6",
        "seller_shift@1h+2h:globex/globex-s0000=0.9",
        "pattern_change@1h+2h:initech=6",
    )
    resolved = [resolve(parse_anomaly(s), start, traffic.duration, market) for s in specs]
    return list(generate(traffic, market, resolved)), start


def _per_hour(events: list[BaseEvent], start: float, pred: Any) -> list[int]:
    c = Counter(int((_ts(e) - start) // 3600) for e in events if pred(e))
    return [c[h] for h in range(3)]


def test_gradual_drift_thins_the_tenant_more_and_more(shifted) -> None:
    events, start = shifted
    acme = _per_hour(events, start, lambda e: e.tenant == "acme" and e.type == "page_view")
    globex = _per_hour(events, start, lambda e: e.tenant == "globex" and e.type == "page_view")
    # relative to an untouched tenant: hour 1 loses ~15%, hour 2 ~45% (ramp to 60%)
    r = [a / g for a, g in zip(acme, globex, strict=True)]
    assert r[2] < 0.75 * r[1] < 0.75 * 0.95 * r[0], (acme, globex)


def test_seller_shift_removes_that_sellers_orders_only(shifted) -> None:
    events, start = shifted
    target = _per_hour(events, start, lambda e: e.type == "order_placed"
                       and e.seller_id == "globex-s0000")  # fmt: skip
    other = _per_hour(events, start, lambda e: e.type == "order_placed"
                      and e.seller_id == "globex-s0001")  # fmt: skip
    assert target[1] + target[2] < 0.5 * 2 * target[0], target  # traffic rises, orders fall
    assert other[1] > 0.6 * other[0], other


def test_pattern_change_moves_the_daily_curve(shifted) -> None:
    events, start = shifted
    initech = _per_hour(events, start, lambda e: e.tenant == "initech" and e.type == "page_view")
    globex = _per_hour(events, start, lambda e: e.tenant == "globex" and e.type == "page_view")
    # 08:00-09:00 now follows the curve of 02:00-03:00, the night trough
    assert initech[2] / globex[2] < 0.6 * initech[0] / globex[0], (initech, globex)


def test_new_kinds_parse_and_check_their_magnitude() -> None:
    assert parse_anomaly("seller_shift@1h+1h:acme/acme-s0003=0.5").seller_id == "acme-s0003"
    with pytest.raises(ValueError, match="in \\(0, 24\\)"):
        parse_anomaly("pattern_change=30")
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        parse_anomaly("gradual_drift=1.5")
