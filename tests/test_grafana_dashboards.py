"""deploy/grafana: the dashboards' SQL runs against the tables and columns that exist.

Each panel query and template-variable query of every dashboard under
``deploy/grafana/dashboards`` has Grafana's macros and variables replaced by
literal SQL (as Grafana's PostgreSQL data source expands them), then is
``EXPLAIN``-ed on a migrated database of each store lane: an unknown table,
view or column, or a type error, fails the test. The provisioning files are
checked to point every panel at the provisioned data source, with credentials
from the environment only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql as sql_

from linkpulse.config import Settings
from tests.fix_db import migrate_with_roles

GRAFANA = Path(__file__).resolve().parents[1] / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
FROM, TO = "2026-11-30T10:00:00Z", "2026-11-30T16:00:00Z"
# A value for each template variable (Grafana puts the chosen one where $name is).
VARIABLES = {"tenant": "acme", "metric": "gmv"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(interval: str) -> int:
    m = re.fullmatch(r"'?(\d+)([smhd])'?", interval.strip())
    assert m, f"not a Grafana interval: {interval!r}"
    return int(m[1]) * _UNITS[m[2]]


def expand(sql: str, variables: dict[str, str] = VARIABLES) -> str:
    """Grafana's PostgreSQL macros and ``$var`` / ``${var}`` as literal SQL.

    >>> expand("SELECT $__timeGroupAlias(bucket, '1m') WHERE $__timeFilter(bucket)")
    ... # doctest: +NORMALIZE_WHITESPACE
    'SELECT floor(extract(epoch from bucket)/60)*60 AS "time" WHERE bucket BETWEEN
     \\'2026-11-30T10:00:00Z\\' AND \\'2026-11-30T16:00:00Z\\''
    >>> expand("tenant = '$tenant' AND m = '${metric}'")
    "tenant = 'acme' AND m = 'gmv'"
    """
    between = f"BETWEEN '{FROM}' AND '{TO}'"
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m[1].strip()} {between}", sql)

    def group(m: re.Match[str], alias: bool) -> str:
        col, interval = (part.strip() for part in m[1].split(",", 1))
        step = _seconds(interval.split(",")[0])
        out = f"floor(extract(epoch from {col})/{step})*{step}"
        return f'{out} AS "time"' if alias else out

    sql = re.sub(r"\$__timeGroupAlias\(([^)]+)\)", lambda m: group(m, True), sql)
    sql = re.sub(r"\$__timeGroup\(([^)]+)\)", lambda m: group(m, False), sql)
    sql = sql.replace("$__timeFrom()", f"'{FROM}'").replace("$__timeTo()", f"'{TO}'")
    sql = sql.replace("$__interval_ms", "60000").replace("$__interval", "'1m'")
    for name, value in variables.items():
        sql = sql.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return sql


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows hold their panels


def queries(path: Path) -> Iterator[tuple[str, str]]:
    """(where, SQL) of every panel target and template variable of a dashboard."""
    doc = json.loads(path.read_text())
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]
            yield (
                f"{path.name}: variable {var['name']}",
                query if isinstance(query, str) else query["rawSql"],
            )
    for panel in _panels(doc.get("panels", [])):
        for target in panel.get("targets", []):
            yield f"{path.name}: panel {panel['title']!r} {target['refId']}", target["rawSql"]


CASES = [pytest.param(sql, id=where) for path in DASHBOARDS for where, sql in queries(path)]


def test_there_are_dashboards_over_the_rollups_and_the_anomaly_scores() -> None:
    sql = " ".join(s for path in DASHBOARDS for _, s in queries(path))
    for source in ("events_1m", "events_1h", "events_1d", "metric_windows", "anomaly_scores"):
        assert f"analyst.{source}" in sql, f"no panel reads analyst.{source}"
    assert len(CASES) >= 10


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_uses_the_provisioned_data_source(path: Path) -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/linkpulse.yaml").read_text())
    (ds,) = sources["datasources"]
    doc = json.loads(path.read_text())
    assert doc["uid"] and doc["title"]
    used = [p.get("datasource") for p in _panels(doc["panels"])]
    used += [t.get("datasource") for p in _panels(doc["panels"]) for t in p.get("targets", [])]
    used += [v.get("datasource") for v in doc["templating"]["list"]]
    assert used and all(u == {"type": ds["type"], "uid": ds["uid"]} for u in used), used
    defined = {v["name"] for v in doc["templating"]["list"]} | {"__"}
    for where, sql in queries(path):
        names = set(re.findall(r"\$\{?(\w+)", sql))
        assert {n for n in names if not n.startswith("__")} <= defined, where
        assert "$" not in expand(sql), f"{where}: a macro or variable left unexpanded"


def test_credentials_come_from_the_environment() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/linkpulse.yaml").read_text())
    (ds,) = sources["datasources"]
    for value in (ds["url"], ds["user"], ds["secureJsonData"]["password"]):
        assert re.fullmatch(r"\$\{\w+\}", value), value
    boards = yaml.safe_load((GRAFANA / "provisioning/dashboards/linkpulse.yaml").read_text())
    assert boards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.fixture
def migrated(lane_dsn: str) -> str:
    """A migrated database of the lane, with the analyst roles and grants set up."""
    return migrate_with_roles(lane_dsn)


@pytest.mark.integration
def test_every_query_plans_on_the_migrated_store_as_the_analyst_role(migrated: str) -> None:
    """As the analyst group role (what Grafana's login inherits): a view it is not granted
    fails too, not only an unknown table or column."""
    analyst = Settings().analyst_role
    failures = []
    with psycopg.connect(migrated) as conn:
        row = conn.execute("SELECT value FROM lp_store_meta WHERE key = 'tier'").fetchone()
        tier = row[0] if row else "unknown"
        conn.rollback()
        for case in CASES:
            (sql,) = case.values
            try:
                conn.execute(sql_.SQL("SET LOCAL ROLE {}").format(sql_.Identifier(analyst)))
                conn.execute(f"EXPLAIN {expand(str(sql))}")  # type: ignore[arg-type]
            except psycopg.Error as e:
                failures.append(f"{case.id}: {type(e).__name__}: {str(e).splitlines()[0]}")
            finally:
                conn.rollback()  # the role and any error end with the transaction
    assert not failures, f"on the {tier} tier:\n" + "\n".join(failures)
