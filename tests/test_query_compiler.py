"""The query core without services: catalogue, source choice, compiled SQL, cursors, body checks."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from psycopg import sql

from linkpulse.api.routes.query_body import QueryBody, to_table
from linkpulse.query import cursor as cursors
from linkpulse.query.catalog import DIMENSIONS, KPI_NAMES, MEASURES, catalog_body
from linkpulse.query.compiler import Column, Filter, Plan, _after, compile_plan
from linkpulse.query.sources import RAW, ROLLUPS, WINDOWS, choose
from linkpulse.query.timegrid import QueryError, check_points, check_range, kpi_period

DAY = datetime(2026, 12, 1, tzinfo=UTC)


def _text(c: sql.Composable) -> str:
    """The SQL with identifiers and literals rendered (no connection: the simple quoting)."""
    if isinstance(c, sql.Composed):
        return "".join(_text(p) for p in c)
    if isinstance(c, sql.SQL):
        return c.as_string(None)
    if isinstance(c, sql.Identifier):
        return ".".join(f'"{s}"' for s in c._obj)
    if isinstance(c, sql.Literal):
        return f"'{c._obj}'"
    raise TypeError(c)


def test_catalog_lists_every_measure_the_contract_names() -> None:
    body = catalog_body()
    names = {m["name"] for m in body["measures"]}
    assert {"events", "orders", "gmv", "page_views", "signups", "refunds", "refund_amount",
            "payments_failed", "payments_settled", "payment_failure_rate", "conversion",
            "active_users"} <= names  # fmt: skip
    assert set(KPI_NAMES) <= names
    assert {d["name"]: d["type"] for d in body["dimensions"]} == {
        "seller_id": "text", "type": "text", "hour_of_day": "int", "day_of_week": "int",
    }  # fmt: skip
    assert all(m["unit"] in {"currency", "count", "ratio", "users"} for m in body["measures"])


@pytest.mark.parametrize(
    ("measures", "dims", "start", "end", "grain", "expected"),
    [
        (["gmv"], [], DAY, DAY + timedelta(days=7), 86400, "events_1d"),
        (["gmv"], [], DAY, DAY + timedelta(days=7), 3600, "events_1h"),
        (["gmv"], [], DAY + timedelta(hours=1), DAY + timedelta(days=1), None, "events_1h"),
        (["orders"], [], DAY, DAY + timedelta(minutes=5), 300, "events_1m"),
        (["orders"], ["day_of_week"], DAY, DAY + timedelta(days=7), None, "events_1d"),
        (["orders"], ["hour_of_day"], DAY, DAY + timedelta(days=7), None, "events_1h"),
        (["orders"], [], DAY, DAY + timedelta(seconds=90), None, "events"),
        (["orders", "active_users"], [], DAY, DAY + timedelta(days=1), 86400, "events"),
        (["active_users"], [], DAY, DAY + timedelta(days=1), 86400, "users_1h"),
        (
            ["active_users"],
            ["hour_of_day", "seller_id"],
            DAY,
            DAY + timedelta(days=7),
            None,
            "users_1h",
        ),  # fmt: skip
        (["active_users"], [], DAY, DAY + timedelta(minutes=30), 60, "events"),
        (["late_events"], [], DAY, DAY + timedelta(hours=1), 60, "metric_windows"),
    ],
)
def test_the_coarsest_exact_source_is_chosen(
    measures: list[str],
    dims: list[str],
    start: datetime,
    end: datetime,
    grain: int | None,
    expected: str,
) -> None:
    chosen = choose(
        [MEASURES[m] for m in measures], [DIMENSIONS[d] for d in dims], start, end, grain
    )
    assert chosen.name == expected


def test_flow_only_measures_refuse_what_their_windows_cannot_answer() -> None:
    late, orders = MEASURES["late_events"], MEASURES["orders"]
    with pytest.raises(QueryError) as e:
        choose([late, orders], [], DAY, DAY + timedelta(hours=1), None)
    assert e.value.field == "measures"
    with pytest.raises(QueryError) as e:
        choose([late], [], DAY, DAY + timedelta(seconds=30), None)
    assert e.value.field == "start"


def test_compiled_sql_names_only_catalogue_items_and_binds_every_value() -> None:
    evil = "s1'; DROP TABLE events; --"
    plan = Plan(
        [MEASURES["gmv"], MEASURES["conversion"]],
        [DIMENSIONS["seller_id"], DIMENSIONS["hour_of_day"]],
        DAY,
        DAY + timedelta(days=1),
        ROLLUPS[1],
        grain_s=3600,
        seller=evil,
        filters=[Filter(DIMENSIONS["type"], "in", (evil, "page_view"))],
        order=[("gmv", True)],
        limit=11,
    )
    c = compile_plan(plan)
    text = _text(c.statement)
    assert evil not in text and "DROP" not in text
    assert evil in c.params and [evil, "page_view"] in c.params
    assert text.count("%s") == len(c.params)
    assert 'FROM "analyst"."events_1h"' in text and "GROUP BY 1, 2, 3" in text
    assert [col.name for col in c.columns] == [
        "time",
        "seller_id",
        "hour_of_day",
        "gmv",
        "conversion",
    ]
    assert [(col.name, desc) for col, desc in c.key] == [
        ("gmv", True), ("time", False), ("seller_id", False), ("hour_of_day", False),
    ]  # fmt: skip
    assert 'ORDER BY "gmv" DESC NULLS LAST, "time" ASC NULLS LAST' in text


@pytest.mark.parametrize("source", [*ROLLUPS, RAW])
def test_measures_read_the_source_columns(source: object) -> None:
    plan = Plan(
        [MEASURES["orders"], MEASURES["gmv"], MEASURES["events"]], [], DAY, DAY + timedelta(days=1),
        source,  # type: ignore[arg-type]
    )  # fmt: skip
    text = _text(compile_plan(plan).statement)
    if plan.source is RAW:
        assert "count(*) FILTER (WHERE type IN ('order_placed'))" in text and "sum(amount)" in text
        where = text.split('"analyst"."events" WHERE')[1]
        assert "type IN" not in where  # events of every type: no type filter
    else:
        assert "sum(events) FILTER (WHERE type IN ('order_placed'))" in text
        assert "sum(revenue)" in text


def test_windows_source_reads_the_flows_one_minute_tenant_series() -> None:
    plan = Plan([MEASURES["late_events"]], [], DAY, DAY + timedelta(hours=1), WINDOWS, grain_s=300)
    text = _text(compile_plan(plan).statement)
    assert "metric = 'late_events'" in text and "\"window\" = '1m' AND dims_key = ''" in text


def test_keyset_condition_orders_nulls_last_both_ways() -> None:
    key = [(Column("gmv", "float"), True), (Column("seller_id", "text"), False)]
    params: list[object] = []
    text = _text(_after(key, [12.5, None], params))
    # after (12.5, NULL): a smaller gmv (or a NULL gmv); no seller sorts after NULL
    assert text == '(("gmv" < %s::float8 OR "gmv" IS NULL))' and params == [12.5]
    params = []
    text = _text(_after(key, [None, "s1"], params))
    assert "IS NOT DISTINCT FROM" in text and params == [None, "s1"]


def test_keyset_pages_of_a_python_model_cover_everything_once() -> None:
    """The condition _after builds, evaluated in Python on random rows with NULLs."""
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    rows = {
        (rnd.choice([None, 1.0, 2.0, 3.0]), rnd.choice([None, "a", "b", "c"])) for _ in range(40)
    }

    def sort_key(r: tuple[float | None, str | None]) -> tuple[bool, float, bool, str]:
        # gmv DESC NULLS LAST, seller ASC NULLS LAST
        return (r[0] is None, -(r[0] or 0), r[1] is None, r[1] or "")

    def after(r: tuple[float | None, str | None], k: tuple[float | None, str | None]) -> bool:
        g, s = r
        kg, ks = k
        first = kg is not None and (g is None or g < kg)
        second = ks is not None and g == kg and (s is None or s > ks)
        return first or second

    ordered = sorted(rows, key=sort_key)
    pages, last = [], None
    while True:
        rest = [r for r in ordered if last is None or after(r, last)]
        page = rest[:3]
        if not page:
            break
        pages += page
        last = page[-1]
    assert pages == ordered, f"seed {seed}"


def test_cursors_round_trip_and_refuse_tampering() -> None:
    fp = cursors.fingerprint({"measures": ["events"], "limit": 5, "cursor": "ignored"})
    assert fp == cursors.fingerprint({"limit": 5, "measures": ["events"]})
    c = cursors.encode(fp, [DAY, "s1", 3, 2.5])
    assert cursors.decode(c, fp, ["time", "text", "int", "float"]) == [DAY, "s1", 3, 2.5]
    for bad, kinds in [
        ("!!", ["text"]),
        (cursors.encode(fp, ["x"]), ["time"]),
        (cursors.encode(fp, [1, 2]), ["int"]),
        (cursors.encode("other", [1]), ["int"]),
        (cursors.encode(fp, [True]), ["int"]),
    ]:
        with pytest.raises(QueryError) as e:
            cursors.decode(bad, fp, kinds)
        assert e.value.field == "cursor" and e.value.status == 400


def test_time_checks_name_the_field() -> None:
    with pytest.raises(QueryError) as e:
        check_range(DAY, DAY)
    assert e.value.field == "end"
    with pytest.raises(QueryError) as e:
        check_range(datetime(1, 1, 1, tzinfo=UTC), DAY)
    assert e.value.field == "start"
    with pytest.raises(QueryError) as e:
        check_points(DAY, DAY + timedelta(days=30), 60, max_points=10_000, field="step")
    assert e.value.field == "step" and "43200 points" in e.value.detail
    assert check_points(DAY, DAY + timedelta(days=1), 60, max_points=10_000, field="step") == 1440
    start, end = kpi_period("24h", DAY + timedelta(minutes=7))
    assert (start, end) == (DAY - timedelta(hours=23), DAY + timedelta(hours=1))


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"measures": ["events", "nope"]}, "measures[1]"),
        ({"dimensions": ["colour"]}, "dimensions[0]"),
        ({"dimensions": ["type", "type"]}, "dimensions"),
        ({"order": [{"by": "time"}]}, "order[0].by"),
        ({"filters": [{"dimension": "colour", "value": "x"}]}, "filters[0].dimension"),
        ({"filters": [{"dimension": "type", "op": "in", "value": "x"}]}, "filters[0].value"),
        ({"filters": [{"dimension": "type", "value": ["x"]}]}, "filters[0].value"),
        ({"filters": [{"dimension": "hour_of_day", "value": "x"}]}, "filters[0].value"),
        ({"filters": [{"dimension": "type", "value": "a\x00b"}]}, "filters[0].value"),
    ],
)
def test_query_body_checks_name_the_field(update: dict[str, object], field: str) -> None:
    base = {
        "measures": ["events"],
        "start": DAY.isoformat(),
        "end": (DAY + timedelta(1)).isoformat(),
    }
    with pytest.raises(QueryError) as e:
        to_table(QueryBody.model_validate({**base, **update}))
    assert e.value.field == field, e.value.detail
