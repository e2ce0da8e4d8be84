"""``linkpulse run notifier``: alert changes in from JetStream, notifications out, nothing lost.

Three kinds of task share one dispatcher (``linkpulse.alerts.policy``):

* the **consumer** pulls alert changes from a durable JetStream consumer on the
  alerts stream, feeds them to the dispatcher, queues the PagerDuty mirror of
  each acknowledgement, saves the dispatcher state in PostgreSQL, commits, and
  only then acks the messages (a crash before the commit redelivers them; a
  crash after it redelivers changes the dispatcher already holds, which it
  takes again without effect);
* the **dispatcher** wakes when a group is due, asks which notifications are
  due (silences read from PostgreSQL, inhibition and mute intervals applied by
  the policy), and queues them in the outbox (table ``notifications``) in the
  same transaction as the state that says they were sent, so a notification
  is queued exactly once;
* one **worker per receiver** sends its queue in order (a trigger before its
  resolve), retrying with backoff and jitter; a receiver that is slow or down
  holds up only its own queue. A notification that failed for good, or for
  longer than ``delivery.max_age_s``, is marked ``dead`` and published on the
  dead-letter subject ``<prefix>.deadletters.notifier``.

A notifier killed mid-delivery finds the row still pending when it restarts and
sends it again with the same ``Idempotency-Key`` (and PagerDuty ``dedup_key``s).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import nats.errors
import nats.js.errors
import psycopg
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from linkpulse.aio import cancel_and_wait
from linkpulse.alerts.delivery.base import ContactPoint, DeliveryError, Outgoing
from linkpulse.alerts.delivery.config import NotifierConfig
from linkpulse.alerts.policy import Dispatcher, Notification
from linkpulse.alerts.types import AlertChange, AlertState
from linkpulse.bus.connection import connect_nats
from linkpulse.bus.live import ensure_live_streams
from linkpulse.bus.stream import ensure_streams
from linkpulse.bus.subjects import dead_letter_subject
from linkpulse.config import Settings
from linkpulse.logging import get_logger
from linkpulse.notifier import store
from linkpulse.schemas.outputs import DeadLetter

__all__ = ["Notifier", "ack_item"]

log = get_logger(__name__)
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def ack_item(receiver: str, route_id: str, group_key: str, change: AlertChange) -> Outgoing:
    """The mirror of an acknowledgement for ``receiver`` (its key is fixed by the alert)."""
    key = hashlib.sha256(f"ack|{receiver}|{change.alert_id}".encode()).hexdigest()[:32]
    n = Notification(
        receiver=receiver,
        route_id=route_id,
        group_key=group_key,
        group_labels={},
        firing=[change],
        resolved=[],
        at=change.at,
        idempotency_key=key,
    )
    return Outgoing(key=key, receiver=receiver, kind="ack", notification=n, created_at=change.at)


def notify_item(n: Notification) -> Outgoing:
    """A due notification as an outbox item; a repeat of the same content gets its own key."""
    key = hashlib.sha256(f"{n.idempotency_key}|{n.at.isoformat()}".encode()).hexdigest()[:32]
    return Outgoing(key=key, receiver=n.receiver, kind="notify", notification=n, created_at=n.at)


def _after_held(d: Dispatcher, c: AlertChange) -> AlertChange:
    """A resolve placed after what the dispatcher holds of its incident.

    An acknowledgement from the API is stamped with the wall clock, the flow's
    changes with stream time; when the stream runs behind (a replay, a lagging
    flow) the flow's resolve would look older than the ack and be dropped, and
    the incident would never resolve. A resolve ends its incident whatever
    its stamp says.
    """
    if c.state is not AlertState.RESOLVED:
        return c
    held = [g.alerts[c.alert_id].at for g in d.state.groups.values() if c.alert_id in g.alerts]
    if not held or max(held) < c.at:
        return c
    return msgspec.structs.replace(c, at=max(held) + timedelta(microseconds=1))


class Notifier:
    """The service; ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        config: NotifierConfig,
        *,
        name: str = "notifier",
        clock: Clock = _utcnow,
        seed: int | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.config = config
        self.name = name
        self.clock = clock
        self.poll_s = poll_s
        self._rng = random.Random(seed)
        self._lock = asyncio.Lock()  # the dispatcher and its saved state change together
        self._wake_dispatch = asyncio.Event()
        self._wake: dict[str, asyncio.Event] = {r: asyncio.Event() for r in config.contact_points}
        self._dispatcher: Dispatcher | None = None
        self._nc: Client | None = None
        self.delivered = 0  # counters for logs and tests
        self.dead = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Restore the state, then consume, dispatch and deliver until ``stop``."""
        s = self.settings
        async with await psycopg.AsyncConnection.connect(s.database_url) as conn:
            state = await store.load_state(conn, self.name)
            orphans = await store.orphan_pending(
                conn, self.name, sorted(self.config.contact_points), datetime.now(UTC)
            )
            await conn.commit()
        for key in orphans:
            log.error("notification dead: its receiver is no longer configured", key=key)
        self._dispatcher = Dispatcher(self.config.policy, state)
        self._nc = await connect_nats(s, name=f"linkpulse-{self.name}")
        try:
            js = self._nc.jetstream()
            await ensure_streams(js, s)
            streams = await ensure_live_streams(js, s)
            sub = await js.pull_subscribe(
                f"{s.subject_prefix}.alerts.>",
                durable=f"linkpulse-{self.name}",
                stream=streams["alerts"],
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=30,
                    max_ack_pending=1000,
                ),
            )
            tasks = [
                asyncio.create_task(self._consume(sub, stop), name="notifier-consume"),
                asyncio.create_task(self._dispatch(stop), name="notifier-dispatch"),
                *(
                    asyncio.create_task(self._worker(cp, js, stop), name=f"notifier-{r}")
                    for r, cp in self.config.contact_points.items()
                ),
            ]
            log.info("notifier running", name=self.name, receivers=sorted(self._wake))
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                failure = None if t is stopping or t.cancelled() else t.exception()
                if failure is not None:
                    # a task died of something unforeseen: stop whole (a restart resumes
                    # from the saved state and the outbox) rather than run half a notifier
                    log.error("notifier task failed", task=t.get_name(), error=repr(failure))
            await cancel_and_wait(stopping, *tasks)  # raises the failure logged above
        finally:
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._nc.close()

    # -- consumer -----------------------------------------------------------------------

    async def _consume(self, sub: Any, stop: asyncio.Event) -> None:
        conn = await self._connect()
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(100, timeout=self.poll_s)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except nats.errors.Error as e:
                    log.warning("alert consumer: fetch failed, retrying", error=repr(e))
                    await asyncio.sleep(self.poll_s)
                    continue
                changes = []
                for m in msgs:
                    try:
                        changes.append(msgspec.json.decode(m.data, type=AlertChange))
                    except msgspec.DecodeError as e:
                        # a bad record never stops the notifier: say so, and drop it for good
                        log.error(
                            "alert consumer: undecodable change",
                            subject=m.subject,
                            error=str(e),
                            payload=m.data[:200],
                        )
                while True:
                    try:
                        await self._take(conn, changes)
                        break
                    except psycopg.OperationalError as e:
                        log.warning("alert consumer: store unreachable, retrying", error=str(e))
                        await asyncio.sleep(self.poll_s)
                        conn = await self._connect()
                for m in msgs:  # only now: the state that holds them is durable
                    await m.ack()
                self._wake_dispatch.set()
        finally:
            await conn.close()

    async def _take(self, conn: psycopg.AsyncConnection[Any], changes: list[AlertChange]) -> None:
        d = self._dispatcher
        assert d is not None
        async with self._lock:
            now = self.clock()
            acks = []
            for c in changes:
                d.ingest(_after_held(d, c), now)
                if c.state is AlertState.ACKNOWLEDGED:
                    acks.extend(self._ack_mirrors(d, c))
            try:
                await store.queue(conn, self.name, acks)
                await store.save_state(conn, self.name, d.state)
                await conn.commit()
            except BaseException:
                await conn.rollback()
                # the in-memory state ran ahead of the store: take the saved one back
                saved = await store.load_state(conn, self.name)
                await conn.rollback()
                self._dispatcher = Dispatcher(self.config.policy, saved)
                raise
        for a in acks:
            self._wake[a.receiver].set()

    def _ack_mirrors(self, d: Dispatcher, c: AlertChange) -> list[Outgoing]:
        """PagerDuty-like receivers told this alert fired get an ``acknowledge``."""
        out = []
        for route in self.config.policy.routes_for(c.labels):
            cp = self.config.contact_points.get(route.receiver)
            if cp is None or not cp.takes_acks:
                continue
            gkey = route.group_key(c.labels)
            entry = d.state.log.get(f"{route.receiver}|{gkey}")
            if entry is not None and c.alert_id in entry.firing:
                out.append(ack_item(route.receiver, route.id, gkey, c))
        return out

    # -- dispatcher ---------------------------------------------------------------------

    async def _dispatch(self, stop: asyncio.Event) -> None:
        conn = await self._connect()
        try:
            while not stop.is_set():
                d = self._dispatcher
                assert d is not None
                due = d.next_due()
                wait = self.poll_s
                if due is not None:
                    wait = min(wait, max(0.0, (due - self.clock()).total_seconds()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_dispatch.wait(), timeout=wait)
                self._wake_dispatch.clear()
                try:
                    await self._flush(conn)
                except psycopg.OperationalError as e:
                    log.warning("dispatcher: store unreachable, retrying", error=str(e))
                    await asyncio.sleep(self.poll_s)
                    conn = await self._connect()
        finally:
            await conn.close()

    async def _flush(self, conn: psycopg.AsyncConnection[Any]) -> None:
        d = self._dispatcher
        assert d is not None
        now = self.clock()
        due_at = d.next_due()
        if due_at is None or due_at > now:
            return
        rows = await store.list_silences(conn, active_at=now)
        await conn.commit()
        silences = [store.silence_of(r) for r in rows]
        async with self._lock:
            before = msgspec.json.encode(d.state)
            notes = d.due(now, silences)
            items = [notify_item(n) for n in notes]
            for n in notes:
                d.delivered(n)  # queued durably below = told: the outbox sends it
            if not items:
                # only group timers moved: not worth a write (restored, a group is just
                # looked at once more, and the dedup log keeps it from re-sending)
                return
            try:
                await store.queue(conn, self.name, items)
                await store.save_state(conn, self.name, d.state)
                await conn.commit()
            except BaseException:
                await conn.rollback()
                d.state = msgspec.json.decode(before, type=type(d.state))
                raise
        for it in items:
            log.info(
                "notification queued",
                receiver=it.receiver,
                key=it.key,
                firing=len(it.notification.firing),
                resolved=len(it.notification.resolved),
            )
            self._wake[it.receiver].set()

    # -- delivery -----------------------------------------------------------------------

    async def _worker(self, cp: ContactPoint, js: JetStreamContext, stop: asyncio.Event) -> None:
        wake = self._wake[cp.name]
        timeout = httpx.Timeout(self.config.retry.timeout_s)
        # autocommit: each outcome is one statement, durable when it returns
        conn = await self._connect(autocommit=True)
        async with httpx.AsyncClient(timeout=timeout) as client:
            try:
                while not stop.is_set():
                    try:
                        wait = await self._send_queue(conn, cp, client, js)
                    except psycopg.OperationalError as e:
                        # an outcome not recorded leaves its row pending: it is sent again
                        # with the same key (at least once, deduped by the receiver)
                        log.warning("delivery: store unreachable", receiver=cp.name, error=str(e))
                        await asyncio.sleep(self.poll_s)
                        conn = await self._connect(autocommit=True)
                        continue
                    if wait > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(wake.wait(), timeout=min(self.poll_s, wait))
                        wake.clear()
            finally:
                await conn.close()

    async def _send_queue(
        self,
        conn: psycopg.AsyncConnection[Any],
        cp: ContactPoint,
        client: httpx.AsyncClient,
        js: JetStreamContext,
    ) -> float:
        """Send the receiver's due notifications in order; seconds until the next is due."""
        rows = await store.pending(conn, self.name, cp.name, limit=100)
        if not rows:
            return self.poll_s
        for row in rows:
            wait = (row.next_attempt_at - self.clock()).total_seconds()
            if wait > 0:
                return wait
            if not await self._attempt(conn, cp, client, js, row):
                return 0.0  # re-read: its retry time is set, the ones behind it wait
        return 0.0

    async def _attempt(
        self,
        conn: psycopg.AsyncConnection[Any],
        cp: ContactPoint,
        client: httpx.AsyncClient,
        js: JetStreamContext,
        row: store.PendingRow,
    ) -> bool:
        item = row.item
        try:
            await asyncio.wait_for(cp.deliver(item, client), timeout=self.config.retry.timeout_s)
        except DeliveryError as e:
            await self._failed(conn, js, row, str(e), e.retryable, e.status)
            return False
        except TimeoutError:
            await self._failed(conn, js, row, f"{cp.name}: no answer in time", True, None)
            return False
        except Exception as e:  # a contact point's own bug must not stop its queue for good
            log.exception("delivery: unexpected error", receiver=cp.name, key=item.key)
            await self._failed(conn, js, row, f"{cp.name}: {type(e).__name__}: {e}", True, None)
            return False
        now = self.clock()
        await store.mark_attempt(conn, item.key, status="delivered", now=now)
        await conn.commit()
        self.delivered += 1
        log.info(
            "notification delivered",
            receiver=cp.name,
            key=item.key,
            kind=item.kind,
            attempts=row.attempts + 1,
        )
        return True

    async def _failed(
        self,
        conn: psycopg.AsyncConnection[Any],
        js: JetStreamContext,
        row: store.PendingRow,
        error: str,
        retryable: bool,
        status: int | None,
    ) -> None:
        item, now = row.item, self.clock()
        attempts = row.attempts + 1
        too_old = now - item.created_at >= timedelta(seconds=self.config.retry.max_age_s)
        if retryable and not too_old:
            delay = self.config.retry.delay(attempts, self._rng)
            await store.mark_attempt(
                conn,
                item.key,
                status="pending",
                now=now,
                next_attempt_at=now + timedelta(seconds=delay),
                last_status=status,
                error=error,
            )
            await conn.commit()
            log.warning(
                "delivery failed, will retry",
                receiver=item.receiver,
                key=item.key,
                attempts=attempts,
                retry_in_s=round(delay, 2),
                error=error,
            )
            return
        why = error if not retryable else f"still failing after {attempts} attempts: {error}"
        letter = DeadLetter(
            payload=msgspec.json.encode(item).decode(),
            field=f"receivers.{item.receiver}",
            problem=why,
            source="notifier",
            received_at=now,
        )
        subject = dead_letter_subject(self.settings.subject_prefix, "notifier")
        try:
            headers = {"Nats-Msg-Id": f"notifier/{item.key}"}
            await js.publish(subject, msgspec.json.encode(letter), headers=headers)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as e:
            # the row below still says dead, with why: visible in GET /v1/notifications
            log.error("dead letter not published", key=item.key, error=repr(e))
        await store.mark_attempt(
            conn, item.key, status="dead", now=now, last_status=status, error=why
        )
        await conn.commit()
        self.dead += 1
        log.error("notification dead-lettered", receiver=item.receiver, key=item.key, error=why)

    async def _connect(self, *, autocommit: bool = False) -> psycopg.AsyncConnection[Any]:
        while True:
            try:
                return await psycopg.AsyncConnection.connect(
                    self.settings.database_url, connect_timeout=5, autocommit=autocommit
                )
            except psycopg.OperationalError as e:
                log.warning("notifier: store unreachable, retrying", error=str(e))
                await asyncio.sleep(self.poll_s)
