"""Per-role limits of the SQL endpoint: a statement timeout and a row cap.

``LINKPULSE_SQL_LIMITS`` has the shape of ``LINKPULSE_RATE_LIMITS``:
``role=timeout_s/max_rows`` pairs, comma-separated. A role that may use the
endpoint but is not listed gets ``DEFAULT``. Which roles may use it at all is
decided in code (``SQL_ROLE_NAMES``), not by configuration. This module imports
nothing of the API: the settings validate with it before the API is loaded.

>>> parse_sql_limits("analyst=60/1000000, seller=15/10000")["seller"]
SqlLimit(timeout_s=15.0, max_rows=10000)
>>> limit_for(parse_sql_limits(""), "operator")
SqlLimit(timeout_s=30.0, max_rows=100000)
>>> parse_sql_limits("viewer=1/1")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: LINKPULSE_SQL_LIMITS: role viewer may not use the SQL endpoint (or is no role); ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT", "SQL_ROLE_NAMES", "SqlLimit", "limit_for", "parse_sql_limits"]

# Readers of raw data: analysts, operators (on-call investigation, smaller cap), admins,
# and sellers confined to their seller by the database. Viewers read the dashboard's
# prepared queries only; ingest keys only write. (Names of linkpulse.api.auth.roles.Role.)
SQL_ROLE_NAMES: Final = frozenset({"admin", "operator", "analyst", "seller"})


@dataclass(frozen=True)
class SqlLimit:
    """At most ``timeout_s`` seconds of database time and ``max_rows`` rows per query."""

    timeout_s: float
    max_rows: int


DEFAULT: Final = SqlLimit(30.0, 100_000)


def parse_sql_limits(text: str) -> dict[str, SqlLimit]:
    """``role=timeout_s/max_rows`` pairs; ValueError naming the bad part."""
    out: dict[str, SqlLimit] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            role_name, spec = part.split("=", 1)
            timeout_text, rows_text = spec.split("/", 1)
            timeout_s, max_rows = float(timeout_text), int(rows_text)
        except ValueError:
            msg = f"LINKPULSE_SQL_LIMITS: expected role=timeout_s/max_rows, got {part!r}"
            raise ValueError(msg) from None
        role = role_name.strip().lower()
        if role not in SQL_ROLE_NAMES:
            allowed = ", ".join(sorted(SQL_ROLE_NAMES))
            msg = (
                f"LINKPULSE_SQL_LIMITS: role {role_name.strip()} may not use the SQL endpoint "
                f"(or is no role); use {allowed}"
            )
            raise ValueError(msg)
        if not (0 < timeout_s <= 3600 and math.isfinite(timeout_s) and max_rows >= 1):
            msg = f"LINKPULSE_SQL_LIMITS: {part!r} needs 0 < timeout_s <= 3600 and max_rows >= 1"
            raise ValueError(msg)
        out[role] = SqlLimit(timeout_s, max_rows)
    return out


def limit_for(limits: dict[str, SqlLimit], role: str) -> SqlLimit:
    """The limit of ``role`` (``DEFAULT`` when the setting does not name it)."""
    return limits.get(role, DEFAULT)
