"""EventWriter: batched, idempotent, retrying writes of events, dead letters and windows.

Synchronous (psycopg 3) because Bytewax sinks are. Each batch is one
transaction: on a lost connection the writer reconnects and retries the whole
batch, and ``INSERT ... ON CONFLICT`` makes the retry exact (a replayed event
id is stored once, on every tier, since the key is (tenant, event_time,
event_id) and a replay carries the producer's id and time).

The fast path COPYs a batch into a temporary staging table, then inserts it
with a plain ``INSERT``; a batch that meets a stored key (a replay) fails
whole and is redone with ``ON CONFLICT DO NOTHING``, which the writer keeps
using until a batch is all new again. ``write_events`` stages column tuples
(binary COPY); ``write_event_json`` stages the events' canonical JSON (text
COPY of one joined buffer) and lets the server take the columns apart, for
callers whose Python time is scarce (the dataflow); both store identical
rows. Servers without COPY (the WASM TimescaleDB used for conformance) get
one multi-row ``INSERT ... SELECT FROM unnest(...)`` per batch instead (no
pipelining needed).

>>> EventWriter("postgresql://nowhere/x", batch_size=0)
Traceback (most recent call last):
...
ValueError: batch_size must be between 1 and 100000, got 0
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date
from functools import partial
from typing import TYPE_CHECKING, Any, Self

import psycopg
from psycopg import sql

from linkpulse.errors import StoreError
from linkpulse.logging import get_logger
from linkpulse.schemas.codec import decode_event
from linkpulse.schemas.events import BaseEvent
from linkpulse.schemas.outputs import DeadLetter, MetricWindow
from linkpulse.store import _rows
from linkpulse.store._sql import (
    DEAD_LETTERS_UNNEST,
    EVENTS_UNNEST,
    MARK_BUCKETS,
    STAGE_JSON_TABLE,
    STAGE_TABLE,
    STAGED_JSON,
    STAGED_ROWS,
    WINDOWS_UPSERT,
    insert_events,
    mark_buckets,
)
from linkpulse.store.capabilities import Tier
from linkpulse.store.partitions import PARTITIONED, ensure_partitions

if TYPE_CHECKING:
    from linkpulse.query.watermarks import WatermarkBumper

__all__ = ["EventWriter"]

log = get_logger(__name__)
_NO_PARTITION = "no partition of relation"
_COPY_STAGE = sql.SQL("COPY lp_stage_events ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.SQL(", ").join(map(sql.Identifier, _rows.EVENT_COLUMNS))
)
_EVENT_TIME = _rows.EVENT_COLUMNS.index("event_time")


def _copy_rows(cp: psycopg.Copy, rows: list[Any]) -> None:
    cp.set_types(list(_rows.EVENT_STAGE_TYPES))
    for r in rows:
        cp.write_row(r)


def _copy_json(cp: psycopg.Copy, payloads: list[Any]) -> None:
    cp.write(_rows.json_copy_text(payloads))


@dataclasses.dataclass(frozen=True)
class _Form:
    """One way of staging an event batch: its COPY, its statements, its days."""

    copy: sql.Composed | str
    write: Callable[[psycopg.Copy, list[Any]], None]
    days: Callable[[list[Any]], set[date]]
    insert: str  # ON CONFLICT DO NOTHING: exact whatever the batch holds
    insert_new: str  # plain: cheaper, fails on a stored key
    mark: str

    @classmethod
    def of(
        cls,
        copy: sql.Composed | str,
        write: Callable[[psycopg.Copy, list[Any]], None],
        days: Callable[[list[Any]], set[date]],
        source: str,
    ) -> _Form:
        new = insert_events(source, on_conflict=False)
        return cls(copy, write, days, insert_events(source), new, mark_buckets(source))


_ROW_FORM = _Form.of(
    _COPY_STAGE, _copy_rows, partial(_rows.event_days, index=_EVENT_TIME), STAGED_ROWS
)
_JSON_FORM = _Form.of(
    "COPY lp_stage_json (j) FROM STDIN", _copy_json, _rows.json_event_days, STAGED_JSON
)


BACKOFF_CAP_S = 2.0


def backoff_s(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): doubling, capped.

    >>> [backoff_s(n) for n in (1, 2, 3, 7)]
    [0.1, 0.2, 0.4, 2.0]
    """
    return min(0.05 * 2.0**attempt, BACKOFF_CAP_S)


