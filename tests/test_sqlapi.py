"""The SQL endpoint's pure logic: what the parse tree admits, limits, advice, error answers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from linkpulse.sqlapi.advice import advise, scanned_relations
from linkpulse.sqlapi.check import SqlRefused, check_statement
from linkpulse.sqlapi.errors import sql_problem
from linkpulse.sqlapi.limits import DEFAULT, SqlLimit, limit_for, parse_sql_limits

ADMITTED = [
    "SELECT 1",
    "select count(*) from analyst.events where type = $1;",
    "VALUES (1, 'a'), (2, 'b')",
    "WITH x AS (SELECT bucket, events FROM events_1h) SELECT * FROM x ORDER BY 1",
    "SELECT 1 UNION ALL SELECT 2",
    "SELECT * FROM events e JOIN events_1h r ON r.bucket = date_trunc('hour', e.event_time)",
    "SELECT random(), now(), current_setting('linkpulse.tenant')  -- trailing comment",
    "/* leading */ SELECT 'é' AS accent",
]


@pytest.mark.parametrize("sql", ADMITTED)
def test_admits_one_select(sql: str) -> None:
    stmt = check_statement(sql)
    assert ";" not in stmt.text and sql.startswith(stmt.text)
    assert check_statement(stmt.text).tree == stmt.tree


@pytest.mark.parametrize(
    ("sql", "slug", "position"),
    [
        ("SELECT FROM WHERE", "sql-syntax", 13),
        ("SELECT * FROM events WHERE", "sql-syntax", 27),  # at end of input
        ("SELECT 'éé', FROM x", "sql-syntax", 14),  # characters, not bytes
        ("SELECT 1; SELECT 2", "sql-multiple-statements", 11),
        ("SELECT 1; DROP TABLE events", "sql-multiple-statements", 11),
        ("INSERT INTO analyst.events (event_id) VALUES ('x')", "sql-not-allowed", 1),
        ("UPDATE events SET amount = 0", "sql-not-allowed", 1),
        ("DELETE FROM events", "sql-not-allowed", 1),
        (
            "MERGE INTO events e USING events f ON true WHEN MATCHED THEN DELETE",
            "sql-not-allowed",
            1,
        ),
        ("CREATE TABLE t (a int)", "sql-not-allowed", 1),
        ("DROP VIEW analyst.events", "sql-not-allowed", 1),
        ("ALTER ROLE linkpulse_sql SUPERUSER", "sql-not-allowed", 1),
        ("COPY events TO STDOUT", "sql-not-allowed", 1),
        ("COPY (SELECT 1) TO PROGRAM 'id'", "sql-not-allowed", 1),
        ("SET ROLE postgres", "sql-not-allowed", 1),
        ("SET linkpulse.tenant = 'beta'", "sql-not-allowed", 1),
        ("RESET ROLE", "sql-not-allowed", 1),
        ("BEGIN", "sql-not-allowed", 1),
        ("COMMIT", "sql-not-allowed", 1),
        ("DO $$ BEGIN PERFORM 1; END $$", "sql-not-allowed", 1),
        ("CALL p()", "sql-not-allowed", 1),
        ("LISTEN x", "sql-not-allowed", 1),
        ("NOTIFY x", "sql-not-allowed", 1),
        ("EXPLAIN ANALYZE DELETE FROM events", "sql-not-allowed", 1),
        ("GRANT ALL ON events TO public", "sql-not-allowed", 1),
        ("VACUUM events", "sql-not-allowed", 1),
        ("LOCK TABLE events", "sql-not-allowed", 1),
        ("  WITH d AS (DELETE FROM events RETURNING 1) SELECT * FROM d", "sql-not-allowed", 26),
        ("SELECT * INTO t FROM events", "sql-not-allowed", 15),
        ("SELECT * FROM events FOR UPDATE", "sql-not-allowed", None),
        ("SELECT set_config('linkpulse.tenant', 'beta', true)", "sql-function-not-allowed", 8),
        ("SELECT pg_catalog.SET_CONFIG('role', 'postgres', false)", "sql-function-not-allowed", 8),
        (
            "SELECT * FROM query_to_xml('delete from events', true, true, '')",
            "sql-function-not-allowed",
            15,
        ),
        ("SELECT x FROM (SELECT nextval('s') x) q", "sql-function-not-allowed", 23),
        ("SELECT pg_sleep(100)", "sql-function-not-allowed", 8),
        ("", "sql-empty", None),
        ("  ;  -- nothing", "sql-empty", None),
        ("SELECT '\x00'", "sql-syntax", None),
    ],
)
def test_refuses_naming_why_and_where(sql: str, slug: str, position: int | None) -> None:
    with pytest.raises(SqlRefused) as e:
        check_statement(sql)
    assert (e.value.slug, e.value.position) == (slug, position), e.value.problem


def test_params_and_functions_are_read_from_the_tree() -> None:
    stmt = check_statement("SELECT date_trunc('hour', $2::timestamptz), lower($1), $2")
    assert stmt.params == 2
    assert stmt.functions == {"date_trunc", "lower"}


def test_limits_parse_and_default() -> None:
    limits = parse_sql_limits("analyst=60/1000, seller=5.5/10")
    assert limits == {"analyst": SqlLimit(60.0, 1000), "seller": SqlLimit(5.5, 10)}
    assert limit_for(limits, "admin") == DEFAULT
    for bad in ("analyst=60", "analyst=0/10", "analyst=1/0", "root=1/1", "ingest=1/1"):
        with pytest.raises(ValueError, match="LINKPULSE_SQL_LIMITS"):
            parse_sql_limits(bad)


@pytest.mark.parametrize(
    ("sqlstate", "status", "slug"),
    [
        ("42601", 400, "sql-error"),
        ("42P01", 400, "sql-error"),
        ("22012", 400, "sql-error"),  # division by zero
        ("42501", 403, "sql-permission-denied"),
        ("25006", 403, "sql-read-only"),
        ("57014", 422, "statement-timeout"),
        ("53400", 422, "sql-too-costly"),
        ("08006", 503, "store-unavailable"),
        (None, 503, "store-unavailable"),
    ],
)
def test_database_errors_map_to_problems(sqlstate: str | None, status: int, slug: str) -> None:
    p = sql_problem(sqlstate, "boom", position=7, timeout_s=12)
    assert (p.status, p.slug) == (status, slug)
    if status == 400:
        assert "position 7" in p.detail and p.field == "sql"
    if slug == "statement-timeout":
        assert "12 s" in p.detail


PLAN_SEQ = [
    {
        "Plan": {
            "Node Type": "Append",
            "Plans": [
                {"Node Type": "Seq Scan", "Relation Name": "events_p20261130", "Plan Rows": 10},
                {"Node Type": "Index Scan", "Relation Name": "events_p20261201", "Plan Rows": 5},
            ],
        }
    }
]


def _codes(sql: str, sizes: dict[str, float] | None = None) -> list[str]:
    return [a.code for a in advise(check_statement(sql), PLAN_SEQ, sizes or {})]


def test_advice_no_time_filter_per_view() -> None:
    assert _codes("SELECT count(*) FROM analyst.events WHERE type = 'x'") == ["no-time-filter"]
    assert _codes("SELECT count(*) FROM events WHERE event_time > now() - interval '1 day'") == []
    assert _codes("SELECT sum(events) FROM events_1h") == ["no-time-filter"]
    assert _codes("SELECT sum(events) FROM events_1h WHERE bucket >= '2026-11-01'") == []
    # a CTE of the same name is not the view; the view inside the CTE is checked
    assert _codes("WITH events AS (SELECT 1 AS a) SELECT * FROM events") == []
    assert _codes(
        "WITH w AS (SELECT * FROM metric_windows) SELECT * FROM w WHERE window_start > now()"
    ) == ["no-time-filter"]
    # a join's condition counts: events_1m's bucket is bound to the filtered event_time
    assert (
        _codes(
            "SELECT 1 FROM events e JOIN events_1m m ON m.bucket = e.event_time "
            "WHERE e.event_time > now() - interval '1 hour'"
        )
        == []
    )
    assert _codes(
        "SELECT 1 FROM events e JOIN events_1m m ON m.type = e.type "
        "WHERE e.event_time > now() - interval '1 hour'"
    ) == ["no-time-filter"]


def test_advice_use_rollup_when_it_answers_exactly() -> None:
    good = (
        "SELECT date_trunc('hour', event_time) AS h, type, count(*), sum(amount) "
        "FROM analyst.events WHERE event_time >= $1 AND type = 'order_placed' GROUP BY 1, 2"
    )
    [a] = advise(check_statement(good), [], {})
    assert a.code == "use-rollup" and "analyst.events_1h" in a.message
    assert (
        "events_1d"
        in advise(
            check_statement(
                "SELECT date_trunc('month', event_time), count(*) FROM events "
                "WHERE event_time > now() - interval '90 days' GROUP BY 1"
            ),
            [],
            {},
        )[0].message
    )
    for not_answered in (
        # properties are not in the rollup
        "SELECT date_trunc('hour', event_time), count(*) FROM events "
        "WHERE event_time > $1 AND properties->>'page' = 'home' GROUP BY 1",
        # a distinct count across sellers is not additive
        "SELECT date_trunc('hour', event_time), count(DISTINCT user_id) FROM events "
        "WHERE event_time > $1 GROUP BY 1",
        # by second: no rollup that fine
        "SELECT date_trunc('second', event_time), count(*) FROM events "
        "WHERE event_time > $1 GROUP BY 1",
        "SELECT user_id, count(*) FROM events WHERE event_time > $1 GROUP BY 1",
        # avg(amount) skips NULL amounts; the rollup's events count every event
        "SELECT date_trunc('hour', event_time), avg(amount) FROM events "
        "WHERE event_time > $1 GROUP BY 1",
    ):
        assert [a.code for a in advise(check_statement(not_answered), [], {})] == [], not_answered


def test_advice_seq_scan_on_large_relations_only() -> None:
    sql = "SELECT * FROM events WHERE event_time > now() - interval '1 day'"
    assert scanned_relations(PLAN_SEQ) == {"events_p20261130"}
    assert _codes(sql, {"events_p20261130": 99_999}) == []
    [a] = advise(check_statement(sql), PLAN_SEQ, {"events_p20261130": 2_500_000})
    assert a.code == "seq-scan" and "events_p20261130" in a.message and "2,500,000" in a.message


def test_settings_validate_the_limits_without_importing_the_api() -> None:
    """config.py validates LINKPULSE_SQL_LIMITS first thing: no import cycle through the API."""
    code = (
        "import sys; from linkpulse.config import Settings; "
        "Settings(sql_limits='analyst=5/10'); "
        "assert 'linkpulse.api' not in sys.modules, 'the settings loaded the API'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
