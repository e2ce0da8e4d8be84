"""The second fence: the functions a statement calls must not be volatile in the catalogue.

The parse tree (``check.py``) names the functions; only the database knows
which are volatile (they may write or change the session). Shared by the SQL
endpoint and the exports, which run analysts' SQL the same way.

>>> sorted(VOLATILE_ALLOWED)[:2]
['clock_timestamp', 'gen_random_uuid']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from linkpulse.sqlapi.check import VOLATILE_ALLOWED, SqlRefused

__all__ = ["VOLATILE_ALLOWED", "refuse_volatile"]

_VOLATILE = (
    "SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p "
    "WHERE p.proname = ANY(%s) AND p.provolatile = 'v' ORDER BY 1"
)


async def refuse_volatile(conn: psycopg.AsyncConnection[Any], functions: Iterable[str]) -> None:
    """``SqlRefused`` if any of ``functions`` is volatile (except the harmless few allowed)."""
    names = sorted(set(functions) - VOLATILE_ALLOWED)
    if not names:
        return
    cur = await conn.execute(_VOLATILE, [names])
    volatile = [str(r[0]) for r in await cur.fetchall()]
    if volatile:
        detail = (
            f"volatile function(s) {', '.join(volatile)}() may write or change the "
            "session: not allowed here (stable and immutable functions are)"
        )
        slug = "sql-function-not-allowed"
        raise SqlRefused(slug, detail)
