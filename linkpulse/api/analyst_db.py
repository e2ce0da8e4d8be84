"""Scoped, read-only database sessions for the API's readers (queries, SQL endpoint, exports).

Every read the API does on a principal's behalf goes through the store's
``analyst`` views as the analyst role, with the principal's scope signed by
``roles.analyst_session_async`` (docs/analyst-sql.md): the database itself
keeps a seller inside its seller, whatever SQL runs. The pool connects as the
SQL endpoint's login (``LINKPULSE_ANALYST_SQL_LOGIN``, NOINHERIT: on its own it
reads nothing); the scope secret is read once with the owner's connection.

>>> login_conninfo("postgresql://postgres@127.0.0.1:5432/test", "linkpulse_sql")
'user=linkpulse_sql dbname=test host=127.0.0.1 port=5432'
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import psycopg_pool

from linkpulse.api.problems import ProblemError
from linkpulse.config import Settings
from linkpulse.store import roles

__all__ = ["AnalystDb", "api_pool", "login_conninfo"]

_NOT_SET_UP = (
    "the analyst roles are not set up in this database: run `linkpulse db migrate` "
    "then `linkpulse db roles`"
)


def login_conninfo(dsn: str, login: str) -> str:
    """``dsn`` with its user replaced by ``login`` (and no password: the login has its own)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.pop("password", None)
    params["user"] = login
    return psycopg.conninfo.make_conninfo("", **params)


def api_pool(
    conninfo: str, settings: Settings, *, min_size: int, name: str, timeout: float = 30.0
) -> psycopg_pool.AsyncConnectionPool:
    """One of the API's (unopened) pools, sized by ``LINKPULSE_DB_POOL_MAX`` and ``_MAX_IDLE_S``.

    With ``db_pool_max_idle_s=0`` no connection is kept: each use opens its own and
    closes it when given back (``AsyncNullConnectionPool``, still at most
    ``db_pool_max`` at once), so a server that serves one connection at a time (the
    WASM TimescaleDB of the tests, a tight ``max_connections``) is never held idle.

    >>> s = Settings(db_pool_min=0, db_pool_max=1, db_pool_max_idle_s=0)
    >>> type(api_pool("dbname=x", s, min_size=0, name="p")).__name__
    'AsyncNullConnectionPool'
    >>> api_pool("dbname=x", Settings(), min_size=1, name="p").max_size
    4
    """
    kw: dict[str, Any] = {"open": False, "kwargs": {"autocommit": True}, "name": name}
    if settings.db_pool_max_idle_s == 0:
        return psycopg_pool.AsyncNullConnectionPool(
            conninfo, max_size=settings.db_pool_max, timeout=timeout, **kw
        )
    return psycopg_pool.AsyncConnectionPool(
        conninfo,
        min_size=min(min_size, settings.db_pool_max),
        max_size=settings.db_pool_max,
        max_idle=settings.db_pool_max_idle_s,
        timeout=timeout,
        **kw,
    )


class AnalystDb:
    """A pool of the SQL login's connections, each lent as one scoped analyst session."""

    def __init__(self, settings: Settings, owner_pool: psycopg_pool.AsyncConnectionPool) -> None:
        self._settings = settings
        self._owner = owner_pool
        self._secret: str | None = None
        self.pool = api_pool(
            login_conninfo(settings.database_url, settings.analyst_sql_login),
            settings,
            min_size=0,  # scoped reads come and go: nothing kept open for them
            name="linkpulse-analyst",
            timeout=10,  # seconds to wait for a connection before answering 503
        )

    async def start(self) -> None:
        """Open the pool without waiting: a database that is down answers 503 per request."""
        await self.pool.open(wait=False)

    async def stop(self) -> None:
        await self.pool.close()

    async def secret(self) -> str:
        """The scope-signing secret, read once (503 problem when the store is not ready)."""
        if self._secret is None:
            try:
                async with self._owner.connection(timeout=5) as conn:
                    cur = await conn.execute("SELECT secret FROM lp_private.scope_secret")
                    row = await cur.fetchone()
            except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
                msg = f"the store did not answer ({type(e).__name__})"
                raise _unavailable(msg) from e
            if row is None:
                raise _unavailable(_NOT_SET_UP)
            self._secret = str(row[0])
        return self._secret

    @asynccontextmanager
    async def session(
        self, *, tenant: str, seller: str | None, ttl_s: int = 300
    ) -> AsyncIterator[psycopg.AsyncConnection]:
        """A read-only transaction as the analyst role, scoped to ``tenant`` (and ``seller``).

        Rolled back at the end; a broken connection goes back to the pool to be replaced.
        """
        secret = await self.secret()
        try:
            conn = await self.pool.getconn()
        except psycopg_pool.PoolTimeout as e:
            msg = (
                f"no connection as {self._settings.analyst_sql_login!r} ({e}); "
                f"if the login is missing: {_NOT_SET_UP}"
            )
            raise _unavailable(msg) from e
        try:
            async with roles.analyst_session_async(
                conn,
                analyst_role=self._settings.analyst_role,
                secret=secret,
                tenant=tenant,
                seller_id=seller,
                ttl_s=ttl_s,
            ) as scoped:
                yield scoped
        finally:
            await self.pool.putconn(conn)  # the pool checks it and replaces a broken one


def _unavailable(detail: str) -> ProblemError:
    return ProblemError(503, "store-unavailable", "The store is not available", detail)
