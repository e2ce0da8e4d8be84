"""The time-series store: migrations, the writer, rollups, retention, analyst access.

TimescaleDB when the server has it, plain PostgreSQL otherwise; the tables,
rollups and analyst views have the same names and columns on every tier.
See docs/store.md.
"""

from __future__ import annotations

from linkpulse.store.capabilities import Tier, detect
from linkpulse.store.maintain import MaintainReport, run_forever, run_once
from linkpulse.store.migrate import MigrationStatus, migrate, status, stored_tier
from linkpulse.store.rollups import RefreshReport, refresh
from linkpulse.store.writer import EventWriter

__all__ = [
    "EventWriter",
    "MaintainReport",
    "MigrationStatus",
    "RefreshReport",
    "Tier",
    "detect",
    "migrate",
    "refresh",
    "run_forever",
    "run_once",
    "status",
    "stored_tier",
]
