"""Export jobs in PostgreSQL (``export_jobs``, migration 0010): create, claim, progress, end.

Every change is one statement on the owner's pool, so several API processes
can share the table: a queued job is claimed by one of them (``FOR UPDATE SKIP
LOCKED``), a running one refreshes ``heartbeat_at`` with its progress, and a
job whose heartbeat went stale (its process stopped) is marked failed.

>>> EXTENSIONS["parquet"]
'parquet'
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import psycopg_pool
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

__all__ = ["EXTENSIONS", "STALE_AFTER_S", "Job", "JobStore", "new_job_id"]

EXTENSIONS = {"csv": "csv", "json": "json", "jsonl": "jsonl", "parquet": "parquet"}
STALE_AFTER_S = 30  # a running job's heartbeat is refreshed at least every ~2 s
_INTERRUPTED = (
    "the API process running this export stopped before it finished; an export is one "
    "snapshot, so it is not resumed: POST /v1/exports again"
)


def new_job_id() -> str:
    """A fresh, unguessable job id (``ex_`` and 20 hex digits).

    >>> len(new_job_id()), new_job_id().startswith("ex_")
    (23, True)
    """
    return "ex_" + secrets.token_hex(10)


@dataclass(frozen=True)
class Job:
    """One row of ``export_jobs``."""

    id: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    expires_at: datetime | None
    principal: str
    role: str
    tenant: str
    seller: str | None
    format: str
    source: dict[str, Any]
    watermark: dict[str, str]
    state: str
    rows_written: int
    bytes_written: int
    estimated_rows: int | None
    file: str | None
    error: str

    @property
    def finished(self) -> bool:
        """Whether the job will change no more (done, failed or expired)."""
        return self.state in {"done", "failed", "expired"}


_COLS = ", ".join(Job.__dataclass_fields__)


class JobStore:
    """The ``export_jobs`` table, through the owner's async pool."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool) -> None:
        self._pool = pool

    async def _one(self, query: str, params: dict[str, Any]) -> Job | None:
        async with self._pool.connection(timeout=5) as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(query, params)
            row = await cur.fetchone()
        return Job(**row) if row else None

    async def _all(self, query: str, params: dict[str, Any]) -> list[Job]:
        async with self._pool.connection(timeout=5) as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(query, params)
            return [Job(**r) for r in await cur.fetchall()]

    async def create(
        self,
        *,
        job_id: str,
        principal: str,
        role: str,
        tenant: str,
        seller: str | None,
        fmt: str,
        source: dict[str, Any],
        watermark: dict[str, str],
        estimated_rows: int | None,
    ) -> Job:
        """Queue a job; return it."""
        job = await self._one(
            f"INSERT INTO export_jobs (id, principal, role, tenant, seller, format, source, "
            f"watermark, estimated_rows) VALUES (%(id)s, %(principal)s, %(role)s, %(tenant)s, "
            f"%(seller)s, %(format)s, %(source)s, %(watermark)s, %(estimated)s) RETURNING {_COLS}",
            {
                "id": job_id,
                "principal": principal,
                "role": role,
                "tenant": tenant,
                "seller": seller,
                "format": fmt,
                "source": Jsonb(source),
                "watermark": Jsonb(watermark),
                "estimated": estimated_rows,
            },
        )
        assert job is not None  # INSERT ... RETURNING returns the row
        return job

    async def get(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None."""
        return await self._one(f"SELECT {_COLS} FROM export_jobs WHERE id = %(id)s", {"id": job_id})

    async def claim(self) -> Job | None:
        """Take the oldest queued job for this process (None when there is none)."""
        return await self._one(
            f"UPDATE export_jobs SET state = 'running', started_at = now(), heartbeat_at = now() "
            f"WHERE id = (SELECT id FROM export_jobs WHERE state = 'queued' ORDER BY created_at "
            f"LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {_COLS}",
            {},
        )

    async def progress(self, job_id: str, *, rows: int, nbytes: int) -> None:
        """Record progress (and that the job is alive)."""
        async with self._pool.connection(timeout=5) as conn:
            await conn.execute(
                "UPDATE export_jobs SET rows_written = %s, bytes_written = %s, "
                "heartbeat_at = now() WHERE id = %s AND state = 'running'",
                (rows, nbytes, job_id),
            )

    async def finish(
        self, job_id: str, *, rows: int, nbytes: int, file: str, keep_s: float
    ) -> None:
        """Mark the job done: its file is kept (and its link valid) for ``keep_s``."""
        async with self._pool.connection(timeout=5) as conn:
            await conn.execute(
                "UPDATE export_jobs SET state = 'done', rows_written = %s, bytes_written = %s, "
                "file = %s, finished_at = now(), heartbeat_at = now(), "
                "expires_at = now() + make_interval(secs => %s) WHERE id = %s",
                (rows, nbytes, file, keep_s, job_id),
            )

    async def fail(self, job_id: str, error: str) -> None:
        """Mark the job failed with ``error`` (what went wrong and what to do)."""
        async with self._pool.connection(timeout=5) as conn:
            await conn.execute(
                "UPDATE export_jobs SET state = 'failed', error = %s, finished_at = now() "
                "WHERE id = %s AND state IN ('queued', 'running')",
                (error[:2000], job_id),
            )

    async def fail_stale(self, *, stale_after_s: float = STALE_AFTER_S) -> list[str]:
        """Mark failed the running jobs whose process stopped; return their ids."""
        jobs = await self._all(
            f"UPDATE export_jobs SET state = 'failed', error = %(error)s, finished_at = now() "
            f"WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => %(s)s) "
            f"RETURNING {_COLS}",
            {"error": _INTERRUPTED, "s": stale_after_s},
        )
        return [j.id for j in jobs]

    async def due_to_expire(self) -> list[Job]:
        """Done jobs whose file and link are past their time."""
        return await self._all(
            f"SELECT {_COLS} FROM export_jobs WHERE state = 'done' AND expires_at <= now()", {}
        )

    async def mark_expired(self, job_id: str) -> None:
        """The job's file was removed: its link answers 410 from now on."""
        async with self._pool.connection(timeout=5) as conn:
            await conn.execute(
                "UPDATE export_jobs SET state = 'expired' WHERE id = %s AND state = 'done'",
                (job_id,),
            )


def is_missing_table(e: psycopg.Error) -> bool:
    """Whether ``e`` says the store was not migrated to 0010 yet."""
    return isinstance(e, psycopg.errors.UndefinedTable)
