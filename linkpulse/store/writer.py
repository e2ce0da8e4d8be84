"""EventWriter: batched, idempotent, retrying writes of events, dead letters and windows.

Synchronous (psycopg 3) because Bytewax sinks are. Each batch is one
transaction: on a lost connection the writer reconnects and retries the whole
batch, and ``INSERT ... ON CONFLICT`` makes the retry exact (a replayed event
id is stored once, on every tier, since the key is (tenant, event_time,
event_id) and a replay carries the producer's id and time).

The fast path COPYs a batch into a temporary staging table, then inserts it
with ``ON CONFLICT DO NOTHING``; servers without COPY (the WASM TimescaleDB
used for conformance) get one multi-row ``INSERT ... SELECT FROM unnest(...)``
per batch instead (no pipelining needed).

>>> EventWriter("postgresql://nowhere/x", batch_size=0)
Traceback (most recent call last):
...
ValueError: batch_size must be between 1 and 100000, got 0
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Self

import psycopg
from psycopg import sql

from linkpulse.errors import StoreError
from linkpulse.logging import get_logger
from linkpulse.schemas.events import BaseEvent
from linkpulse.schemas.outputs import DeadLetter, MetricWindow
from linkpulse.store import _rows
from linkpulse.store._sql import (
    DEAD_LETTERS_UNNEST,
    EVENTS_FROM_STAGE,
    EVENTS_UNNEST,
    MARK_BUCKETS,
    MARK_FROM_STAGE,
    STAGE_TABLE,
    WINDOWS_UPSERT,
)
from linkpulse.store.capabilities import Tier
from linkpulse.store.partitions import PARTITIONED, ensure_partitions

__all__ = ["EventWriter"]

log = get_logger(__name__)
_NO_PARTITION = "no partition of relation"
_COPY_STAGE = sql.SQL("COPY lp_stage_events ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(map(sql.Identifier, _rows.EVENT_COLUMNS))
)


class EventWriter:
    """Writes events, dead letters and metric windows; see the module doc for guarantees."""

    def __init__(
        self,
        dsn: str,
        *,
        batch_size: int = 5000,
        max_retries: int = 5,
        use_copy: bool | None = None,
    ) -> None:
        if not 1 <= batch_size <= 100_000:
            msg = f"batch_size must be between 1 and 100000, got {batch_size}"
            raise ValueError(msg)
        if max_retries < 0:
            msg = f"max_retries must be 0 or more, got {max_retries}"
            raise ValueError(msg)
        self.dsn = dsn
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.use_copy = use_copy
        self._conns: list[psycopg.Connection | None] = [None, None]
        self._tier: Tier | None = None
        self._copy: bool = False
        self.retries = 0  # connection losses recovered from, for metrics and tests

    # -- public API --------------------------------------------------------------------------

    def write_events(self, events: Sequence[BaseEvent]) -> int:
        """Store ``events``; return how many were new (replays are skipped)."""
        rows = [_rows.event_row(ev) for ev in events]
        chunks = self._chunks(rows)
        if len(chunks) > 1 and self._uses_copy():
            return self._write_overlapped(chunks)
        return sum(self._write("events", self._insert_events, chunk) for chunk in chunks)

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Store dead letters; return how many rows were written."""
        rows = [_rows.dead_letter_row(dl) for dl in letters]
        return sum(
            self._write("dead_letters", self._insert_dead_letters, chunk)
            for chunk in self._chunks(rows)
        )

    def upsert_metric_windows(self, windows: Sequence[MetricWindow]) -> int:
        """Insert or replace windows (a newer or equal revision wins); return rows changed."""
        rows = [_rows.window_row(w) for w in _rows.dedupe_windows(windows)]
        return sum(
            self._write("metric_windows", self._upsert_windows, chunk)
            for chunk in self._chunks(rows)
        )

    @property
    def tier(self) -> Tier:
        """The tier the database was migrated with (connects if needed)."""
        self._uses_copy()
        assert self._tier is not None
        return self._tier

    def close(self) -> None:
        """Close the connection; the writer reconnects if used again."""
        for side in range(len(self._conns)):
            self._drop_connection(side)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- batches and retries -----------------------------------------------------------------

    def _chunks(self, rows: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
        return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def _write(
        self,
        table: str,
        fn: Callable[[psycopg.Connection, list[tuple[Any, ...]]], int],
        rows: list[tuple[Any, ...]],
        side: int = 0,
    ) -> int:
        attempt, made_partitions = 0, False
        while True:
            try:
                conn = self._connection(side)
                with conn.transaction():
                    return fn(conn, rows)
            except psycopg.OperationalError as e:
                # Lost connection (or the server is restarting): the batch's
                # transaction did not commit, or did and ON CONFLICT makes the
                # retry a no-op. Reconnect and send the whole batch again.
                self._drop_connection(side)
                attempt += 1
                if attempt > self.max_retries:
                    msg = f"writing {len(rows)} rows to {table} failed after {attempt} tries: {e}"
                    raise StoreError(msg) from e
                self.retries += 1
                log.warning("store_write_retry", table=table, attempt=attempt, error=str(e))
                time.sleep(min(0.05 * 2**attempt, 2.0))
            except psycopg.errors.CheckViolation as e:
                if _NO_PARTITION not in str(e) or made_partitions:
                    msg = f"writing {len(rows)} rows to {table} failed: {e}"
                    raise StoreError(msg) from e
                self._drop_connection(side)  # its transaction failed
                self._make_partitions(table, rows, side)
                made_partitions = True
            except psycopg.Error as e:
                msg = f"writing {len(rows)} rows to {table} failed: {e}"
                raise StoreError(msg) from e

    def _make_partitions(self, table: str, rows: list[tuple[Any, ...]], side: int) -> None:
        # A late or backfilled row fell outside the partitions made ahead.
        columns = {
            "events": _rows.EVENT_COLUMNS,
            "dead_letters": _rows.DEAD_LETTER_COLUMNS,
            "metric_windows": _rows.WINDOW_COLUMNS,
        }[table]
        days = _rows.event_days(rows, columns.index(PARTITIONED[table]))
        conn = self._connection(side)
        with conn.transaction():
            ensure_partitions(conn, table, days)

    def _connection(self, side: int = 0) -> psycopg.Connection:
        conn = self._conns[side]
        if conn is not None and not conn.closed:
            return conn
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            msg = f"could not connect to the store: {e}"
            raise StoreError(msg) from e
        if self._tier is None:
            row = (
                conn.execute("SELECT value FROM lp_store_meta WHERE key = 'tier'").fetchone()
                if _has_meta(conn)
                else None
            )
            if row is None:
                conn.close()
                msg = "the store has no schema yet: run `linkpulse db migrate` first"
                raise StoreError(msg)
            self._tier = Tier.parse(row[0])
            self._copy = self.use_copy if self.use_copy is not None else _copy_works(conn)
        if self._copy:
            conn.execute(STAGE_TABLE)
        self._conns[side] = conn
        return conn

    def _drop_connection(self, side: int = 0) -> None:
        conn, self._conns[side] = self._conns[side], None
        if conn is not None:
            conn.close()

    def _uses_copy(self) -> bool:
        # Connecting may itself meet a lost connection: retry it like a batch.
        attempt = 0
        while True:
            try:
                self._connection()
                return self._copy
            except psycopg.OperationalError as e:
                self._lost(0, e)
                attempt += 1
                if attempt > self.max_retries:
                    msg = f"could not connect to the store after {attempt} tries: {e}"
                    raise StoreError(msg) from e
                time.sleep(min(0.05 * 2**attempt, 2.0))

    # -- overlapped COPY path ----------------------------------------------------------------

    def _write_overlapped(self, chunks: list[list[tuple[Any, ...]]]) -> int:
        """COPY batch n+1 on one connection while batch n's INSERT runs on the other.

        The client's work (row conversion, COPY) then hides behind the
        server's INSERT. Each batch is still one transaction; batch n commits
        before batch n+1's INSERT starts, so the two never wait on each other's
        locks. A batch whose COPY or INSERT fails goes through the ordinary
        retrying path on its own connection, which ON CONFLICT makes exact.
        """
        total = 0
        pending: tuple[Future[int], list[tuple[Any, ...]], int] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lp-writer") as pool:
            for i, chunk in enumerate(chunks):
                side = i % 2
                staged = self._try_stage(side, chunk)
                if pending is not None:
                    total += self._collect(*pending)
                    pending = None
                if staged:
                    pending = (pool.submit(self._finish, self._connection(side)), chunk, side)
                else:
                    total += self._write("events", self._insert_events, chunk, side)
            if pending is not None:
                total += self._collect(*pending)
        return total

    def _try_stage(self, side: int, rows: list[tuple[Any, ...]]) -> bool:
        try:
            conn = self._connection(side)
            conn.execute("BEGIN")
            self._stage(conn.cursor(), rows)
            return True
        except psycopg.Error as e:
            self._lost(side, e)
            return False

    def _finish(self, conn: psycopg.Connection) -> int:
        cur = conn.cursor()
        inserted = cur.execute(EVENTS_FROM_STAGE).rowcount
        if self._track_dirty():
            cur.execute(MARK_FROM_STAGE)
        cur.execute("COMMIT")
        return inserted

    def _collect(self, fut: Future[int], rows: list[tuple[Any, ...]], side: int) -> int:
        try:
            return fut.result()
        except psycopg.Error as e:
            self._lost(side, e)
            return self._write("events", self._insert_events, rows, side)

    def _lost(self, side: int, e: psycopg.Error) -> None:
        if isinstance(e, psycopg.OperationalError):
            self.retries += 1
            log.warning("store_write_retry", table="events", error=str(e))
        self._drop_connection(side)

    # -- the statements ----------------------------------------------------------------------

    def _track_dirty(self) -> bool:
        # Continuous aggregates track their own invalidations.
        return self._tier is not Tier.FULL_TIMESCALE

    def _insert_events(self, conn: psycopg.Connection, rows: list[tuple[Any, ...]]) -> int:
        if self._copy:
            cur = conn.cursor()
            self._stage(cur, rows)
            inserted = cur.execute(EVENTS_FROM_STAGE).rowcount
            if self._track_dirty():
                cur.execute(MARK_FROM_STAGE)
        else:
            cols = [list(c) for c in zip(*rows, strict=True)]
            inserted = conn.execute(EVENTS_UNNEST, cols).rowcount
            if self._track_dirty():
                tenants, minutes = _rows.minute_buckets(rows)
                conn.execute(MARK_BUCKETS, (tenants, minutes))
        return inserted

    @staticmethod
    def _stage(cur: psycopg.Cursor[Any], rows: list[tuple[Any, ...]]) -> None:
        with cur.copy(_COPY_STAGE) as cp:
            cp.set_types(list(_rows.EVENT_STAGE_TYPES))
            for r in rows:
                cp.write_row(r)

    def _insert_dead_letters(self, conn: psycopg.Connection, rows: list[tuple[Any, ...]]) -> int:
        cols = [list(c) for c in zip(*rows, strict=True)]
        return conn.execute(DEAD_LETTERS_UNNEST, cols).rowcount

    def _upsert_windows(self, conn: psycopg.Connection, rows: list[tuple[Any, ...]]) -> int:
        cols = [list(c) for c in zip(*rows, strict=True)]
        return conn.execute(WINDOWS_UPSERT, cols).rowcount


def _has_meta(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('lp_store_meta') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _copy_works(conn: psycopg.Connection) -> bool:
    """True when the server accepts COPY FROM STDIN (the WASM build does not)."""
    try:
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE lp_copy_probe (a int) ON COMMIT DROP")
            with conn.cursor().copy("COPY lp_copy_probe FROM STDIN") as cp:
                cp.write_row((1,))
        return True
    except psycopg.Error:
        return False
