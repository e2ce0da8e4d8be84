"""The ingest request, step by step, as plain functions (no routing, no NATS).

``POST /v1/events`` is: check the media type, read the body up to a limit,
split it into items, validate each item, publish, report per item. Every step
but publishing is here, so each can be reasoned about (and doctested) alone.

>>> checked = check_items([b'{"type": "page_view"}', b'nope'], now=None)
>>> [(r.index, r.field) for r in checked.rejected]
[(0, 'event_id'), (1, '$')]
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Literal, TypeVar

import msgspec
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from linkpulse.api.problems import ProblemError
from linkpulse.bus import PublishResult
from linkpulse.errors import SchemaValidationError
from linkpulse.schemas import BaseEvent, decode_event, split_batch
from linkpulse.schemas.jsonarray import TooManyItemsError

__all__ = [
    "BatchReport",
    "Checked",
    "EventResult",
    "IngestResponse",
    "ItemResult",
    "Rejection",
    "build_response",
    "check_items",
    "encode_report",
    "media_type",
    "read_limited",
    "set_aside_unsendable",
    "split_items",
]

M = TypeVar("M")

NDJSON = "application/x-ndjson"
# Accepted request media types, and the name split_batch knows them by.
MEDIA_TYPES = {
    "application/json": "application/json",
    NDJSON: NDJSON,
    "application/ndjson": NDJSON,
    "application/jsonl": NDJSON,
}


class EventResult(BaseModel):
    """What happened to one item of the batch (the schema; bodies are ``ItemResult``)."""

    index: int = Field(
        description="position of the item in the batch (0-based, blank lines skipped)"
    )
    event_id: str | None = Field(description="the item's event_id, if it had a readable one")
    status: Literal["accepted", "duplicate", "rejected"] = Field(
        description="accepted: stored now; duplicate: this event_id was already stored; "
        "rejected: invalid, sent to the dead letters"
    )
    field: str | None = Field(default=None, description="for rejected items: the field at fault")
    problem: str | None = Field(
        default=None, description="for rejected items: what is wrong with it"
    )
    stream_seq: int | None = Field(
        default=None, description="JetStream sequence of the stored event"
    )


class IngestResponse(BaseModel):
    """Counts and per-item results of one ingest request (the schema; bodies are
    ``BatchReport``)."""

    accepted: int
    duplicate: int
    rejected: int
    results: list[EventResult]


class ItemResult(msgspec.Struct):
    """``EventResult`` as it is encoded (msgspec: 500 of them per request cost pydantic
    more than validating the events did); ``unconfirmed`` only in a 503's report."""

    index: int
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected", "unconfirmed"]
    field: str | None = None
    problem: str | None = None
    stream_seq: int | None = None


class BatchReport(msgspec.Struct, omit_defaults=True):
    """``IngestResponse`` as it is encoded; ``unconfirmed`` (left out when 0) counts the
    events a 503 could not confirm stored."""

    accepted: int
    duplicate: int
    rejected: int
    results: list[ItemResult]
    unconfirmed: int = 0


_report_encoder = msgspec.json.Encoder()


def encode_report(report: BatchReport) -> bytes:
    """The report as the response body (the same JSON ``IngestResponse`` documents).

    >>> encode_report(BatchReport(1, 0, 0, [ItemResult(0, "e1", "accepted", stream_seq=7)]))
    b'{"accepted":1,"duplicate":0,"rejected":0,"results":[{"index":0,"event_id":"e1","status":"accepted","field":null,"problem":null,"stream_seq":7}]}'
    """
    return _report_encoder.encode(report)


class Rejection(msgspec.Struct, frozen=True):
    """One item that failed validation, with what we could read of it."""

    index: int
    raw: bytes
    field: str
    problem: str
    event_id: str | None
    event_type: str | None


class Checked(msgspec.Struct):
    """Items split into valid events and rejections, both with their batch index."""

    valid: list[tuple[int, BaseEvent]]
    rejected: list[Rejection]


def media_type(content_type: str | None) -> str:
    """The split_batch media type for a Content-Type header, or a 415 problem.

    >>> media_type("application/json; charset=utf-8"), media_type("application/ndjson")
    ('application/json', 'application/x-ndjson')
    """
    bare = (content_type or "").split(";", 1)[0].strip().lower()
    if bare not in MEDIA_TYPES:
        detail = (
            f"Content-Type {content_type or '(none)'!r} is not supported; send a JSON array of "
            "events as application/json, or one event per line as application/x-ndjson"
        )
        raise ProblemError(
            415, "unsupported-media-type", "Unsupported media type", detail, field="Content-Type"
        )
    return MEDIA_TYPES[bare]


def _too_large(limit: int) -> ProblemError:
    detail = (
        f"the request body is larger than {limit} bytes (LINKPULSE_INGEST_MAX_BODY_BYTES); "
        "split the events into smaller batches"
    )
    return ProblemError(413, "body-too-large", "Request body too large", detail, field="$")


