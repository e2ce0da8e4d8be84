"""Analyst roles, grants and scoped sessions (see docs/analyst-sql.md).

* ``setup`` makes the NOLOGIN group role (SELECT on the ``analyst`` views only)
  and the SQL endpoint's login role (NOINHERIT: on its own it can read nothing;
  it reaches the views only through ``SET ROLE`` to the group), and revokes
  what PUBLIC could otherwise do (create objects, temp tables, large objects).
* ``create_analyst_login`` makes a psql login bound to one tenant (and seller).
* ``analyst_session`` is how the SQL endpoint runs an analyst's query: a
  read-only transaction, ``SET LOCAL ROLE``, and the scope with a token the
  analyst can't forge (a MAC with a secret only the owner can read, bound to
  this backend's pid and an expiry).

>>> sign_scope("s3cret", "acme", None, pid=42, expires=1_800_000_000)[:14]
'42.1800000000.'
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import psycopg
from psycopg import sql

from linkpulse.errors import StoreError

__all__ = [
    "analyst_session",
    "analyst_session_async",
    "create_analyst_login",
    "drop_roles",
    "scope_secret",
    "setup",
    "sign_scope",
]

_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
VIEWS = (
    "events", "events_1m", "events_1h", "events_1d", "metric_windows",
    "anomaly_scores", "forecasts", "users_1h",
)  # fmt: skip
# Server-side functions PUBLIC may run by default that write (large objects).
_WRITING_FUNCTIONS = (
    "lo_create(oid)", "lo_creat(integer)", "lo_from_bytea(oid, bytea)",
    "lo_put(oid, bigint, bytea)", "lo_unlink(oid)", "lo_open(oid, integer)",
    "lowrite(integer, bytea)", "lo_truncate(integer, integer)",
    "lo_truncate64(integer, bigint)", "lo_import(text)", "lo_import(text, oid)",
)  # fmt: skip


def _role(name: str) -> sql.Identifier:
    if not _ROLE.match(name):
        msg = f"role name must be lowercase letters, digits and _ (at most 63), got {name!r}"
        raise ValueError(msg)
    return sql.Identifier(name)


def _create_role(conn: psycopg.Connection, name: str, options: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    if not exists:
        conn.execute(sql.SQL("CREATE ROLE {} " + options).format(_role(name)))


def setup(conn: psycopg.Connection, *, analyst_role: str, sql_login: str | None = None) -> None:
    """Create the analyst group role (and the SQL endpoint login) and grant the views.

    Idempotent. Runs as the store's owner (a superuser for the large-object
    revokes; without one those are skipped with a warning in the log).
    """
    role = _role(analyst_role)
    db = sql.Identifier(conn.info.dbname)
    with conn.transaction():
        _create_role(conn, analyst_role, "NOLOGIN NOINHERIT")
        if sql_login:
            _create_role(conn, sql_login, "LOGIN NOINHERIT")
            conn.execute(sql.SQL("GRANT {} TO {}").format(role, _role(sql_login)))
        # Nothing by default: no objects, no temp tables, no schema to write to.
        conn.execute(sql.SQL("REVOKE CREATE, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
        # the writer's staging table is a temp table: keep TEMP for the store's own role
        conn.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO CURRENT_USER").format(db))
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(role))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, role))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA analyst TO {}").format(role))
        for view in VIEWS:
            conn.execute(
                sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier("analyst", view), role)
            )
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION lp_private.verified_scope() TO {}").format(role)
        )
        for fn in _WRITING_FUNCTIONS:
            conn.execute("SAVEPOINT lo")
            try:
                conn.execute(f"REVOKE EXECUTE ON FUNCTION pg_catalog.{fn} FROM PUBLIC")
                conn.execute("RELEASE SAVEPOINT lo")
            except psycopg.Error:
                conn.execute("ROLLBACK TO SAVEPOINT lo")


def create_analyst_login(
    conn: psycopg.Connection,
    name: str,
    *,
    analyst_role: str,
    tenant: str,
    seller_id: str | None = None,
    password: str | None = None,
) -> None:
    """A psql login for one analyst, bound to ``tenant`` (and ``seller_id``) by its name."""
    with conn.transaction():
        _create_role(conn, name, "LOGIN INHERIT")
        if password is not None:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(_role(name), sql.Literal(password))
            )
        conn.execute(sql.SQL("GRANT {} TO {}").format(_role(analyst_role), _role(name)))
        conn.execute(
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(_role(name))
        )
        conn.execute(
            "INSERT INTO lp_private.analyst_logins (role_name, tenant, seller_id) "
            "VALUES (%s, %s, %s) ON CONFLICT (role_name) DO UPDATE "
            "SET tenant = excluded.tenant, seller_id = excluded.seller_id",
            (name, tenant, seller_id),
        )


def drop_roles(conn: psycopg.Connection, *names: str) -> None:
    """Drop roles made here from this database's grants, then from the cluster."""
    for name in names:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            continue
        with conn.transaction():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(_role(name)))
            conn.execute("DELETE FROM lp_private.analyst_logins WHERE role_name = %s", (name,))
            conn.execute(sql.SQL("DROP ROLE {}").format(_role(name)))


