"""The alerting branch in process (Bytewax testing source and sink): threshold and absence
rules on the flow's own windows and clock, the same changes on a replay, and a bad rule
file refused before the flow starts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from linkpulse.alerts.rules import RuleFileError
from linkpulse.alerts.types import AlertChange, AlertState
from linkpulse.config import Settings
from linkpulse.dataflows.alerting import (
    AlertingBranch,
    AlertingConfig,
    AlertingSinks,
    AlertLogic,
    alert_msg_id,
    alert_rows,
)
from linkpulse.dataflows.branch import RouteTick
from linkpulse.dataflows.chunks import Chunk
from linkpulse.dataflows.live_metrics import FlowOptions, build_flow
from tests.test_dataflow_helpers import TEST_METRICS, event

T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
RULES = """
rules:
  - name: busy
    kind: threshold
    metric: orders
    where: ['seller_id=""']
    op: ">"
    threshold: 2
    for: 2m
    severity: warning
    summary: "{{ tenant }} has {{ value }} orders a minute"
  - name: quiet
    kind: absence
    metric: orders
    where: ['seller_id=""']
    absent_for: 2m
    severity: critical
"""


def chunks(minutes: int, gap: range) -> list[Chunk]:
    ns = 1_000_000_000
    base = int(T0.timestamp())
    out = []
    seq = 0
    for m in range(minutes):
        msgs = []
        for k in range(0 if m in gap else 3):
            seq += 1
            t = base + m * 60 + 10 * k
            when = datetime.fromtimestamp(t, UTC)
            payload = json.dumps(event(seq, when, "acme", "order_placed", "s1", 5.0)).encode()
            msgs.append((payload, "lp.events.acme.order_placed", seq, t * ns))
        out.append(Chunk("p0", (base + m * 60 + 59) * ns, msgs))
    return out


def run(cfg: AlertingConfig, source: list[Chunk]) -> list[AlertChange]:
    out: list[AlertChange] = []
    flow = build_flow(
        Settings(),
        FlowOptions(metrics=TEST_METRICS, raw_events=False, scoring=None),
        source=TestingSource(source),
        branches=[AlertingBranch(cfg, AlertingSinks(store=TestingSink(out)))],
    )
    run_main(flow)
    return out


def minute_of(c: AlertChange) -> int:
    return int((c.at - T0).total_seconds() // 60)


def test_rules_fire_and_resolve_on_the_flows_windows_and_clock(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(RULES)
    cfg = AlertingConfig(rules=(tmp_path,))
    out = run(cfg, chunks(20, gap=range(8, 12)))
    got = [(c.rule, c.state.value, minute_of(c)) for c in out]
    # busy: 3 orders a minute from minute 0 (window end 1), pending, firing 2 minutes later;
    # the 4 silent minutes (8-11) make it stale (3 steps) and the absence fires at 2 minutes;
    # data again at minute 12: the absence resolves, busy starts over
    assert ("busy", "pending", 1) in got and ("busy", "firing", 3) in got
    assert ("quiet", "firing", 10) in got
    assert ("busy", "resolved", 11) in got
    quiet_resolved = [m for r, s, m in got if r == "quiet" and s == "resolved"]
    assert quiet_resolved and quiet_resolved[0] >= 12
    assert [m for r, s, m in got if r == "busy" and s == "firing"][1] == 15
    fired = next(c for c in out if c.rule == "busy" and c.state is AlertState.FIRING)
    assert fired.summary == "acme has 3 orders a minute"
    assert fired.series == "acme|orders||1m" and fired.labels["tenant"] == "acme"
    # a second run of the same stream gives the same changes (deterministic replay)
    again = run(AlertingConfig(rules=(tmp_path,)), chunks(20, gap=range(8, 12)))
    assert sorted(alert_msg_id(c) for c in again) == sorted(alert_msg_id(c) for c in out)


def test_a_bad_rule_file_refuses_the_start(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("rules:\n  - {name: x, kind: threshold, metric: nope}\n")
    with pytest.raises(RuleFileError, match=r"r.yaml:2: rules\[0\]\(x\).metric"):
        AlertingConfig(rules=(tmp_path,))


def test_the_step_takes_new_rules_and_resolves_the_removed_ones(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(RULES)
    cfg = AlertingConfig(rules=(tmp_path,), poll_s=0.0)
    logic = AlertLogic(cfg, None)
    ticks = [("r00", RouteTick("r00", T0.timestamp() + 60 * m)) for m in range(1, 2)]
    from tests.test_alerts_engine import win

    items = [("r00", win(i, 5.0, metric="orders")) for i in range(4)]
    out, _ = logic.on_batch([*items, *ticks])
    assert [c.state.value for c in out] == ["pending", "firing"]
    f.write_text("rules: []\n")
    out, _ = logic.on_batch([])
    assert [(c.rule, c.state.value) for c in out] == [("busy", "resolved")]
    # the state survives a snapshot
    again = AlertLogic(cfg, logic.snapshot())
    assert again.snapshot() == logic.snapshot()


def test_rows_keep_the_newest_revision_per_key() -> None:
    from tests.test_alerts_engine import thresh, win

    eng = thresh()
    first = eng.on_window(win(0, 0.09))[0]
    import msgspec

    newer = msgspec.structs.replace(first, revision=2, summary="newer")
    rows = alert_rows([newer, first])
    assert len(rows) == 1 and json.loads(rows[0][6])["summary"] == "newer"
    assert rows[0][:4] == (first.alert_id, "failures_high", first.series, "firing")


@pytest.mark.integration
async def test_changes_reach_the_alerts_table_and_the_alerts_stream(
    pg_dsn: str, nats_settings: Settings, nc: object
) -> None:
    import asyncio

    import msgspec
    import nats.errors
    import psycopg

    from linkpulse.bus.live import alert_subject
    from linkpulse.dataflows.alerting import AlertsNatsSink, AlertsStoreSink
    from linkpulse.store.migrate import migrate
    from tests.test_alerts_engine import thresh, win

    migrate(pg_dsn)
    eng = thresh()
    changes = eng.on_window(win(0, 0.09)) + eng.on_window(win(1, 0.01))
    assert [c.state.value for c in changes] == ["firing", "resolved"]

    def write() -> None:
        store = AlertsStoreSink(pg_dsn).build("alerts_store", 0, 1)
        store.write_batch(changes)
        store.write_batch(changes)  # a replay: idempotent
        store.close()
        out = AlertsNatsSink(nats_settings).build("alerts_nats", 0, 1)
        out.write_batch(changes)
        out.write_batch(changes)  # a replay: dropped by the stream (Nats-Msg-Id)
        out.close()

    await asyncio.to_thread(write)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT alert_id, rule, state, tenant, details->>'summary' FROM alerts ORDER BY at"
        ).fetchall()
    assert rows == [
        (c.alert_id, "failures_high", c.state.value, "acme", c.summary) for c in changes
    ]
    js = nc.jetstream()  # type: ignore[attr-defined]
    sub = await js.subscribe(
        alert_subject(nats_settings.subject_prefix, "acme"), ordered_consumer=True
    )
    got = []
    for _ in changes:
        msg = await sub.next_msg(timeout=10)
        got.append(msgspec.json.decode(msg.data, type=AlertChange))
    assert got == changes
    with pytest.raises(nats.errors.TimeoutError):  # nothing more: the replay was dropped
        await sub.next_msg(timeout=1)
