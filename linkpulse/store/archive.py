"""Archive partitions/chunks to Parquet before retention drops them; verify; restore.

With ``LINKPULSE_ARCHIVE_TARGET`` set, ``linkpulse db maintain`` archives, for
each table of ``LINKPULSE_ARCHIVE_TABLES``, every piece (a plain daily
partition, or a TimescaleDB chunk) that lies entirely before the table's
retention horizon, then retention drops only the pieces whose archive checks
out: a manifest exists, its file is there with the size it records, and its
row count equals the piece's rows counted now, under a lock, in the dropping
transaction. Any mismatch keeps the piece (``RetentionReport.kept``) and the
next pass archives it again. On the full TimescaleDB tier the scheduler's own
retention policy would drop chunks unarchived, so the archive step removes the
retention policy of archived tables (maintain's ``drop_chunks`` does it).

Layout under the target (a folder, ``file:///path``, or ``s3://bucket/prefix``
through ``pyarrow.fs``, the same interface; S3 credentials come from the usual
AWS variables; tests/test_store_archive.py runs it against moto's S3 server)::

    <table>/<start>_<end>/data.parquet    the rows, zstd, with a watermark
    <table>/<start>_<end>/manifest.json   range, rows, sha256, size, schema

The manifest is written last, so a piece without one is not archived. Exact
types: ``numeric`` is archived as its text (Arrow decimals need one scale per
column), JSON as JSON text; the manifest keeps each column's PostgreSQL type
and ``restore`` casts back. Restoring is idempotent: rows go in with ``ON
CONFLICT DO NOTHING`` on the table's key.

>>> p = Piece("events", "events_p20261124", datetime(2026, 11, 24, tzinfo=UTC),
...           datetime(2026, 11, 25, tzinfo=UTC))
>>> p.folder
'events/20261124T000000Z_20261125T000000Z'
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from psycopg import sql

from linkpulse.config import Settings
from linkpulse.errors import StoreError
from linkpulse.logging import get_logger
from linkpulse.store.capabilities import Tier
from linkpulse.store.partitions import PARTITIONED, day_of, ensure_partitions, list_partitions
from linkpulse.store.retention import HORIZON_OF

__all__ = [
    "ArchiveError",
    "ArchiveReport",
    "ArchiveTarget",
    "Archiver",
    "Manifest",
    "Piece",
    "RestoreReport",
    "archiver_of",
    "horizons_of",
    "restore",
]

if TYPE_CHECKING:
    from linkpulse.formats import Column

log = get_logger(__name__)
MANIFEST_VERSION = 1
BATCH_ROWS = 10_000
_STAMP = "%Y%m%dT%H%M%SZ"


class ArchiveError(StoreError):
    """An archive could not be written, read or verified."""


@dataclass(frozen=True)
class Piece:
    """A partition (plain PostgreSQL) or chunk (TimescaleDB): a table's rows in [start, end)."""

    table: str
    name: str
    start: datetime
    end: datetime

    @property
    def folder(self) -> str:
        """The piece's folder under the target."""
        start, end = self.start.astimezone(UTC), self.end.astimezone(UTC)
        return f"{self.table}/{start:{_STAMP}}_{end:{_STAMP}}"


@dataclass(frozen=True)
class Manifest:
    """What an archived piece holds (``manifest.json``)."""

    table: str
    piece: str
    start: datetime
    end: datetime
    rows: int
    file: str
    size: int
    sha256: str
    columns: list[dict[str, str]]
    archived_at: datetime
    tier: str

    def to_json(self) -> bytes:
        body = {
            "version": MANIFEST_VERSION,
            "table": self.table,
            "piece": self.piece,
            "range": {"start": self.start.isoformat(), "end": self.end.isoformat()},
            "rows": self.rows,
            "files": [
                {"path": self.file, "rows": self.rows, "bytes": self.size, "sha256": self.sha256}
            ],
            "schema": self.columns,
            "archived_at": self.archived_at.isoformat(),
            "tier": self.tier,
        }
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        d = orjson.loads(data)
        if d.get("version") != MANIFEST_VERSION or len(d.get("files", ())) != 1:
            msg = f"unsupported archive manifest (version {d.get('version')!r})"
            raise ArchiveError(msg)
        f = d["files"][0]
        return cls(
            table=d["table"],
            piece=d["piece"],
            start=datetime.fromisoformat(d["range"]["start"]),
            end=datetime.fromisoformat(d["range"]["end"]),
            rows=int(d["rows"]),
            file=f["path"],
            size=int(f["bytes"]),
            sha256=f["sha256"],
            columns=d["schema"],
            archived_at=datetime.fromisoformat(d["archived_at"]),
            tier=d["tier"],
        )


