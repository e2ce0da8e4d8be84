"""``AnalystDb``: scoped sessions read only the principal's scope, and say what is missing."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest

from linkpulse.api.analyst_db import AnalystDb
from linkpulse.api.problems import ProblemError
from linkpulse.config import Settings
from linkpulse.store import EventWriter, migrate, roles
from tests.fix_db import migrate_with_roles
from tests.test_store_writer import make_events

pytestmark = pytest.mark.integration


def _seed(dsn: str) -> list[tuple[str, str | None]]:
    """Events of two tenants and three sellers; returns each event's (tenant, seller)."""
    events = make_events(300, seed=11)
    with EventWriter(dsn) as w:
        w.write_events(events)
    return [(e.tenant, getattr(e, "seller_id", None)) for e in events]


async def test_session_sees_only_its_scope(pg_dsn: str) -> None:
    tag = psycopg.connect(pg_dsn).info.dbname[-8:]
    settings = Settings(
        database_url=pg_dsn, analyst_role=f"lp_an_{tag}", analyst_sql_login=f"lp_sql_{tag}"
    )
    migrate_with_roles(pg_dsn, settings)
    scopes = _seed(pg_dsn)
    tenant, seller = next((t, s) for t, s in scopes if s is not None)
    tenant_count = sum(1 for t, _ in scopes if t == tenant)
    owner = psycopg_pool.AsyncConnectionPool(pg_dsn, min_size=1, open=False)
    await owner.open()
    db = AnalystDb(settings, owner)
    await db.start()
    try:
        async with db.session(tenant=tenant, seller=seller) as conn:
            cur = await conn.execute("SELECT DISTINCT tenant, seller_id FROM analyst.events")
            assert await cur.fetchall() == [(tenant, seller)]
        async with db.session(tenant=tenant, seller=None) as conn:
            cur = await conn.execute("SELECT count(*) FROM analyst.events")
            assert await cur.fetchone() == (tenant_count,)
            cur = await conn.execute("SHOW transaction_read_only")
            assert await cur.fetchone() == ("on",)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute("INSERT INTO analyst.events (event_id) VALUES ('x')")
        # the failed statement's connection was rolled back and lent again, usable
        async with db.session(tenant=tenant, seller=None) as conn:
            cur = await conn.execute("SELECT count(*) FROM analyst.events")
            assert await cur.fetchone() == (tenant_count,)
        # the set-up is pipelined (one round trip): when a step of it fails (a role the
        # login may not SET), it raises and leaves the connection idle, usable again
        secret = await db.secret()
        async with db.pool.connection() as raw:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                async with roles.analyst_session_async(
                    raw, analyst_role="pg_monitor", secret=secret, tenant=tenant
                ):
                    pass
            assert raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            async with roles.analyst_session_async(
                raw, analyst_role=settings.analyst_role, secret=secret, tenant=tenant
            ) as conn:
                cur = await conn.execute("SELECT count(*) FROM analyst.events")
                assert await cur.fetchone() == (tenant_count,)
    finally:
        await db.stop()
        await owner.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            roles.drop_roles(conn, settings.analyst_sql_login, settings.analyst_role)


async def test_missing_roles_are_a_503_saying_what_to_run(pg_dsn: str) -> None:
    owner = psycopg_pool.AsyncConnectionPool(pg_dsn, min_size=1, open=False)
    await owner.open()
    db = AnalystDb(Settings(database_url=pg_dsn), owner)
    try:
        with pytest.raises(ProblemError) as err:  # no migration: no scope secret
            await db.secret()
        assert err.value.status_code == 503
    finally:
        await owner.close()
    migrate(pg_dsn)
    owner = psycopg_pool.AsyncConnectionPool(pg_dsn, min_size=1, open=False)
    await owner.open()
    db = AnalystDb(Settings(database_url=pg_dsn, analyst_sql_login="lp_no_such_login"), owner)
    db.pool.timeout = 1.0
    await db.start()
    try:
        with pytest.raises(ProblemError) as err:
            async with db.session(tenant="acme", seller=None):
                pass
        assert err.value.status_code == 503
        assert "linkpulse db roles" in str(err.value.detail)
    finally:
        await db.stop()
        await owner.close()
