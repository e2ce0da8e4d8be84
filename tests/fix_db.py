"""PostgreSQL fixtures: each test gets a database of its own, dropped afterwards.

The server comes from ``LINKPULSE_TEST_DATABASE_URL`` (default: the local
PostgreSQL; any TimescaleDB works too, and the store then uses its tier). If it
can't be reached the fixture fails, saying how to start it.

``lane_dsn`` runs a test on both store lanes: that server (``pg``) and the
WASM TimescaleDB of ``tests/fix_timescale.py`` (``timescale``, marker
``timescale``). A test using it must hold one connection at a time (the WASM
server serves one; an ``EventWriter`` holds one until ``close()``), and take
the tier from the database (``stored_tier``), never assume it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from linkpulse.config import Settings
from linkpulse.store import migrate, roles

ADMIN_DSN = os.environ.get(
    "LINKPULSE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
START_HINT = (
    "PostgreSQL is not reachable at {dsn}: {err}. Start it with "
    "'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start', "
    "or run 'linkpulse up' and point LINKPULSE_TEST_DATABASE_URL at it."
)


def dsn_with_dbname(dsn: str, dbname: str) -> str:
    """The same server and user, another database, as a URL (what LINKPULSE_DATABASE_URL takes)."""
    url = urlsplit(dsn)
    return urlunsplit(url._replace(path=f"/{dbname}"))


def admin_connect() -> psycopg.Connection:
    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(START_HINT.format(dsn=ADMIN_DSN, err=e), pytrace=False)


@contextmanager
def fresh_database(tag: str = "") -> Iterator[str]:
    """Create an empty database on the real server; drop it (forcibly) afterwards."""
    name = f"lp_test_{tag}{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield dsn_with_dbname(ADMIN_DSN, name)
    finally:
        with admin_connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """DSN of a fresh, empty database on the real PostgreSQL server."""
    with fresh_database() as dsn:
        yield dsn


LANES = [
    pytest.param("pg_dsn", id="pg"),
    pytest.param("timescale_dsn", id="timescale", marks=pytest.mark.timescale),
]


@pytest.fixture(params=LANES)
def lane_dsn(request: pytest.FixtureRequest) -> str:
    """DSN of a fresh, empty database on each store lane in turn (see the module doc)."""
    dsn: str = request.getfixturevalue(request.param)
    return dsn


@pytest.fixture
def pg_conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's own database."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


def migrate_with_roles(dsn: str, settings: Settings | None = None) -> str:
    """Migrate ``dsn``'s database and set up the analyst roles, as ``linkpulse db migrate``
    does; return ``dsn``.

    The roles are ``settings``' (the defaults, which are cluster-wide, when not given).
    """
    migrate(dsn)
    s = settings or Settings()
    with psycopg.connect(dsn, autocommit=True) as conn:
        roles.setup(conn, analyst_role=s.analyst_role, sql_login=s.analyst_sql_login)
    return dsn