async def read_limited(chunks: AsyncIterator[bytes], limit: int, declared: str | None) -> bytes:
    """Read a streamed body, refusing (413) as soon as it exceeds ``limit`` bytes.

    ``declared`` is the Content-Length header: a body announced too big is
    refused before a byte of it is read.
    """
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
    except ClientDisconnect as e:
        # The client went away mid-body: its fault, not a server error (nobody
        # reads this answer, but the logs and the status metric do).
        detail = f"the client disconnected after sending {len(body)} byte(s) of the body"
        raise ProblemError(
            400, "incomplete-body", "Incomplete request body", detail, field="$"
        ) from e
    return bytes(body)


def split_items(body: bytes, media: str, max_batch: int) -> list[bytes]:
    """The body's items; 400 for malformed JSON, a non-array or no events, 413 for too many.

    >>> split_items(b'[1, 2]', "application/json", 10)
    [b'1', b'2']
    """
    try:
        items = split_batch(body, media, max_items=max_batch)
    except TooManyItemsError as e:
        raise _too_many(e.count, max_batch) from e
    except SchemaValidationError as e:  # the body, not one item (that is the item's problem)
        raise ProblemError(
            400, "malformed-body", "Malformed request body", f"{e.problem}", field=e.field
        ) from e
    if not items:
        detail = "the batch holds no events; send at least one"
        raise ProblemError(400, "empty-batch", "Empty batch", detail, field="$")
    if len(items) > max_batch:
        raise _too_many(len(items), max_batch)
    return items


def _too_many(count: int, max_batch: int) -> ProblemError:
    detail = (
        f"the batch holds {count} events; the limit is {max_batch} per request "
        "(LINKPULSE_INGEST_MAX_BATCH): split it into smaller batches"
    )
    return ProblemError(413, "too-many-events", "Too many events", detail, field="$")


def _peek(raw: bytes) -> tuple[str | None, str | None]:
    """Best-effort (event_id, type) of an invalid item, for the report and metrics."""
    try:
        obj = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    event_id, event_type = obj.get("event_id"), obj.get("type")
    return (
        event_id if isinstance(event_id, str) else None,
        event_type if isinstance(event_type, str) else None,
    )


def check_items(items: Sequence[bytes], now: datetime | None) -> Checked:
    """Validate every item on its own; a bad one never stops the others."""
    checked = Checked(valid=[], rejected=[])
    for index, raw in enumerate(items):
        try:
            checked.valid.append((index, decode_event(raw, now=now)))
        except SchemaValidationError as e:
            event_id, event_type = _peek(raw)
            checked.rejected.append(Rejection(index, raw, e.field, e.problem, event_id, event_type))
    return checked


def set_aside_unsendable(
    checked: Checked,
    items: Sequence[bytes],
    messages: Sequence[M],
    problems: Sequence[str | None],
) -> tuple[Checked, list[M]]:
    """Move each valid event whose message has a problem (too big for the broker)
    to the rejections, by itself; the rest, and their messages, go on.

    ``messages`` and ``problems`` are parallel to ``checked.valid``.

    >>> ev = (b'{"type": "page_view", "event_id": "e1", "tenant": "acme",'
    ...       b' "event_time": "2026-11-24T10:00:00Z", "properties": {"page": "home"}}')
    >>> items = [ev, ev.replace(b"e1", b"e2")]
    >>> checked, kept = set_aside_unsendable(
    ...     check_items(items, now=None), items, ["m1", "m2"], [None, "too big"])
    >>> kept, [(r.index, r.event_id, r.field, r.problem) for r in checked.rejected]
    (['m1'], [(1, 'e2', '$', 'too big')])
    """
    if all(problem is None for problem in problems):
        return checked, list(messages)
    result = Checked(valid=[], rejected=list(checked.rejected))
    kept: list[M] = []
    for (index, ev), message, problem in zip(checked.valid, messages, problems, strict=True):
        if problem is None:
            result.valid.append((index, ev))
            kept.append(message)
        else:
            rejection = Rejection(index, items[index], "$", problem, ev.event_id, ev.type)
            result.rejected.append(rejection)
    return result, kept


def build_response(
    n_items: int, checked: Checked, published: Sequence[PublishResult | None]
) -> BatchReport:
    """Per-item results in batch order, plus counts.

    ``published`` is parallel to ``checked.valid``; ``None`` (only after a failed
    publish, for a 503) is an event not confirmed stored: ``unconfirmed``.
    """
    results: list[ItemResult | None] = [None] * n_items
    accepted = duplicate = unconfirmed = 0
    for (index, ev), pub in zip(checked.valid, published, strict=True):
        if pub is None:
            unconfirmed += 1
            results[index] = ItemResult(index, ev.event_id, "unconfirmed")
            continue
        if pub.duplicate:
            duplicate += 1
        else:
            accepted += 1
        status: Literal["accepted", "duplicate"] = "duplicate" if pub.duplicate else "accepted"
        results[index] = ItemResult(index, ev.event_id, status, stream_seq=pub.stream_seq)
    for r in checked.rejected:
        results[r.index] = ItemResult(r.index, r.event_id, "rejected", r.field, r.problem)
    return BatchReport(
        accepted=accepted,
        duplicate=duplicate,
        rejected=len(checked.rejected),
        results=[r for r in results if r is not None],
        unconfirmed=unconfirmed,
    )
