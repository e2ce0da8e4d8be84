"""`linkpulse eval anomalies`: --csv backtests and a small simulated evaluation."""

from __future__ import annotations

import csv
import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from linkpulse.cli import app
from linkpulse.online_ml.csvscore import OUT_COLUMNS

SEED = 7
T0 = datetime(2026, 11, 16, tzinfo=UTC)
runner = CliRunner()


def _flat(output: str) -> str:
    """The CLI's error text without rich's box and line wrapping."""
    return " ".join(output.replace("│", " ").split())


def _write(path: Path, rows: list[str], header: str = "timestamp,value,label") -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _series(n: int, spike_at: int) -> list[str]:
    rng = random.Random(SEED)
    rows = []
    for i in range(n):
        v = 100.0 + 30.0 * math.sin(2 * math.pi * i / 1440.0) + rng.gauss(0, 5)
        if i == spike_at:
            v *= 2.5
        t = (T0 + timedelta(minutes=i)).isoformat().replace("+00:00", "Z")
        rows.append(f"{t},{v:.3f},{int(i == spike_at)}")
    return rows


def test_csv_ranks_the_known_spike_highest(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.csv", _series(1500, spike_at=1234))
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["eval", "anomalies", "--csv", str(src), "--csv-out", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == OUT_COLUMNS
        rows = list(reader)
    assert len(rows) == 1500
    ranked = sorted(range(len(rows)), key=lambda i: -float(rows[i]["score"]))
    assert ranked[0] == 1234, (rows[ranked[0]], SEED)
    top = rows[1234]
    assert float(top["score"]) >= 0.99
    assert "above the usual" in top["explanation"]
    assert float(top["lower"]) <= float(top["expected"]) <= float(top["upper"])
    assert "labeled anomalies paged: 1/1" in result.output


def test_csv_fills_missing_rows_as_empty_steps(tmp_path: Path) -> None:
    rows = _series(600, spike_at=-1)
    del rows[300:305]  # five minutes without a row
    src = _write(tmp_path / "holes.csv", rows)
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["eval", "anomalies", "--csv", str(src), "--csv-out", str(out)])
    assert result.exit_code == 0, result.output
    with out.open() as f:
        got = list(csv.DictReader(f))
    assert len(got) == 600
    assert [r["value"] for r in got[300:305]] == [""] * 5
    assert "Holes: no data for 5 steps, usual for Monday 05:04 is " in got[304]["explanation"]


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("time,value", ["2026-11-16T00:00:00Z,1"], "line 1: missing column timestamp"),
        ("timestamp,amount", ["2026-11-16T00:00:00Z,1"], "line 1: missing column value"),
        ("timestamp,value", ["2026-11-16T00:00:00Z,1", "yesterday,2"], "line 3: timestamp"),
        (
            "timestamp,value",
            ["2026-11-16T00:01:00Z,1", "2026-11-16T00:00:00Z,2"],
            "line 3: timestamp 2026-11-16T00:00:00Z is not after",
        ),
        ("timestamp,value", ["2026-11-16T00:00:00Z,nan"], "line 2: value: NaN"),
        ("timestamp,value", ["2026-11-16T00:00:00Z,abc"], "line 2: value: expected a number"),
        ("timestamp,value,label", ["2026-11-16T00:00:00Z,1,yes"], "line 2: label"),
        ("timestamp,value", ["2026-11-16T00:00:00Z"], "line 2: expected 2 columns"),
        ("timestamp,value", ["2026-11-16T00:00:00Z,1"], "at least 3 are needed"),
    ],
)
def test_bad_csv_files_name_the_line(
    tmp_path: Path, header: str, rows: list[str], message: str
) -> None:
    src = _write(tmp_path / "bad.csv", rows, header=header)
    result = runner.invoke(app, ["eval", "anomalies", "--csv", str(src)])
    assert result.exit_code == 2
    assert message in _flat(result.output), result.output


def test_a_missing_csv_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "anomalies", "--csv", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2
    assert "cannot read" in _flat(result.output)


