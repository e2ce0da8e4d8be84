"""The API's export runner: claims queued jobs, streams them to files, sweeps old ones.

One ``ExportWorker`` per API process, started in the exports router's
lifespan. Every ``poll_s`` (or at once when a job is queued here) it claims
queued jobs up to ``LINKPULSE_EXPORT_MAX_RUNNING``; each runs in an analyst
session scoped as the job's principal, writes ``<export_dir>/<id>.<ext>.part``,
and renames it when complete, so a file under its final name is always whole.
A sweep marks failed the jobs whose API process stopped (stale heartbeat) and
removes files past their expiry.

After a restart: queued jobs run; jobs that were running are marked failed
(``STALE_AFTER_S`` after their last heartbeat), with an error saying to POST
again. An export is the snapshot of one transaction: resuming it in another
transaction could mix two states of the data, so it is not resumed.

>>> part_path(Path("/x"), "ex_1", "csv")
PosixPath('/x/ex_1.csv.part')
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg_pool

from linkpulse.aio import cancel_and_wait
from linkpulse.config import Settings
from linkpulse.exports.jobs import EXTENSIONS, Job, JobStore
from linkpulse.exports.run import ExportInputError, ExportResult, Progress, stream_export
from linkpulse.logging import get_logger

__all__ = ["ExportWorker", "file_path", "part_path"]

if TYPE_CHECKING:  # the API package imports this module (routes/exports.py)
    from linkpulse.api.analyst_db import AnalystDb
    from linkpulse.api.audit import AuditLog

log = get_logger(__name__)
HEARTBEAT_S = 1.0  # progress is written at most this often (and the job kept alive)
SESSION_TTL_S = 24 * 3600  # the scope token only has to outlive the cursor's first fetch


def file_path(directory: Path, job_id: str, fmt: str) -> Path:
    """Where a finished export's file lives."""
    return directory / f"{job_id}.{EXTENSIONS[fmt]}"


def part_path(directory: Path, job_id: str, fmt: str) -> Path:
    """Where a running export writes (renamed to ``file_path`` when complete)."""
    return directory / f"{job_id}.{EXTENSIONS[fmt]}.part"


class ExportWorker:
    """Runs this process's share of the export jobs."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        analyst_db: AnalystDb,
        audit: AuditLog,
        *,
        poll_s: float = 1.0,
    ) -> None:
        self._settings = settings
        self._store = store
        self._db = analyst_db
        self._audit = audit
        self._poll_s = poll_s
        self._dir = settings.export_dir
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the claim-and-sweep loop (a store not migrated yet is retried there)."""
        self._loop = asyncio.create_task(self._run(), name="export-worker")

    def wake(self) -> None:
        """A job was queued: look for it now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; jobs still running are marked failed (they will not resume)."""
        await cancel_and_wait(self._loop)
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._sweep()
                while len(self._running) < self._settings.export_max_running:
                    job = await self._store.claim()
                    if job is None:
                        break
                    self._running[job.id] = asyncio.create_task(
                        self._execute(job), name=f"export-{job.id}"
                    )
            except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as e:
                log.warning("export jobs not reachable; retrying", error=repr(e))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)

    async def _sweep(self) -> None:
        for job_id in await self._store.fail_stale():
            log.warning("export job interrupted by a stopped API; marked failed", job=job_id)
        for job in await self._store.due_to_expire():
            if job.file:
                with contextlib.suppress(FileNotFoundError):
                    (self._dir / job.file).unlink()
            await self._store.mark_expired(job.id)

    async def _execute(self, job: Job) -> None:
        try:
            await self._export(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._store.fail(job.id, "the API stopped during the export: POST it again")
                )
            raise
        except ExportInputError as e:
            await self._failed(job, f"{e.field}: {e.detail}")
        except Exception as e:  # the job fails with the reason; the worker goes on
            log.error("export job failed", job=job.id, error=repr(e))
            await self._failed(job, f"the export failed: {type(e).__name__}: {e}")
        finally:
            self._running.pop(job.id, None)

    async def _failed(self, job: Job, error: str) -> None:
        with contextlib.suppress(psycopg.Error, psycopg_pool.PoolTimeout):
            await self._store.fail(job.id, error)
        self._record(job, outcome="error", rows=0, detail=error)

    async def _export(self, job: Job) -> None:
        # a JSON query was compiled to SQL when it was queued: the job runs that
        statement, params = str(job.source["sql"]), job.source.get("params")
        self._dir.mkdir(parents=True, exist_ok=True)
        part = part_path(self._dir, job.id, job.format)
        last = 0.0

        async def progress(rows: int, nbytes: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= HEARTBEAT_S:
                last = now
                await self._store.progress(job.id, rows=rows, nbytes=nbytes)

        try:
            result = await self._write(job, statement, params, part, progress)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        final = file_path(self._dir, job.id, job.format)
        part.replace(final)
        await self._store.finish(
            job.id,
            rows=result.rows,
            nbytes=result.bytes,
            file=final.name,
            keep_s=self._settings.export_link_ttl_s,
        )
        self._record(job, outcome="ok", rows=result.rows, detail=f"{result.bytes} bytes")
        log.info("export done", job=job.id, rows=result.rows, bytes=result.bytes)

    async def _write(
        self, job: Job, statement: str, params: Any, part: Path, progress: Progress
    ) -> ExportResult:
        with part.open("wb") as out:

            async def sink(chunk: bytes) -> None:
                await asyncio.to_thread(out.write, chunk)

            async with self._db.session(
                tenant=job.tenant, seller=job.seller, ttl_s=SESSION_TTL_S
            ) as conn:
                return await stream_export(
                    conn,
                    statement,
                    params,
                    fmt=job.format,
                    watermark=job.watermark,
                    sink=sink,
                    progress=progress,
                )

    def _record(self, job: Job, *, outcome: str, rows: int, detail: str) -> None:
        from linkpulse.api.audit import AuditEntry

        self._audit.record(
            AuditEntry(
                at=datetime.now(UTC),
                principal=job.principal,
                role=job.role,
                tenant=job.tenant,
                seller=job.seller,
                action="export.run",
                resource=f"export {job.id}",
                scope={"format": job.format, "tenant": job.tenant, "seller": job.seller or ""},
                outcome=outcome,
                items=rows,
                detail=detail,
            )
        )