class ArchiveTarget:
    """Where archives go: a local folder or any ``pyarrow.fs`` URI (``s3://bucket/prefix``).

    >>> ArchiveTarget("/tmp/lp-archive").root
    '/tmp/lp-archive'
    """

    def __init__(self, uri: str) -> None:
        if not uri.strip():
            msg = "the archive target is empty: set LINKPULSE_ARCHIVE_TARGET"
            raise ArchiveError(msg)
        try:
            if "://" in uri:
                self.fs, root = pafs.FileSystem.from_uri(uri)
            else:
                self.fs, root = pafs.LocalFileSystem(), str(_absolute(uri))
        except (ValueError, OSError) as e:
            msg = f"LINKPULSE_ARCHIVE_TARGET {uri!r} can't be used: {e}"
            raise ArchiveError(msg) from e
        self.uri = uri
        self.root = root.rstrip("/")

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def write(self, relative: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Write ``chunks`` to ``relative``; return (bytes, sha256)."""
        full = self.path(relative)
        self.fs.create_dir(full.rsplit("/", 1)[0], recursive=True)
        digest, size = hashlib.sha256(), 0
        with self.fs.open_output_stream(full) as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def read(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as f:
            data: bytes = f.read()
        return data

    def sha256(self, relative: str) -> str:
        """The file's sha256, read in blocks (an archived day can be large)."""
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path(relative)) as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    def size(self, relative: str) -> int | None:
        """The file's size, or None if it is not there."""
        info = self.fs.get_file_info(self.path(relative))
        return info.size if info.type == pafs.FileType.File else None

    def manifest(self, piece_folder: str) -> Manifest | None:
        """The manifest of a piece, or None if the piece was never (fully) archived."""
        rel = f"{piece_folder}/manifest.json"
        if self.size(rel) is None:
            return None
        return Manifest.from_json(self.read(rel))

    def manifests(self, table: str) -> list[Manifest]:
        """Every archived piece of ``table``, oldest first."""
        selector = pafs.FileSelector(self.path(table), allow_not_found=True, recursive=True)
        found = []
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.path.endswith("/manifest.json"):
                rel = info.path[len(self.root) + 1 :]
                found.append(Manifest.from_json(self.read(rel)))
        return sorted(found, key=lambda m: m.start)


def _absolute(path: str) -> Any:
    from pathlib import Path

    return Path(path).expanduser().resolve()


def pieces_before(
    conn: psycopg.Connection, tier: Tier, table: str, horizon: datetime
) -> list[Piece]:
    """``table``'s partitions or chunks that end at or before ``horizon``, oldest first."""
    if tier.is_timescale:
        rows = conn.execute(
            "SELECT format('%%I.%%I', chunk_schema, chunk_name), range_start, range_end "
            "FROM timescaledb_information.chunks WHERE hypertable_schema = current_schema() "
            "AND hypertable_name = %s AND range_end <= %s ORDER BY range_start",
            (table, horizon),
        ).fetchall()
        return [Piece(table, r[0], r[1], r[2]) for r in rows]
    out = []
    for name in list_partitions(conn, table):
        day = day_of(name)
        if day is None:
            continue
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if start + timedelta(days=1) <= horizon:
            out.append(Piece(table, name, start, start + timedelta(days=1)))
    return out


def _table_columns(conn: psycopg.Connection, table: str) -> list[tuple[str, str]]:
    """(name, PostgreSQL type) of ``table``'s columns, in order."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _archived_column(name: str, pg_type: str) -> tuple[sql.Composable, Column]:
    """How a column is selected and typed for the archive (bare numeric kept exact as text)."""
    from linkpulse.formats import Column  # not at import: formats reaches into the API

    ident = sql.Identifier(name)
    if pg_type == "numeric":
        return sql.SQL("{}::text AS {}").format(ident, ident), Column(name, "text")
    return ident, Column(name, pg_type)


def _range_where(table: str, piece: Piece) -> sql.Composed:
    col = sql.Identifier(PARTITIONED[table])
    return sql.SQL("{} >= {} AND {} < {}").format(
        col, sql.Literal(piece.start), col, sql.Literal(piece.end)
    )


def count_rows(conn: psycopg.Connection, piece: Piece) -> int:
    """Rows of the piece now (read through the parent: compressed chunks included)."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            sql.Identifier(piece.table), _range_where(piece.table, piece)
        )
    ).fetchone()
    return int(row[0]) if row else 0


