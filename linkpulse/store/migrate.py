"""Versioned SQL migrations, applied in order, once, under an advisory lock.

Files are ``migrations/NNNN_name.sql``. A line ``-- @tier: full,apache``
starts a section applied only on those tiers (``-- @tier: all`` ends it), so
one version number covers every tier. Applied versions are recorded in
``lp_schema_migrations`` with the file's sha256; a later run refuses to go on
when an applied file's content changed, naming the file.

>>> render("CREATE TABLE a ();\\n-- @tier: full\\nSELECT 1;\\n-- @tier: all\\nSELECT 2;\\n",
...        Tier.PLAIN_POSTGRES).split()
['CREATE', 'TABLE', 'a', '();', 'SELECT', '2;']
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from linkpulse.errors import MigrationError
from linkpulse.logging import get_logger
from linkpulse.store.capabilities import Tier, detect

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationStatus",
    "TableSize",
    "discover",
    "migrate",
    "render",
    "status",
    "stored_tier",
    "table_sizes",
]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
LOCK_KEY = 0x6C70_6D69_6772  # "lpmigr": one lock for every linkpulse migrator
_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_PARTITION = re.compile(r"\s*@PARTITION_BY_RANGE\((\w+)\)")
_SECTION = re.compile(r"^--\s*@tier:\s*(?P<tiers>[a-z, ]+)\s*$")
_TABLE = """
CREATE TABLE IF NOT EXISTS lp_schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    tier        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL
)"""
log = get_logger(__name__)


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    path: Path
    sql: str = field(repr=False)
    checksum: str


@dataclass(frozen=True)
class MigrationStatus:
    """A migration file and whether (and when) it was applied."""

    version: int
    name: str
    checksum: str
    applied_at: datetime | None
    changed: bool = False

    @property
    def state(self) -> str:
        """``applied``, ``pending``, or ``CHANGED`` (applied, but the file differs since).

        >>> MigrationStatus(1, "init", "ab", None).state
        'pending'
        """
        if self.changed:
            return "CHANGED"
        return "applied" if self.applied_at else "pending"


def discover(directory: Path | None = None) -> list[Migration]:
    """The migration files of ``directory``, in version order."""
    directory = directory or MIGRATIONS_DIR
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if m is None:
            msg = f"{path}: migration files are named NNNN_lowercase_name.sql"
            raise MigrationError(msg)
        version = int(m["version"])
        if version in found:
            msg = f"{path}: version {version} is also used by {found[version].path.name}"
            raise MigrationError(msg)
        data = path.read_bytes()
        found[version] = Migration(
            version, m["name"], path, data.decode(), hashlib.sha256(data).hexdigest()
        )
    return [found[v] for v in sorted(found)]


def render(sql: str, tier: Tier) -> str:
    """The statements of ``sql`` that apply to ``tier``.

    >>> render("CREATE TABLE t (at timestamptz) @PARTITION_BY_RANGE(at);", Tier.PLAIN_POSTGRES)
    'CREATE TABLE t (at timestamptz) PARTITION BY RANGE (at);\\n'
    >>> render("CREATE TABLE t (at timestamptz) @PARTITION_BY_RANGE(at);", Tier.FULL_TIMESCALE)
    'CREATE TABLE t (at timestamptz);\\n'
    """
    partition = r" PARTITION BY RANGE (\1)" if tier is Tier.PLAIN_POSTGRES else ""
    sql = _PARTITION.sub(lambda m: m.expand(partition), sql)
    keep, out = True, []
    for line in sql.splitlines():
        m = _SECTION.match(line.strip())
        if m:
            tiers = {t.strip() for t in m["tiers"].split(",")}
            keep = "all" in tiers or tier.section in tiers
            continue
        if keep:
            out.append(line)
    return "\n".join(out) + "\n"


def stored_tier(conn: psycopg.Connection) -> Tier | None:
    """The tier the database was migrated with, or None before the first migration."""
    exists = conn.execute("SELECT to_regclass('lp_store_meta') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT value FROM lp_store_meta WHERE key = 'tier'").fetchone()
    return Tier.parse(row[0]) if row else None


def _ensure_extension(conn: psycopg.Connection) -> None:
    """Install timescaledb when the server has it available but the database lacks it."""
    row = conn.execute(
        "SELECT installed_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if row is None or row[0] is not None:
        return
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as e:  # e.g. not in shared_preload_libraries: use plain tables
        log.warning("timescaledb_unavailable", error=str(e))


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, str, datetime]]:
    rows = conn.execute(
        "SELECT version, name, checksum, applied_at FROM lp_schema_migrations"
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _check_unchanged(applied: dict[int, tuple[str, str, datetime]], files: list[Migration]) -> None:
    by_version = {m.version: m for m in files}
    for version, (name, checksum, _) in sorted(applied.items()):
        m = by_version.get(version)
        if m is None:
            msg = f"migration {version:04d}_{name}.sql was applied but its file is missing"
            raise MigrationError(msg)
        if m.checksum != checksum:
            msg = (
                f"{m.path.name} was changed after it was applied (checksum {checksum[:12]} "
                f"recorded, {m.checksum[:12]} now); add a new migration instead of editing it"
            )
            raise MigrationError(msg)


def migrate(
    dsn: str, *, directory: Path | None = None, tier: str | Tier | None = None
) -> list[Migration]:
    """Apply the pending migrations of ``directory``; return those applied now.

    Two processes may run this at once: the second waits on the advisory lock,
    then finds nothing pending.
    """
    files = discover(directory)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
            try:
                return _migrate_locked(conn, files, tier)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    except psycopg.Error as e:
        msg = f"migration failed: {e}"
        raise MigrationError(msg) from e


def _migrate_locked(
    conn: psycopg.Connection, files: list[Migration], force: str | Tier | None
) -> list[Migration]:
    conn.execute(_TABLE)
    applied = _applied(conn)
    _check_unchanged(applied, files)
    tier = stored_tier(conn)
    if tier is None:
        if force is None or str(getattr(force, "value", force)) != "plain":
            _ensure_extension(conn)
        tier = detect(conn, force)
    done = []
    for m in files:
        if m.version in applied:
            continue
        started = time.perf_counter()
        try:
            with conn.transaction():
                conn.execute(render(m.sql, tier).encode())
                _record_tier(conn, tier)
                conn.execute(
                    "INSERT INTO lp_schema_migrations (version, name, checksum, tier, duration_ms)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (
                        m.version,
                        m.name,
                        m.checksum,
                        tier.value,
                        int((time.perf_counter() - started) * 1000),
                    ),
                )
        except psycopg.Error as e:
            msg = f"{m.path.name} failed on tier {tier.value}: {e}"
            raise MigrationError(msg) from e
        log.info("migration_applied", version=m.version, name=m.name, tier=tier.value)
        done.append(m)
    return done


def _record_tier(conn: psycopg.Connection, tier: Tier) -> None:
    exists = conn.execute("SELECT to_regclass('lp_store_meta') IS NOT NULL").fetchone()
    if exists and exists[0]:
        conn.execute(
            "INSERT INTO lp_store_meta (key, value) VALUES ('tier', %s) "
            "ON CONFLICT (key) DO NOTHING",
            (tier.value,),
        )


def status(conn: psycopg.Connection, directory: Path | None = None) -> list[MigrationStatus]:
    """Every migration file with its applied time (None when pending)."""
    files = discover(directory)
    exists = conn.execute("SELECT to_regclass('lp_schema_migrations') IS NOT NULL").fetchone()
    applied = _applied(conn) if exists and exists[0] else {}
    out = []
    for m in files:
        rec = applied.get(m.version)
        out.append(
            MigrationStatus(
                m.version,
                m.name,
                m.checksum,
                rec[2] if rec else None,
                changed=rec is not None and rec[1] != m.checksum,
            )
        )
    return out


@dataclass(frozen=True)
class TableSize:
    """One of the store's tables (or rollups) and its size on disk, parts included."""

    name: str
    kind: str  # "table", "partitioned", "hypertable" or "continuous aggregate"
    parts: int  # partitions or chunks (0 for a plain table)
    bytes: int  # data, indexes and TOAST of it and all its parts (compressed chunks included)


