"""Analyst access: scoped views only, no way to widen the scope, write or create."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from linkpulse.schemas.outputs import MetricWindow
from linkpulse.store import EventWriter, migrate, refresh, roles
from tests.test_store_writer import BASE, make_events

VIEWS = ("events", "events_1m", "events_1h", "events_1d", "users_1h", "metric_windows")


class Scoped:
    """Names and connections of one test's roles (roles are cluster-wide: unique names)."""

    def __init__(self, dsn: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.dsn = dsn
        self.analyst = f"lp_analyst_{tag}"
        self.sql_login = f"lp_sql_{tag}"
        self.acme = f"lp_acme_{tag}"
        self.acme_s1 = f"lp_acme_s1_{tag}"

    def login(self, role: str) -> psycopg.Connection:
        params = psycopg.conninfo.conninfo_to_dict(self.dsn)
        params["user"] = role
        return psycopg.connect(psycopg.conninfo.make_conninfo(**params), autocommit=True)


@pytest.fixture
def scoped(pg_dsn: str) -> Iterator[Scoped]:
    migrate(pg_dsn)
    s = Scoped(pg_dsn)
    with EventWriter(pg_dsn) as w:
        w.write_events(make_events(2_000, seed=5))
        w.upsert_metric_windows(
            [
                MetricWindow(
                    metric="gmv",
                    tenant=t,
                    dims_key=f"seller_id={sel}",
                    dimensions={"seller_id": sel},
                    window="1m",
                    window_start=BASE,
                    window_end=BASE + timedelta(minutes=1),
                    value=1.0,
                )
                for t in ("acme", "globex")
                for sel in ("s1", "s2")
            ]
        )
    with psycopg.connect(pg_dsn, autocommit=True) as owner:
        refresh(owner)
        roles.setup(owner, analyst_role=s.analyst, sql_login=s.sql_login)
        roles.create_analyst_login(owner, s.acme, analyst_role=s.analyst, tenant="acme")
        roles.create_analyst_login(
            owner, s.acme_s1, analyst_role=s.analyst, tenant="acme", seller_id="s1"
        )
    try:
        yield s
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as owner:
            roles.drop_roles(owner, s.acme, s.acme_s1, s.sql_login, s.analyst)


def scope_of(conn: psycopg.Connection, view: str) -> set[tuple[object, ...]]:
    seller = "dimensions->>'seller_id'" if view == "metric_windows" else "seller_id"
    return set(conn.execute(f"SELECT DISTINCT tenant, {seller} FROM analyst.{view}").fetchall())


@pytest.mark.parametrize("view", VIEWS)
def test_logins_see_only_their_tenant_and_seller(scoped: Scoped, view: str) -> None:
    with scoped.login(scoped.acme) as conn:
        seen = scope_of(conn, view)
        assert seen and {t for t, _ in seen} == {"acme"}
        assert len(seen) > 1  # several sellers, all of acme
    with scoped.login(scoped.acme_s1) as conn:
        assert scope_of(conn, view) == {("acme", "s1")}


def test_endpoint_session_scopes_by_signed_setting(scoped: Scoped) -> None:
    with psycopg.connect(scoped.dsn, autocommit=True) as owner:
        secret = roles.scope_secret(owner)
        expected = owner.execute(
            "SELECT count(*) FROM events WHERE tenant = 'globex' AND seller_id = 's2'"
        ).fetchone()
    with scoped.login(scoped.sql_login) as conn:
        with roles.analyst_session(
            conn, analyst_role=scoped.analyst, secret=secret, tenant="globex", seller_id="s2"
        ) as c:
            assert c.execute("SELECT current_user").fetchone() == (scoped.analyst,)
            assert c.execute("SELECT count(*) FROM analyst.events").fetchone() == expected
            for view in VIEWS:
                assert scope_of(c, view) == {("globex", "s2")}
        # after the session: back to the login, which on its own reads nothing
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM analyst.events")


def test_analyst_cannot_widen_scope_with_set_config(scoped: Scoped) -> None:
    with scoped.login(scoped.acme_s1) as conn:
        conn.execute("SELECT set_config('linkpulse.tenant', 'globex', false)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="invalid analyst scope"):
            conn.execute("SELECT count(*) FROM analyst.events")
        conn.execute("SELECT set_config('linkpulse.tenant', '', false)")
        conn.execute("SELECT set_config('linkpulse.seller', '', false)")
        assert scope_of(conn, "events") == {("acme", "s1")}
    with psycopg.connect(scoped.dsn, autocommit=True) as owner:
        secret = roles.scope_secret(owner)
    with scoped.login(scoped.sql_login) as conn:
        with roles.analyst_session(
            conn, analyst_role=scoped.analyst, secret=secret, tenant="acme", seller_id="s1"
        ) as c:
            c.execute("SELECT set_config('linkpulse.seller', '', true)")  # drop the seller
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT count(*) FROM analyst.events")
        with roles.analyst_session(
            conn, analyst_role=scoped.analyst, secret=secret, tenant="acme"
        ) as c:
            # escaping to the login role gains nothing: it is NOINHERIT and has no grants
            c.execute("RESET ROLE")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT count(*) FROM analyst.events")
        with roles.analyst_session(
            conn, analyst_role=scoped.analyst, secret=secret, tenant="acme"
        ) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT secret FROM lp_private.scope_secret")
        # a token made for another backend is refused
        forged = roles.sign_scope(
            secret, "globex", None, pid=conn.info.backend_pid + 1, expires=4_000_000_000
        )
        conn.execute("BEGIN")
        conn.execute(f'SET LOCAL ROLE "{scoped.analyst}"')
        conn.execute(
            "SELECT set_config('linkpulse.tenant', 'globex', true), "
            "set_config('linkpulse.scope_token', %s, true)",
            (forged,),
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not for this session"):
            conn.execute("SELECT count(*) FROM analyst.events")
        conn.execute("ROLLBACK")


FORBIDDEN_READS = [
    "SELECT * FROM public.events LIMIT 1",
    "SELECT * FROM public.events_1m LIMIT 1",
    "SELECT * FROM public.metric_windows LIMIT 1",
    "SELECT * FROM public.dead_letters LIMIT 1",
    "SELECT * FROM lp_rollup_dirty LIMIT 1",
    "SELECT * FROM lp_private.analyst_logins",
    "SELECT * FROM lp_private.scope_secret",
]
FORBIDDEN_WRITES = [
    "INSERT INTO public.events (tenant, event_id, event_time, type) "
    "VALUES ('acme', 'x', now(), 'page_view')",
    "INSERT INTO lp_private.analyst_logins VALUES (session_user, 'globex', NULL)",
    "UPDATE lp_private.analyst_logins SET tenant = 'globex'",
    "CREATE TABLE public.mine (id int)",
    "CREATE TEMP TABLE mine (id int)",
    "CREATE SCHEMA mine",
    "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "SELECT lo_from_bytea(0, 'x'::bytea)",
    "SELECT lo_create(0)",
    "DELETE FROM analyst.events",
    "REFRESH MATERIALIZED VIEW analyst.events_1m",
]


def test_analyst_cannot_read_internals_or_partitions(scoped: Scoped) -> None:
    with psycopg.connect(scoped.dsn) as owner:
        partitions = [
            r[0]
            for r in owner.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'events'::regclass LIMIT 3"
            ).fetchall()
        ]
    assert partitions
    with scoped.login(scoped.acme) as conn:
        for stmt in FORBIDDEN_READS + [f'SELECT * FROM public."{p}" LIMIT 1' for p in partitions]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)


def test_analyst_cannot_write_create_or_run_writing_functions(scoped: Scoped) -> None:
    with scoped.login(scoped.acme) as conn:
        conn.execute("SET default_transaction_read_only = off")  # privileges must hold anyway
        for stmt in FORBIDDEN_WRITES:
            with pytest.raises(
                (
                    psycopg.errors.InsufficientPrivilege,
                    psycopg.errors.WrongObjectType,
                    psycopg.errors.ObjectNotInPrerequisiteState,
                ),
            ):
                conn.execute(stmt)
        assert scope_of(conn, "events_1d")  # still works after all that


def test_unmapped_login_sees_nothing(scoped: Scoped) -> None:
    other = f"lp_other_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(scoped.dsn, autocommit=True) as owner:
        owner.execute(f'CREATE ROLE "{other}" LOGIN IN ROLE "{scoped.analyst}"')
    try:
        with (
            scoped.login(other) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="no analyst scope"),
        ):
            conn.execute("SELECT count(*) FROM analyst.events")
    finally:
        with psycopg.connect(scoped.dsn, autocommit=True) as owner:
            roles.drop_roles(owner, other)


def test_role_names_are_validated() -> None:
    with pytest.raises(ValueError, match="role name"):
        roles._role('x"; DROP TABLE events; --')


async def test_async_session_scopes_like_the_sync_one(scoped: Scoped) -> None:
    with psycopg.connect(scoped.dsn, autocommit=True) as owner:
        secret = roles.scope_secret(owner)
        expected = owner.execute(
            "SELECT count(*) FROM events WHERE tenant = 'globex' AND seller_id = 's2'"
        ).fetchone()
    conninfo = psycopg.conninfo.make_conninfo(scoped.dsn, user=scoped.sql_login)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        async with roles.analyst_session_async(
            conn, analyst_role=scoped.analyst, secret=secret, tenant="globex", seller_id="s2"
        ) as c:
            cur = await c.execute("SELECT count(*) FROM analyst.events")
            assert await cur.fetchone() == expected
            cur = await c.execute("SELECT DISTINCT tenant, seller_id FROM analyst.events")
            assert await cur.fetchall() == [("globex", "s2")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # rolled back: the login again
            await conn.execute("SELECT count(*) FROM analyst.events")
