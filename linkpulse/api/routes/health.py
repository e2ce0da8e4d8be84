"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from linkpulse.api.deps import BrokerDep, MetricsDep
from linkpulse.api.metrics import CONTENT_TYPE_LATEST
from linkpulse.api.problems import ProblemError, problem_responses

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    """Always 200 while the process runs; restart the pod only if this fails."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: connected to NATS",
    responses=problem_responses(503),
)
async def readyz(broker: BrokerDep) -> dict[str, str]:
    """200 when the NATS connection is up (events can be accepted), else 503."""
    if not broker.ready:
        raise ProblemError(
            503,
            "not-ready",
            "Not ready",
            f"NATS is not connected: {broker.status}",
            headers={"Retry-After": "2"},
        )
    return {"status": "ready", "nats": broker.status}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(m: MetricsDep) -> Response:
    """Ingest counters and request latency in the Prometheus text format."""
    return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)
