"""What the server offers: full TimescaleDB, its Apache-only part, or plain PostgreSQL.

The tier decides how tables are partitioned, how rollups are kept and how
retention runs (see docs/store.md). It can be forced lower than what the
server has (``LINKPULSE_STORE_TIER``), which is how the plain-PostgreSQL code
path is tested on a TimescaleDB server, never higher.

>>> Tier.parse("plain")
<Tier.PLAIN_POSTGRES: 'plain'>
>>> Tier.FULL_TIMESCALE.section
'full'
>>> Tier.PLAIN_POSTGRES < Tier.FULL_TIMESCALE
True
"""

from __future__ import annotations

from enum import StrEnum

import psycopg

from linkpulse.errors import StoreError

__all__ = ["Tier", "detect", "server_tier"]

_RANK = {"plain": 0, "apache_timescale": 1, "full_timescale": 2}
_SECTION = {"plain": "plain", "apache_timescale": "apache", "full_timescale": "full"}


class Tier(StrEnum):
    """A capability tier, ordered from least to most capable."""

    PLAIN_POSTGRES = "plain"
    APACHE_TIMESCALE = "apache_timescale"
    FULL_TIMESCALE = "full_timescale"

    @property
    def section(self) -> str:
        """The name used in migration files' ``-- @tier:`` lines."""
        return _SECTION[self.value]

    @property
    def is_timescale(self) -> bool:
        """True when tables are hypertables."""
        return self is not Tier.PLAIN_POSTGRES

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Tier):
            return NotImplemented
        return _RANK[self.value] < _RANK[other.value]

    @classmethod
    def parse(cls, text: str) -> Tier:
        """A tier from its name or a section name ('full', 'apache', 'plain')."""
        key = text.strip().lower()
        for tier in cls:
            if key in (tier.value, tier.section, tier.name.lower()):
                return tier
        expected = ", ".join(t.value for t in cls)
        msg = f"unknown store tier {text!r}; expected auto or one of {expected}"
        raise ValueError(msg)


def server_tier(conn: psycopg.Connection) -> Tier:
    """The best tier the server offers with the timescaledb extension as installed."""
    try:
        row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        if row is None:
            return Tier.PLAIN_POSTGRES
        # Calling one of its C functions loads the library, so its settings
        # exist (servers without it in shared_preload_libraries load lazily).
        conn.execute("SELECT time_bucket(INTERVAL '1 minute', now())")
        lic = conn.execute(
            "SELECT setting FROM pg_settings WHERE name = 'timescaledb.license'"
        ).fetchone()
    except psycopg.Error as e:
        msg = f"could not detect the store tier: {e}"
        raise StoreError(msg) from e
    if lic is not None and lic[0] == "apache":
        return Tier.APACHE_TIMESCALE
    return Tier.FULL_TIMESCALE


def detect(conn: psycopg.Connection, force: str | Tier | None = None) -> Tier:
    """The tier to use: the server's best, or ``force`` when it is lower.

    ``force`` may be ``None`` or ``"auto"`` (use the best). Forcing a tier the
    server does not have raises StoreError, naming both.
    """
    best = server_tier(conn)
    if force is None or (isinstance(force, str) and force.strip().lower() == "auto"):
        return best
    wanted = force if isinstance(force, Tier) else Tier.parse(force)
    if best < wanted:
        msg = f"store tier {wanted.value} was asked for but the server offers only {best.value}"
        raise StoreError(msg)
    return wanted