# Top-level tables of the public schema. A partitioned table's size is its
# partitions' (pg_partition_tree, which lists nothing for a plain table); a
# hypertable's is replaced below by hypertable_size (its chunks inherit, and
# compressed ones live elsewhere).
_TABLES = """
SELECT c.relname,
       CASE c.relkind WHEN 'p' THEN 'partitioned' ELSE 'table' END,
       (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid),
       CASE c.relkind WHEN 'p' THEN
           (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)::bigint
              FROM pg_partition_tree(c.oid) t)
       ELSE pg_total_relation_size(c.oid) END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname
"""
_HYPERTABLES = """
SELECT hypertable_name, num_chunks,
       hypertable_size(format('%I.%I', hypertable_schema, hypertable_name)::regclass)
FROM timescaledb_information.hypertables WHERE hypertable_schema = 'public'
"""
_CAGGS = """
SELECT view_name,
       (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = format('%I.%I',
            materialization_hypertable_schema, materialization_hypertable_name)::regclass),
       hypertable_size(format('%I.%I', materialization_hypertable_schema,
                              materialization_hypertable_name)::regclass)
FROM timescaledb_information.continuous_aggregates WHERE view_schema = 'public'
"""


def table_sizes(conn: psycopg.Connection) -> list[TableSize]:
    """The public schema's tables and rollups with their sizes, by name (``db status``)."""
    out = {
        name: TableSize(name, kind, int(parts), int(size or 0))
        for name, kind, parts, size in conn.execute(_TABLES).fetchall()
    }
    has_ts = conn.execute("SELECT to_regclass('timescaledb_information.hypertables')").fetchone()
    if has_ts and has_ts[0] is not None:
        for name, chunks, size in conn.execute(_HYPERTABLES).fetchall():
            out[name] = TableSize(name, "hypertable", int(chunks or 0), int(size or 0))
        for name, chunks, size in conn.execute(_CAGGS).fetchall():
            out[name] = TableSize(name, "continuous aggregate", int(chunks or 0), int(size or 0))
    return sorted(out.values(), key=lambda t: t.name)
