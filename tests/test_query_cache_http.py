"""cached_response: ETag, Cache-Control and 304, on a small app of its own (no services)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient

from linkpulse.api.http_cache import IMMUTABLE, cached_response
from linkpulse.query.cache import Answer, etag_of

BODY = b'{"points": []}'


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()

    @app.get("/answer")
    def get_answer(request: Request, final: bool = False, hit: bool = False) -> Response:
        return cached_response(request, Answer(BODY, etag_of(BODY), hit), final=final, max_age_s=7)

    @app.post("/answer")
    def post_answer(request: Request) -> Response:
        return cached_response(request, Answer(BODY, etag_of(BODY), False), final=True)

    return TestClient(app)


def test_a_final_range_is_immutable_and_public(client: TestClient) -> None:
    r = client.get("/answer", params={"final": True, "hit": True})
    assert r.status_code == 200 and r.content == BODY
    assert r.headers["content-type"] == "application/json"
    assert r.headers["etag"] == etag_of(BODY)
    assert r.headers["cache-control"] == IMMUTABLE == "public, max-age=31536000, immutable"
    assert r.headers["vary"] == "Authorization, X-API-Key"
    assert r.headers["x-cache"] == "HIT"


def test_an_open_range_is_private_and_short(client: TestClient) -> None:
    r = client.get("/answer")
    assert r.headers["cache-control"] == "private, max-age=7"
    assert "immutable" not in r.headers["cache-control"]
    assert r.headers["x-cache"] == "MISS"


@pytest.mark.parametrize(
    "inm", [etag_of(BODY), f'"other", {etag_of(BODY)}', f"W/{etag_of(BODY)}", "*"]
)
def test_if_none_match_with_the_current_tag_is_304_without_a_body(
    client: TestClient, inm: str
) -> None:
    r = client.get("/answer", params={"final": True}, headers={"If-None-Match": inm})
    assert r.status_code == 304 and r.content == b""
    assert r.headers["etag"] == etag_of(BODY)
    assert r.headers["cache-control"] == IMMUTABLE


def test_a_stale_tag_gets_the_body(client: TestClient) -> None:
    r = client.get("/answer", headers={"If-None-Match": '"0123"'})
    assert r.status_code == 200 and r.content == BODY


def test_a_post_always_gets_its_body(client: TestClient) -> None:
    r = client.post("/answer", headers={"If-None-Match": etag_of(BODY)})
    assert r.status_code == 200 and r.content == BODY
