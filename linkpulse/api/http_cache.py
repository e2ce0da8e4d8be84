"""HTTP caching of query answers: ETag, Cache-Control, 304 on If-None-Match.

``cached_response`` turns a ``QueryCache`` ``Answer`` into a JSON response
with a strong ETag (a hash of the body). A range that is wholly final (closed
periods, ``final=True``) is ``public, max-age=31536000, immutable``: a CDN or
browser may keep it; anything else is ``private`` for ``max_age_s``. Every
answer varies on the credentials (``Authorization``, ``X-API-Key``): the same
URL answers each principal with its own scope, so a shared cache must key on
them. ``If-None-Match`` naming the current ETag (weak comparison, RFC 9110
13.1.2) gives a GET or HEAD a 304 with no body (RFC 9110 gives other methods
412, so a POST query always gets its body). ``X-Cache`` says whether Redis served it.

``query_cache(app)`` is the app's one ``QueryCache``, built on first use
from the access layer's Redis, the settings and the API metrics.

>>> from linkpulse.query.cache import Answer
>>> etag_matches('W/"a", "b"', '"b"'), etag_matches("*", '"x"'), etag_matches('"a"', '"b"')
(True, True, False)
>>> cache_control(final=True, max_age_s=5), cache_control(final=False, max_age_s=5)
('public, max-age=31536000, immutable', 'private, max-age=5')
"""

from __future__ import annotations

from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import Response

from linkpulse.query.cache import Answer, QueryCache
from linkpulse.query.slowlog import SlowLog

__all__ = ["cache_control", "cached_response", "etag_matches", "query_cache"]

IMMUTABLE: Final = "public, max-age=31536000, immutable"
VARY: Final = "Authorization, X-API-Key"


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match header names ``etag`` (weak comparison), or is ``*``."""
    if if_none_match.strip() == "*":
        return True
    want = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == want for tag in if_none_match.split(","))


def cache_control(*, final: bool, max_age_s: int) -> str:
    """The Cache-Control of an answer: immutable and public when final, else private."""
    return IMMUTABLE if final else f"private, max-age={max(0, max_age_s)}"


def cached_response(
    request: Request, answer: Answer, *, final: bool, max_age_s: int = 5
) -> Response:
    """``answer`` as a JSON response with ETag and Cache-Control, or a 304 if the client has it."""
    headers = {
        "ETag": answer.etag,
        "Cache-Control": cache_control(final=final, max_age_s=max_age_s),
        "Vary": VARY,
        "X-Cache": "HIT" if answer.hit else "MISS",
    }
    inm = request.headers.get("if-none-match")
    if inm is not None and request.method in ("GET", "HEAD") and etag_matches(inm, answer.etag):
        return Response(status_code=304, headers=headers)
    return Response(answer.body, media_type="application/json", headers=headers)


def query_cache(app: FastAPI) -> QueryCache:
    """The app's query cache (uncached answers until the access layer has opened Redis)."""
    existing: QueryCache | None = getattr(app.state, "query_cache", None)
    if existing is not None:
        return existing
    settings = app.state.settings
    access = getattr(app.state, "access", None)
    redis = getattr(access, "redis", None)
    metrics = getattr(app.state, "metrics", None)
    timeout_s = settings.query_cache_timeout_s
    slowlog = SlowLog(
        redis,
        prefix=settings.redis_key_prefix,
        threshold_s=settings.query_slow_s,
        op_timeout_s=timeout_s,
        metrics=metrics,
    )
    cache = QueryCache(
        redis,
        prefix=settings.redis_key_prefix,
        ttl_s=settings.query_cache_ttl_s,
        bucket_s=settings.query_cache_bucket_s,
        max_entry_bytes=settings.query_cache_max_entry_bytes,
        op_timeout_s=timeout_s,
        metrics=metrics,
        slowlog=slowlog,
    )
    if redis is not None:  # before the lifespan started: build again next time
        app.state.query_cache = cache
    return cache
