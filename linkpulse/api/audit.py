"""The audit log: who read what, which keys were made or revoked, what was refused.

``AuditLog.record`` only appends to an in-memory buffer (never waits on the
database, so it is safe on any request path); a background task writes the
buffer to ``audit_log`` in batches every ``LINKPULSE_AUDIT_FLUSH_S``, and
``stop()`` writes what is left, so a clean shutdown loses nothing. If the
database is down the rows wait (up to ``max_pending``; beyond that new rows are
dropped and counted in ``dropped``, because memory must stay bounded).

>>> e = AuditEntry.of(None, "stream.metrics", outcome="refused", status=401)
>>> e.principal, e.outcome
('anonymous', 'refused')
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb

from linkpulse.aio import cancel_and_wait
from linkpulse.api.auth.roles import Principal
from linkpulse.logging import get_logger

__all__ = ["AuditEntry", "AuditLog", "insert_entries"]

log = get_logger(__name__)
_WARN_EVERY_S = 60.0

_INSERT = (
    "INSERT INTO audit_log (at, principal, role, tenant, seller, action, resource, scope,"
    " outcome, status, items, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


@dataclass
class AuditEntry:
    """One audit row; ``items`` is rows or events sent (a stream updates it as it goes)."""

    at: datetime
    principal: str
    role: str | None
    tenant: str | None
    seller: str | None
    action: str
    resource: str = ""
    scope: dict[str, Any] = field(default_factory=dict)
    outcome: str = "ok"
    status: int | None = None
    items: int = 0
    detail: str = ""

    @classmethod
    def of(cls, principal: Principal | None, action: str, **kw: Any) -> AuditEntry:
        """An entry for ``principal`` (None: the caller could not be identified)."""
        return cls(
            at=datetime.now(UTC),
            principal=principal.id if principal else "anonymous",
            role=principal.role.value if principal else None,
            tenant=principal.tenant if principal else None,
            seller=principal.seller if principal else None,
            action=action,
            **kw,
        )

    def row(self) -> tuple[Any, ...]:
        """The values of ``_INSERT``, in order."""
        return (
            self.at,
            self.principal,
            self.role,
            self.tenant,
            self.seller,
            self.action,
            self.resource,
            Jsonb(self.scope),
            self.outcome,
            self.status,
            self.items,
            self.detail[:2000],
        )


async def insert_entries(conn: psycopg.AsyncConnection, entries: list[AuditEntry]) -> None:
    """Write entries in one round of pipelined INSERTs (the CLI uses this directly)."""
    async with conn.cursor() as cur:
        await cur.executemany(_INSERT, [e.row() for e in entries])


class AuditLog:
    """Buffered, batched writer of audit entries."""

    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool | None,
        *,
        flush_s: float = 1.0,
        batch: int = 1000,
        max_pending: int = 100_000,
    ) -> None:
        self._pool = pool
        self._flush_s = flush_s
        self._batch = batch
        self._pending: deque[AuditEntry] = deque()
        self._max_pending = max_pending
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._warned_at = -_WARN_EVERY_S
        self.written = 0
        self.dropped = 0

    def record(self, entry: AuditEntry) -> None:
        """Queue an entry for the next batch (never blocks)."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("audit entries dropped: the database is not keeping up", n=self.dropped)
            return
        self._pending.append(entry)

    @property
    def pending(self) -> int:
        """Entries not yet written."""
        return len(self._pending)

    def start(self) -> None:
        """Start the background flusher."""
        self._task = asyncio.create_task(self._run(), name="audit-flusher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as e:
                now = time.monotonic()
                if now - self._warned_at > _WARN_EVERY_S:  # once a minute, not every second
                    self._warned_at = now
                    hint = (
                        " (run `linkpulse db migrate`)"
                        if isinstance(e, psycopg.errors.UndefinedTable)
                        else ""
                    )
                    log.warning(
                        f"audit batch not written yet; will retry{hint}",
                        error=repr(e),
                        pending=self.pending,
                    )

    async def flush(self) -> int:
        """Write every pending entry now; return how many were written."""
        if self._pool is None:
            return 0
        async with self._lock:
            total = 0
            while self._pending:
                batch = [self._pending[i] for i in range(min(self._batch, len(self._pending)))]
                async with self._pool.connection(timeout=5) as conn:
                    await insert_entries(conn, batch)
                for _ in batch:  # removed only once written: a failure keeps them
                    self._pending.popleft()
                total += len(batch)
                self.written += len(batch)
            return total

    async def stop(self) -> None:
        """Stop the flusher and write what is left (clean shutdown loses nothing)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        try:
            await self.flush()
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as e:
            log.error("audit entries lost at shutdown", n=self.pending, error=repr(e))
