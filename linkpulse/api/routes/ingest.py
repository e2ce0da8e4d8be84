"""``POST /v1/events``: validate a batch, publish the good events, dead-letter the rest.

Answers 200 when every item was stored (or already stored: ``duplicate``),
207 Multi-Status when at least one item was rejected (the body has the same
shape either way: counts plus one result per item). Whole-request problems are
problem+json: 415 wrong media type, 413 body or batch too large, 400 malformed
body or empty batch, 503 NATS unavailable (retry: event ids make it safe).
"""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Request
from fastapi.responses import Response

from linkpulse.api.auth.guard import IngestPrincipal
from linkpulse.api.auth.scope import confine_to_tenant
from linkpulse.api.batch import (
    IngestResponse,
    build_response,
    check_items,
    media_type,
    read_limited,
    set_aside_unsendable,
    split_items,
)
from linkpulse.api.deps import BrokerDep, MetricsDep, SettingsDep
from linkpulse.api.openapi import ingest_request_body
from linkpulse.api.problems import problem_responses
from linkpulse.privacy import pseudonymiser_for
from linkpulse.schemas.codec import utcnow
from linkpulse.schemas.outputs import DeadLetter

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
    published = await publisher.send(messages)
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
    # One counter update per (type, outcome), not per event: labels() is a locked lookup.
    outcomes = Counter(
        (ev.type, "duplicate" if pub.duplicate else "accepted")
        for (_, ev), pub in zip(checked.valid, published, strict=True)
    )
    for (event_type, outcome), n in outcomes.items():
        metrics.count_event(event_type, outcome, n)
    for r in checked.rejected:
        metrics.count_rejected(r.event_type, r.field)

    result = build_response(len(items), checked, published)
    return Response(
        result.model_dump_json(),
        status_code=MULTI_STATUS if result.rejected else 200,
        media_type="application/json",
    )
