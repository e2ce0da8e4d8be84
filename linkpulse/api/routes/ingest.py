"""``POST /v1/events``: validate a batch, publish the good events, dead-letter the rest.

Answers 200 when every item was stored (or already stored: ``duplicate``),
207 Multi-Status when at least one item was rejected (the body has the same
shape either way: counts plus one result per item). Whole-request problems are
problem+json: 415 wrong media type, 413 body or batch too large, 400 malformed
body or empty batch, 503 NATS unavailable (retry: event ids make it safe).

A 503 after part of the batch was sent (NATS went away mid-batch, or JetStream
refused a message) also carries the per-item report as problem extension
members: ``accepted``/``duplicate`` items are stored (with their
``stream_seq``), ``unconfirmed`` ones were not confirmed stored, ``rejected``
ones are invalid; retrying the whole request stores each event once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from linkpulse.api.auth.guard import IngestPrincipal
from linkpulse.api.auth.scope import confine_to_tenant
from linkpulse.api.batch import (
    BatchReport,
    Checked,
    IngestResponse,
    build_response,
    check_items,
    encode_report,
    media_type,
    read_limited,
    set_aside_unsendable,
    split_items,
)
from linkpulse.api.deps import BrokerDep, MetricsDep, SettingsDep
from linkpulse.api.metrics import ApiMetrics
from linkpulse.api.openapi import ingest_request_body
from linkpulse.api.problems import (
    PROBLEM_MEDIA_TYPE,
    RETRY_AFTER_S,
    ProblemError,
    problem_body,
    problem_responses,
)
from linkpulse.bus import PublishError, PublishResult
from linkpulse.bus.publisher import EventTooLargeError
from linkpulse.logging import get_logger
from linkpulse.privacy import pseudonymiser_for
from linkpulse.schemas.codec import utcnow
from linkpulse.schemas.outputs import DeadLetter

log = get_logger(__name__)

router = APIRouter(tags=["ingest"])

MULTI_STATUS = 207


@router.post(
    "/v1/events",
    summary="Ingest a batch of events",
    response_model=IngestResponse,
    responses={
        200: {"description": "every event stored (accepted) or already stored (duplicate)"},
        MULTI_STATUS: {
            "model": IngestResponse,
            "description": "some events rejected (see `results`; they went to the dead letters)",
        },
        **problem_responses(400, 401, 403, 413, 415, 429, 503),
    },
    openapi_extra=ingest_request_body(),
)
async def ingest_events(
    request: Request,
    settings: SettingsDep,
    broker: BrokerDep,
    metrics: MetricsDep,
    principal: IngestPrincipal,
) -> Response:
    """Validate each event on its own, publish the valid ones to JetStream
    (de-duplicated by ``event_id``), send the invalid ones to the dead letters
    with the reason, and report per event."""
    media = media_type(request.headers.get("content-type"))
    body = await read_limited(
        request.stream(), settings.ingest_max_body_bytes, request.headers.get("content-length")
    )
    items = split_items(body, media, settings.ingest_max_batch)
    received_at = utcnow()
    # An ingest key writes its own tenant only: others' events are rejected like bad ones.
    checked = confine_to_tenant(check_items(items, now=received_at), items, principal)

    publisher = broker.require()  # 503 (via the problem handler) when NATS is down
    # PII fields are pseudonymised before publishing: the stream never holds them raw.
    privacy = pseudonymiser_for(settings)
    valid = [ev for _, ev in checked.valid]
    messages = publisher.prepare(valid if privacy is None else privacy.events(valid))
    # An event over the broker's message size limit can never be published: it is
    # rejected by itself (a 503 would have the client retry it forever).
    checked, messages = set_aside_unsendable(
        checked, items, messages, publisher.oversize_problems(messages)
    )
    try:
        published = await publisher.send(messages)
    except PublishError as e:
        if not e.results or isinstance(e, EventTooLargeError):
            raise  # nothing was sent: the plain 503 (or 413) of the problem handler
        return _partly_stored(e, len(items), checked, metrics)
    if checked.rejected:
        letters = [
            DeadLetter(
                payload=r.raw.decode("utf-8", errors="replace"),
                field=r.field,
                problem=r.problem,
                source="http",
                received_at=received_at,
            )
            for r in checked.rejected
        ]
        await publisher.dead_letter_many(letters if privacy is None else privacy.letters(letters))

    metrics.batch_size.observe(len(items))
    result = build_response(len(items), checked, published)
    _count(metrics, checked, published)
    return Response(
        encode_report(result),
        status_code=MULTI_STATUS if result.rejected else 200,
        media_type="application/json",
    )


def _count(
    metrics: ApiMetrics, checked: Checked, published: Sequence[PublishResult | None]
) -> None:
    # One counter update per (type, outcome), not per event: labels() is a locked lookup.
    outcomes = Counter(
        (ev.type, "duplicate" if pub.duplicate else "accepted")
        for (_, ev), pub in zip(checked.valid, published, strict=True)
        if pub is not None
    )
    for (event_type, outcome), n in outcomes.items():
        metrics.count_event(event_type, outcome, n)
    for r in checked.rejected:
        metrics.count_rejected(r.event_type, r.field)


def _partly_stored(
    e: PublishError, n_items: int, checked: Checked, metrics: ApiMetrics
) -> Response:
    """503 problem+json with the per-item report: what was stored, what was not confirmed."""
    report: BatchReport = build_response(n_items, checked, e.results)
    _count(metrics, checked, e.results)
    stored = report.accepted + report.duplicate
    detail = (
        f"{e}. {stored} of {len(e.results)} valid events were stored and "
        f"{report.unconfirmed} were not confirmed stored (see results); retry the same "
        "request: stored events are recognised by event_id and reported as duplicates."
    )
    log.warning("ingest partly stored", stored=stored, unconfirmed=report.unconfirmed, error=str(e))
    problem = ProblemError(503, "broker-unavailable", "Event broker unavailable", detail)
    body = problem_body(problem) | msgspec.to_builtins(report)
    return Response(
        msgspec.json.encode(body),
        status_code=503,
        media_type=PROBLEM_MEDIA_TYPE,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