def test_small_simulated_evaluation_writes_a_report_and_a_plot(tmp_path: Path) -> None:
    """Two simulated days, one tenant: the same code path as the 14-day report."""
    out, png = tmp_path / "report.json", tmp_path / "plot.png"
    args = [
        "eval", "anomalies", "--days", "2", "--warmup-days", "1", "--rate", "3",
        "--tenants", "1", "--sellers", "5", "--per-kind", "1", "--seeds", "11",
        "--tune-seeds", "", "--kinds", "traffic_surge,silent_stream,failure_spike",
        "--out", str(out), "--plot", str(png),
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    kinds = report["report"]["kinds"]
    assert sorted(kinds) == ["failure_spike", "silent_stream", "traffic_surge"]
    # the loud kinds are caught on the simulator's traffic even with one day of history
    for kind in ("traffic_surge", "silent_stream", "failure_spike"):
        assert kinds[kind]["recall"] == 1.0, (kind, kinds[kind])
        assert kinds[kind]["median_delay"] <= 5, (kind, kinds[kind])
    seed = report["seeds"]["11"]
    assert seed["events"] > 100_000 and seed["scoring"]["series"] > 10
    # each failure spike has its oracle's delay beside its own: the oracle knows the rate and
    # the start, so it pages no later than the detector
    spike = seed["kinds"]["failure_spike"]
    assert len(spike["oracle_delays"]) == len(spike["label_delays"]) == 1
    assert spike["oracle_delays"][0] is not None
    assert spike["oracle_delays"][0] <= spike["label_delays"][0]
    assert kinds["failure_spike"]["median_oracle_delay"] == spike["oracle_delays"][0]
    assert kinds["traffic_surge"]["median_oracle_delay"] is None  # no oracle for that kind
    assert {"1m", "1h"} <= set(report["forecasts"]) or report["forecasts"] == {}
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_eval_options_are_checked(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "anomalies", "--days", "2", "--warmup-days", "3"])
    assert result.exit_code == 2 and "--days must be more than" in _flat(result.output)
    result = runner.invoke(app, ["eval", "anomalies", "--kinds", "meteor"])
    assert result.exit_code == 2 and "--kinds: unknown" in _flat(result.output)
    result = runner.invoke(app, ["eval", "anomalies", "--jobs", "0"])
    assert result.exit_code == 2 and "--jobs must be >= 1" in _flat(result.output)


def test_a_seller_label_is_found_only_on_that_sellers_or_the_tenants_series() -> None:
    from linkpulse.online_ml.quality import Label, evaluate_scores

    lab = Label(kind="seller_shift", tenant="acme", start=10, end=40, seller_id="acme-s0001")
    quiet = [0.0] * 100
    paged = [0.0] * 20 + [1.0] + [0.0] * 79  # a page 10 windows into the label
    for key, found in (
        ("acme|orders|seller_id=acme-s0002|1m", False),  # another seller: not this anomaly
        ("acme|orders|seller_id=acme-s0001|1m", True),
        ("acme|orders||1m", True),  # the tenant's series (its root cause names the seller)
        ("globex|orders||1m", False),  # another tenant
    ):
        scores = {"acme|orders||1m": quiet, key: paged}
        kind = evaluate_scores(scores, [lab], minutes=100)["kinds"]["seller_shift"]
        assert kind["detected"] == int(found), (key, kind)
        assert kind["delays"] == ([10.0] if found else []), key
        assert kind["label_delays"] == [10.0 if found else None], key


def test_label_delays_keep_the_labels_order_with_the_missed_ones() -> None:
    from linkpulse.online_ml.quality import Label, evaluate_scores

    labs = [Label("refund_burst", "acme", 10, 20), Label("refund_burst", "acme", 50, 60),
            Label("refund_burst", "acme", 130, 140)]  # fmt: skip
    scores = [0.0] * 200
    scores[13] = scores[131] = 1.0  # the first found after 3 windows, the third after 1
    kind = evaluate_scores({"acme|refunds||1m": scores}, labs, minutes=200)["kinds"]
    assert kind["refund_burst"]["label_delays"] == [3.0, None, 1.0]
    assert kind["refund_burst"]["delays"] == [3.0, 1.0]


def test_the_oracle_pages_at_the_first_window_rare_enough_and_never_before_the_start() -> None:
    from linkpulse.online_ml.quality import Label, oracle_rate_delay
    from linkpulse.online_ml.stats import binom_sf

    lab = Label(kind="failure_spike", tenant="acme", start=10, end=25)
    trials = [4.0] * 60
    # a burst of failures before the label is not the label's: the oracle starts at its start
    rates = [0.0] * 6 + [1.0] * 4 + [0.0, 0.5, 0.0, 0.75] + [0.0] * 46
    delay = oracle_rate_delay(rates, trials, lab, 0.02)
    alpha = -math.log(0.99) / 1440
    # minute 13's window from minute 11 has 5 of 12; no window ending earlier is rare enough
    assert binom_sf(5, 12, 0.02) <= alpha < binom_sf(2, 4, 0.02)
    assert delay == 3.0
    assert oracle_rate_delay(rates, trials, lab, 0.02, threshold=0.999999) is None


def test_one_record_order_is_no_page_on_a_heavy_tailed_sum_but_is_on_a_normal_one() -> None:
    """A new record by one big order is expected every few days of log-normal amounts."""
    from linkpulse.online_ml.seasonal import SeasonalBaseline

    rng = random.Random(SEED)
    heavy = SeasonalBaseline(series="acme|gmv||1m", point_tail="t3", clip=8.0, grace=1440)
    normal = SeasonalBaseline(series="acme|gmv||1m", grace=1440)
    for i in range(3 * 1440):
        orders = sum(1 for _ in range(6) if rng.random() < 0.5)
        x = sum(rng.lognormvariate(math.log(35.0), 0.8) for _ in range(orders))
        t = T0 + timedelta(minutes=i)
        heavy.update(t, x)
        normal.update(t, x)
    t = T0 + timedelta(days=3)
    record = 3 * 35.0 * 40.0  # three usual orders and one of 40x the median
    s_heavy, s_normal = heavy.update(t, record), normal.update(t, record)
    assert s_heavy.details.novel and s_normal.details.novel, SEED
    assert s_heavy.score < 0.99 <= s_normal.score, (s_heavy.score, s_normal.score, SEED)
