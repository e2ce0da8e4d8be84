"""OpenAPI: the ingest request body documented by the event JSON Schema.

FastAPI can't infer a body the route reads raw, so the event schema from
``linkpulse.schemas.event_json_schema()`` is merged into the components (its
``$defs`` refs rewritten to ``#/components/schemas/...``) and referenced from
the route's ``openapi_extra``.

>>> schemas = event_components()
>>> schemas["Event"]["discriminator"]["mapping"]["page_view"]
'#/components/schemas/PageView'
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from linkpulse.schemas import event_json_schema

__all__ = ["EVENT_REF", "event_components", "ingest_request_body", "install_openapi"]

EVENT_REF = "#/components/schemas/Event"
_DEFS = "#/$defs/"
_COMPONENTS = "#/components/schemas/"


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _rewrite_refs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    if isinstance(node, str) and node.startswith(_DEFS):
        return _COMPONENTS + node[len(_DEFS) :]
    return node


def event_components() -> dict[str, Any]:
    """Component schemas: ``Event`` (the tagged union) and one per event type."""
    schema = _rewrite_refs(event_json_schema())
    defs: dict[str, Any] = schema.pop("$defs", {})
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    return {**defs, "Event": schema}


def ingest_request_body(max_batch: int | None = None) -> dict[str, Any]:
    """The ``requestBody`` of POST /v1/events for ``openapi_extra``."""
    array: dict[str, Any] = {"type": "array", "items": {"$ref": EVENT_REF}, "minItems": 1}
    limit = "LINKPULSE_INGEST_MAX_BATCH (default 1000)"
    if max_batch is not None:
        array["maxItems"] = max_batch
        limit = str(max_batch)
    return {
        "requestBody": {
            "required": True,
            "description": (
                f"Up to {limit} events: a JSON array, or one JSON event per line "
                "(NDJSON). Each event is validated on its own."
            ),
            "content": {
                "application/json": {"schema": array},
                "application/x-ndjson": {
                    "schema": {"$ref": EVENT_REF},
                    "description": "one event per line; blank lines are ignored",
                },
            },
        }
    }


def install_openapi(app: FastAPI, max_batch: int | None = None) -> None:
    """Make ``app.openapi()`` include the event component schemas (and the batch limit)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(event_components())
            body = schema.get("paths", {}).get("/v1/events", {}).get("post", {})
            json_body = body.get("requestBody", {}).get("content", {}).get("application/json")
            if json_body is not None and max_batch is not None:
                json_body["schema"]["maxItems"] = max_batch
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override hook