@dataclass
class ArchiveReport:
    """What an archive step did."""

    archived: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    rows: int = 0


class Archiver:
    """Archives a store's due pieces to a target and checks them before a drop."""

    def __init__(self, target: ArchiveTarget, tables: Iterable[str]) -> None:
        self.target = target
        self.tables = tuple(t.strip() for t in tables if t.strip())
        unknown = [t for t in self.tables if t not in PARTITIONED]
        if unknown:
            known = ", ".join(PARTITIONED)
            msg = f"LINKPULSE_ARCHIVE_TABLES: unknown table(s) {', '.join(unknown)}; use {known}"
            raise ArchiveError(msg)

    def archive_piece(self, conn: psycopg.Connection, tier: Tier, piece: Piece) -> Manifest:
        """Write one piece's rows and manifest, checked against a count of the same snapshot."""
        cols = [_archived_column(n, t) for n, t in _table_columns(conn, piece.table)]
        select = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(c for c, _ in cols),
            sql.Identifier(piece.table),
            _range_where(piece.table, piece),
        )
        now = datetime.now(UTC)
        mark = {
            "archived_by": "linkpulse db maintain",
            "archived_at": now.isoformat(),
            "table": piece.table,
            "piece": piece.name,
            "range": f"[{piece.start.isoformat()}, {piece.end.isoformat()})",
        }
        data = f"{piece.folder}/data.parquet"
        written = [0]
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            counted = count_rows(conn, piece)  # the snapshot the cursor reads too

            def chunks() -> Iterator[bytes]:
                from linkpulse.formats import open_writer
                from linkpulse.formats.loaders import use_format_loaders

                writer = open_writer("parquet", [c for _, c in cols], watermark=mark)
                with conn.cursor(name="lp_archive") as cur:
                    use_format_loaders(cur, "parquet")  # times, JSON as text: Arrow parses them
                    cur.execute(select)
                    while batch := cur.fetchmany(BATCH_ROWS):
                        written[0] += len(batch)
                        yield writer.write(batch)
                yield writer.close()

            size, digest = self.target.write(data, chunks())
        in_file = pq.ParquetFile(self.target.fs.open_input_file(self.target.path(data)))
        if not counted == written[0] == in_file.metadata.num_rows:
            msg = (
                f"archive of {piece.name} does not check out: {counted} rows counted, "
                f"{written[0]} read, {in_file.metadata.num_rows} in {data}; nothing is dropped"
            )
            raise ArchiveError(msg)
        manifest = Manifest(
            table=piece.table,
            piece=piece.name,
            start=piece.start,
            end=piece.end,
            rows=counted,
            file="data.parquet",
            size=size,
            sha256=digest,
            columns=[{"name": n, "pg_type": t} for n, t in _table_columns(conn, piece.table)],
            archived_at=now,
            tier=tier.value,
        )
        self.target.write(f"{piece.folder}/manifest.json", [manifest.to_json()])
        return manifest

    def archive_due(
        self, conn: psycopg.Connection, tier: Tier, horizons: dict[str, datetime]
    ) -> ArchiveReport:
        """Archive every piece of the archived tables entirely before its table's horizon.

        A piece whose archive already matches its row count is left as it is
        (so a pass is cheap once the backlog is archived).
        """
        report = ArchiveReport()
        for table in self.tables:
            if tier is Tier.FULL_TIMESCALE:  # the scheduler must not drop unarchived chunks
                conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (table,))
            for piece in pieces_before(conn, tier, table, horizons[table]):
                if self.mismatch(conn, piece) is None:  # archived, and it still checks out
                    report.already.append(piece.name)
                    continue
                manifest = self.archive_piece(conn, tier, piece)
                report.archived.append(piece.name)
                report.rows += manifest.rows
                log.info("archived", piece=piece.name, rows=manifest.rows, target=self.target.uri)
        return report

    def verified(self, conn: psycopg.Connection, piece: Piece) -> str | None:
        """None if ``piece`` may be dropped (its archive checks out now), else why not.

        Runs in the dropping transaction: the piece is locked first, so no row
        can arrive between the count and the drop.
        """
        conn.execute(  # a chunk's name is schema.table; a partition's is bare
            sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                sql.Identifier(*piece.name.split("."))
            )
        )
        return self.mismatch(conn, piece)

    def mismatch(self, conn: psycopg.Connection, piece: Piece) -> str | None:
        """Why ``piece``'s archive does not match the store now (None: it does)."""
        manifest = self.target.manifest(piece.folder)
        if manifest is None:
            return "not archived"
        size = self.target.size(f"{piece.folder}/{manifest.file}")
        if size != manifest.size:
            return f"archive file is {size} bytes, the manifest says {manifest.size}"
        rows = count_rows(conn, piece)
        if rows != manifest.rows:
            return f"{rows} rows in the store, {manifest.rows} archived"
        return None

    def drop_verified(
        self, conn: psycopg.Connection, tier: Tier, table: str, horizon: datetime
    ) -> tuple[list[str], list[str]]:
        """Drop the pieces before ``horizon`` whose archive checks out; return (dropped, kept)."""
        dropped, kept = [], []
        for piece in pieces_before(conn, tier, table, horizon):
            why = self.verified(conn, piece)
            if why is not None:
                log.error("not dropped: its archive does not check out", piece=piece.name, why=why)
                kept.append(f"{piece.name}: {why}")
                continue
            if tier.is_timescale:
                conn.execute(
                    "SELECT drop_chunks(%s::regclass, older_than => %s, newer_than => %s)",
                    (table, piece.end, piece.start),
                )
            else:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(piece.name)))
            dropped.append(piece.name)
        return dropped, kept


