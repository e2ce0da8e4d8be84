"""The service fixtures reach the real servers and isolate tests from each other."""

from __future__ import annotations

import psycopg
import pytest


@pytest.mark.integration
def test_each_test_gets_an_empty_database(pg_conn: psycopg.Connection) -> None:
    n = pg_conn.execute("select count(*) from pg_tables where schemaname = 'public'").fetchone()
    assert n == (0,)
    assert pg_conn.info.dbname.startswith("lp_test_")


@pytest.mark.integration
async def test_nats_and_redis_answer(nc, redis_client, redis_prefix) -> None:  # type: ignore[no-untyped-def]
    assert nc.is_connected
    await redis_client.set(f"{redis_prefix}k", "v")
    assert await redis_client.get(f"{redis_prefix}k") == b"v"