def retries_for(outage_s: float) -> int:
    """How many retries ride out a store outage of ``outage_s`` seconds.

    >>> retries_for(0), retries_for(3), retries_for(300)
    (1, 5, 154)
    """
    attempt, waited = 0, 0.0
    while waited < outage_s or attempt == 0:
        attempt += 1
        waited += backoff_s(attempt)
    return attempt


class EventWriter:
    """Writes events, dead letters and metric windows; see the module doc for guarantees."""

    def __init__(
        self,
        dsn: str,
        *,
        batch_size: int = 5000,
        max_retries: int = 5,
        use_copy: bool | None = None,
        watermarks: WatermarkBumper | None = None,
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
        # Touched after each write's commit, for the query cache (fire and forget).
        self.watermarks = watermarks
        self._conns: list[psycopg.Connection | None] = [None, None]
        self._tier: Tier | None = None
        self._copy: bool = False
        # Plain INSERT until a batch meets a stored key, then ON CONFLICT until
        # a batch is all new again (replays come in runs, after a restart).
        self._all_new = True
        self.retries = 0  # connection losses recovered from, for metrics and tests

    # -- public API --------------------------------------------------------------------------

    def write_events(self, events: Sequence[BaseEvent]) -> int:
        """Store ``events``; return how many were new (replays are skipped)."""
        rows = [_rows.event_row(ev) for ev in events]
        inserted = self._write_batches(_ROW_FORM, rows)
        if inserted:  # replays change nothing
            self._touch_events(rows, as_json=False)
        return inserted

    def write_event_json(self, payloads: Sequence[bytes]) -> int:
        """Store events given as their canonical JSON; return how many were new.

        Each payload must be ``encode_event(ev)`` of a validated event (compact,
        defaults omitted): the rows stored are then exactly those
        ``write_events`` stores for the same events. Without COPY on the server
        the payloads are decoded and go through ``write_events``.
        """
        if not self._uses_copy():
            return self.write_events([decode_event(p) for p in payloads])
        inserted = self._write_batches(_JSON_FORM, list(payloads))
        if inserted:
            self._touch_events(payloads, as_json=True)
        return inserted

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
        changed = sum(
            self._write("metric_windows", self._upsert_windows, chunk)
            for chunk in self._chunks(rows)
        )
        if self.watermarks is not None and changed:  # a revision lands in its window's buckets
            self.watermarks.touch_rows(["metric_windows"], rows, tenant=1, at=5, end=6)
        return changed

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
        if self.watermarks is not None:
            self.watermarks.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _touch_events(self, items: Sequence[Any], *, as_json: bool) -> None:
        if self.watermarks is not None:
            realtime = self._tier is Tier.FULL_TIMESCALE  # real-time continuous aggregates
            self.watermarks.events_stored(items, as_json=as_json, realtime=realtime)

    # -- batches and retries -----------------------------------------------------------------

    def _chunks(self, rows: list[Any]) -> list[list[Any]]:
        return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def _write_batches(self, form: _Form, items: list[Any]) -> int:
        chunks = self._chunks(items)
        if len(chunks) > 1 and self._uses_copy():
            return self._write_overlapped(form, chunks)
        return sum(self._write_events(form, chunk) for chunk in chunks)

    def _write_events(self, form: _Form, items: list[Any], side: int = 0) -> int:
        fn = partial(self._insert_events, form)
        return self._write("events", fn, items, side, days=form.days)

    def _write(
        self,
        table: str,
        fn: Callable[[psycopg.Connection, list[Any]], int],
        rows: list[Any],
        side: int = 0,
        days: Callable[[list[Any]], set[date]] | None = None,
    ) -> int:
        attempt, made_partitions = 0, False
        while True:
            try:
                conn = self._connection(side)
                with conn.transaction():
                    return fn(conn, rows)
            except psycopg.errors.UniqueViolation as e:
                if table != "events" or not self._all_new:
                    msg = f"writing {len(rows)} rows to {table} failed: {e}"
                    raise StoreError(msg) from e
                self._all_new = False  # a replayed key: redo the batch with ON CONFLICT
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
                time.sleep(backoff_s(attempt))
            except psycopg.errors.CheckViolation as e:
                if _NO_PARTITION not in str(e) or made_partitions:
                    msg = f"writing {len(rows)} rows to {table} failed: {e}"
                    raise StoreError(msg) from e
                self._drop_connection(side)  # its transaction failed
                self._make_partitions(table, rows, side, days)
                made_partitions = True
            except psycopg.Error as e:
                msg = f"writing {len(rows)} rows to {table} failed: {e}"
                raise StoreError(msg) from e

    def _make_partitions(
        self,
        table: str,
        rows: list[Any],
        side: int,
        days: Callable[[list[Any]], set[date]] | None,
    ) -> None:
        # A late or backfilled row fell outside the partitions made ahead.
        if days is None:
            columns = {
                "dead_letters": _rows.DEAD_LETTER_COLUMNS,
                "metric_windows": _rows.WINDOW_COLUMNS,
            }[table]
            days = partial(_rows.event_days, index=columns.index(PARTITIONED[table]))
        wanted = days(rows)
        conn = self._connection(side)
        with conn.transaction():
            ensure_partitions(conn, table, wanted)

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
            conn.execute(STAGE_JSON_TABLE)
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
                time.sleep(backoff_s(attempt))

    # -- overlapped COPY path ----------------------------------------------------------------

    def _write_overlapped(self, form: _Form, chunks: list[list[Any]]) -> int:
        """COPY batch n+1 on one connection while batch n's INSERT runs on the other.

        The client's work (row conversion, COPY) then hides behind the
        server's INSERT. Each batch is still one transaction; batch n commits
        before batch n+1's INSERT starts, so the two never wait on each other's
        locks. A batch whose COPY or INSERT fails goes through the ordinary
        retrying path on its own connection, which ON CONFLICT makes exact.
        """
        total = 0
        pending: tuple[Future[int], list[Any], int] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lp-writer") as pool:
            for i, chunk in enumerate(chunks):
                side = i % 2
                staged = self._try_stage(form, side, chunk)
                if pending is not None:
                    total += self._collect(form, *pending)
                    pending = None
                if staged:
                    conn = self._connection(side)
                    pending = (pool.submit(self._finish, form, conn, len(chunk)), chunk, side)
                else:
                    total += self._write_events(form, chunk, side)
            if pending is not None:
                total += self._collect(form, *pending)
        return total

    def _try_stage(self, form: _Form, side: int, items: list[Any]) -> bool:
        try:
            conn = self._connection(side)
            conn.execute("BEGIN")
            with conn.cursor().copy(form.copy) as cp:
                form.write(cp, items)
            return True
        except psycopg.Error as e:
            self._lost(side, e)
            return False

    def _finish(self, form: _Form, conn: psycopg.Connection, n: int) -> int:
        return self._insert_staged(form, conn.cursor(), n, commit=True)

    def _collect(self, form: _Form, fut: Future[int], items: list[Any], side: int) -> int:
        try:
            return fut.result()
        except psycopg.Error as e:
            if isinstance(e, psycopg.errors.UniqueViolation):
                self._all_new = False  # redone below with ON CONFLICT
            self._lost(side, e)
            return self._write_events(form, items, side)

    def _lost(self, side: int, e: psycopg.Error) -> None:
        if isinstance(e, psycopg.OperationalError):
            self.retries += 1
            log.warning("store_write_retry", table="events", error=str(e))
        self._drop_connection(side)

    # -- the statements ----------------------------------------------------------------------

    def _track_dirty(self) -> bool:
        # Continuous aggregates track their own invalidations.
        return self._tier is not Tier.FULL_TIMESCALE

    def _insert_events(self, form: _Form, conn: psycopg.Connection, items: list[Any]) -> int:
        if self._copy:
            cur = conn.cursor()
            with cur.copy(form.copy) as cp:
                form.write(cp, items)
            return self._insert_staged(form, cur, len(items))
        # No COPY: only rows come here (write_event_json decodes its payloads).
        cols = [list(c) for c in zip(*items, strict=True)]
        inserted = conn.execute(EVENTS_UNNEST, cols).rowcount
        if self._track_dirty():
            tenants, minutes = _rows.minute_buckets(items)
            conn.execute(MARK_BUCKETS, (tenants, minutes))
        return inserted

    def _insert_staged(
        self, form: _Form, cur: psycopg.Cursor[Any], n: int, *, commit: bool = False
    ) -> int:
        """Insert the staged batch of ``n`` events and mark its buckets (in its transaction).

        The statements go in one round trip: each one is a wait for the
        server and then for the GIL, which the dataflow's threads contend for.
        """
        all_new = self._all_new
        statements = [form.insert_new if all_new else form.insert]
        if self._track_dirty():
            statements.append(form.mark)
        if commit:
            statements.append("COMMIT")
        inserted = cur.execute(";\n".join(statements)).rowcount  # the first statement's
        if not all_new and inserted == n:
            self._all_new = True  # a batch of only new events: back to the plain insert
        return inserted

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