def archiver_of(settings: Settings) -> Archiver | None:
    """The archiver the settings ask for, or None (``LINKPULSE_ARCHIVE_TARGET`` empty).

    >>> archiver_of(Settings(archive_target="")) is None
    True
    """
    if not settings.archive_target.strip():
        return None
    return Archiver(ArchiveTarget(settings.archive_target), settings.archive_tables.split(","))


def horizons_of(now: datetime, *, raw_days: int, rollup_days: int) -> dict[str, datetime]:
    """Each partitioned table's retention horizon (what ``apply_retention`` drops before)."""
    days = {"raw": raw_days, "rollup": rollup_days}
    return {t: now - timedelta(days=days[HORIZON_OF[t]]) for t in PARTITIONED}


@dataclass
class RestoreReport:
    """What a restore loaded."""

    pieces: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_inserted: int = 0


def _overlaps(m: Manifest, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or m.end > start) and (end is None or m.start < end)


def _json_row(names: list[str], json_cols: set[str], row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for n in names:
        v = row[n]
        out[n] = orjson.Fragment(v) if n in json_cols and v is not None else v
    return out


def restore(
    conn: psycopg.Connection,
    target: ArchiveTarget,
    table: str,
    tier: Tier,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    progress: Any | None = None,
) -> RestoreReport:
    """Load the archived pieces of ``table`` overlapping [start, end) back (idempotent).

    Each file's sha256 is checked before anything is loaded. ``progress(rows)``,
    if given, is called after each batch.
    """
    if table not in PARTITIONED:
        msg = f"unknown table {table!r}; archived tables are among {', '.join(PARTITIONED)}"
        raise ArchiveError(msg)
    report = RestoreReport()
    insert = sql.SQL(
        "INSERT INTO {t} SELECT * FROM jsonb_populate_recordset(NULL::{t}, %s::jsonb) "
        "ON CONFLICT DO NOTHING"
    ).format(t=sql.Identifier(table))
    for m in target.manifests(table):
        if not _overlaps(m, start, end):
            continue
        folder = Piece(table, m.piece, m.start, m.end).folder
        rel = f"{folder}/{m.file}"
        if target.sha256(rel) != m.sha256:
            msg = f"{target.path(rel)}: sha256 does not match its manifest; nothing restored"
            raise ArchiveError(msg)
        names = [c["name"] for c in m.columns]
        json_cols = {c["name"] for c in m.columns if c["pg_type"] in ("json", "jsonb")}
        if not tier.is_timescale:
            days = {(m.start + timedelta(days=i)).date() for i in range((m.end - m.start).days)}
            with conn.transaction():
                ensure_partitions(conn, table, days)
        parquet = pq.ParquetFile(target.fs.open_input_file(target.path(rel)))
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            rows = [_json_row(names, json_cols, r) for r in batch.to_pylist()]
            with conn.transaction():
                cur = conn.execute(insert, (orjson.dumps(rows).decode(),))
            report.rows_read += len(rows)
            report.rows_inserted += max(cur.rowcount, 0)
            if progress is not None:
                progress(len(rows))
        report.pieces.append(m.piece)
    return report