def scope_secret(conn: psycopg.Connection) -> str:
    """The scope-signing secret (read with the owner's connection, at API start)."""
    row = conn.execute("SELECT secret FROM lp_private.scope_secret").fetchone()
    if row is None:
        msg = "lp_private.scope_secret is empty: run `linkpulse db migrate`"
        raise StoreError(msg)
    return str(row[0])


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sign_scope(secret: str, tenant: str, seller_id: str | None, *, pid: int, expires: int) -> str:
    """The scope token checked by ``lp_private.verified_scope()``."""
    inner = _sha(f"{secret}{tenant}|{seller_id or ''}|{pid}|{expires}")
    return f"{pid}.{expires}.{_sha(secret + inner)}"


def _session_statements(
    *, analyst_role: str, secret: str, tenant: str, seller_id: str | None, pid: int, ttl_s: int
) -> list[tuple[sql.Composed | sql.SQL, tuple[str, ...]]]:
    """What an analyst session runs after ``BEGIN READ ONLY``, for either driver flavour."""
    token = sign_scope(secret, tenant, seller_id, pid=pid, expires=int(time.time()) + ttl_s)
    return [
        (sql.SQL("SET LOCAL ROLE {}").format(_role(analyst_role)), ()),
        # Bound parameters: the token never appears in pg_stat_activity's query text.
        (
            sql.SQL(
                "SELECT set_config('linkpulse.tenant', %s, true), "
                "set_config('linkpulse.seller', %s, true), "
                "set_config('linkpulse.scope_token', %s, true)"
            ),
            (tenant, seller_id or "", token),
        ),
    ]


_IDLE = psycopg.pq.TransactionStatus.IDLE


def _check_idle(conn: psycopg.Connection | psycopg.AsyncConnection) -> None:
    if conn.info.transaction_status != _IDLE:
        msg = "analyst_session needs an idle autocommit connection"
        raise StoreError(msg)


@contextmanager
def analyst_session(
    conn: psycopg.Connection,
    *,
    analyst_role: str,
    secret: str,
    tenant: str,
    seller_id: str | None = None,
    ttl_s: int = 300,
) -> Iterator[psycopg.Connection]:
    """Run the block as the analyst, scoped to ``tenant`` (and ``seller_id``), read-only.

    ``conn`` is the SQL endpoint's login (see ``setup``), autocommit. The
    transaction is rolled back at the end, so nothing the block does stays.
    """
    _check_idle(conn)
    statements = _session_statements(
        analyst_role=analyst_role,
        secret=secret,
        tenant=tenant,
        seller_id=seller_id,
        pid=conn.info.backend_pid,
        ttl_s=ttl_s,
    )
    try:
        # One round trip for the set-up (pipelined): it precedes every API read.
        with conn.pipeline():
            conn.execute("BEGIN READ ONLY")
            for statement, params in statements:
                conn.execute(statement, params)
        yield conn
    finally:
        if not conn.closed and conn.info.transaction_status != _IDLE:
            conn.execute("ROLLBACK")


@asynccontextmanager
async def analyst_session_async(
    conn: psycopg.AsyncConnection,
    *,
    analyst_role: str,
    secret: str,
    tenant: str,
    seller_id: str | None = None,
    ttl_s: int = 300,
) -> AsyncIterator[psycopg.AsyncConnection]:
    """``analyst_session`` for an async connection (the API's query routes and SQL endpoint)."""
    _check_idle(conn)
    statements = _session_statements(
        analyst_role=analyst_role,
        secret=secret,
        tenant=tenant,
        seller_id=seller_id,
        pid=conn.info.backend_pid,
        ttl_s=ttl_s,
    )
    try:
        async with conn.pipeline():  # one round trip, as in analyst_session
            await conn.execute("BEGIN READ ONLY")
            for statement, params in statements:
                await conn.execute(statement, params)
        yield conn
    finally:
        if not conn.closed and conn.info.transaction_status != _IDLE:
            await conn.execute("ROLLBACK")
